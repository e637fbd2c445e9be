"""Ed25519 signatures (issue #13): only the base station can make an update for a robot, only a
robot can make its own batches and snapshot requests; tampering, retargeting, unknown keys,
stale or replayed requests and replayed old snapshots are refused."""

from __future__ import annotations

import copy
import dataclasses
import os
import stat
import subprocess
import sys

import pytest
import torch
from torch import nn

from small_inputs import small_net  # noqa: E402
from ams_ros.core.edge.chain_sync import ChainFollower, ResyncNeeded
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.models.params import flatten_params
from ams_ros.core.security.signing import (KeyFileError, ReplayGuard, SeenSignatures, SignatureError, SigningKey, TrustedKeys,
                                  batch_signing_input, parse_robot_keys, sign_update,
                                  snapshot_request_signing_input, update_signing_input, verify_update)
from ams_ros.core.wire.encodings import encode_snapshot, encode_update
from ams_ros.keys.cli import main as keys_main



@pytest.fixture(scope="module")
def server_key() -> SigningKey:
    return SigningKey.generate()


def _update(model: nn.Module):
    idx = torch.arange(0, 40, 3).numpy()
    vals = flatten_params(model).numpy()[idx] + 0.5
    upd = encode_update(model, idx, vals, 3, 4)
    upd.chain_tag = "c0ffee"
    return upd


def test_signed_update_verifies_for_its_robot_only(server_key):
    upd = _update(small_net())
    sign_update(upd, "robotA", server_key)
    trusted = TrustedKeys.parse([server_key.public_text])
    verify_update(upd, "robotA", trusted)
    assert len(upd.signature) == 64 and upd.signer_key_id == server_key.key_id
    with pytest.raises(SignatureError, match="does not match"):
        verify_update(upd, "robotB", trusted)


COVERED = ("chain_tag", "catch_up", "fingerprint", "base_version", "new_version", "full_snapshot", "encoding",
           "num_params", "num_selected", "indices_blob", "values_blob")


def _flip(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value ^ 1
    if isinstance(value, str):
        return value[:-1] + chr(ord(value[-1]) ^ 1)
    b = bytearray(value)
    b[len(b) // 2] ^= 0x01
    return bytes(b)


@pytest.mark.parametrize("name", COVERED)
def test_single_bit_change_to_any_covered_field_fails_verification(server_key, name):
    upd = _update(small_net())
    sign_update(upd, "robotA", server_key)
    tampered = dataclasses.replace(upd, **{name: _flip(getattr(upd, name))})
    tampered.checksum = tampered.compute_checksum()  # a consistent checksum does not help a forger
    with pytest.raises(SignatureError):
        verify_update(tampered, "robotA", TrustedKeys.parse([server_key.public_text]))


def test_signature_bit_flip_and_unknown_key_are_rejected(server_key):
    upd = _update(small_net())
    sign_update(upd, "robotA", server_key)
    trusted = TrustedKeys.parse([server_key.public_text])
    forged = dataclasses.replace(upd, signature=_flip(upd.signature))
    with pytest.raises(SignatureError, match="does not match"):
        verify_update(forged, "robotA", trusted)
    rogue = SigningKey.generate()
    other = copy.copy(upd)
    sign_update(other, "robotA", rogue)
    with pytest.raises(SignatureError, match="unknown key"):
        verify_update(other, "robotA", trusted)
    # a rogue signature under the trusted key's id is still refused
    other.signer_key_id = server_key.key_id
    with pytest.raises(SignatureError, match="does not match"):
        verify_update(other, "robotA", trusted)


def test_rotation_two_trusted_keys_both_verify(server_key):
    new_key = SigningKey.generate()
    trusted = TrustedKeys.parse([server_key.public_text, new_key.public_text])
    for key in (server_key, new_key):
        upd = _update(small_net())
        sign_update(upd, "robotA", key)
        verify_update(upd, "robotA", trusted)


def test_unsigned_rejected_when_keys_configured_and_accepted_when_none(server_key):
    upd = _update(small_net())
    with pytest.raises(SignatureError, match="unsigned"):
        verify_update(upd, "robotA", TrustedKeys.parse([server_key.public_text]))
    verify_update(upd, "robotA", TrustedKeys.parse(["", " "]))  # no key: unsigned mode


def test_replayed_signed_old_snapshot_is_rejected_and_model_untouched(server_key):
    server = small_net()
    robot = DoubleBufferedModel(copy.deepcopy(server), version=0)
    chain = ChainFollower()
    trusted = TrustedKeys.parse([server_key.public_text])
    old = encode_snapshot(server, 13, "paper_gzip_fp16")
    old.chain_tag = "chainX"
    sign_update(old, "robotA", server_key)
    with torch.no_grad():
        for p in server.parameters():
            p.add_(0.25)
    new = encode_snapshot(server, 18, "paper_gzip_fp16")
    new.chain_tag = "chainX"
    sign_update(new, "robotA", server_key)
    for snap in (old, new):  # the genuine order: v13 then v18
        verify_update(snap, "robotA", trusted)
        chain.admit(snap, robot.version)
        robot.apply_update(snap)
        chain.accepted(snap)
    assert robot.version == 18
    before = flatten_params(robot.active).clone()
    verify_update(old, "robotA", trusted)  # the replay is genuinely signed ...
    with pytest.raises(ResyncNeeded, match="back from v18"):
        chain.admit(old, robot.version)  # ... and still refused: it would take the robot backwards
    assert robot.version == 18 and torch.equal(flatten_params(robot.active), before)


def test_signing_inputs_are_domain_separated():
    upd = _update(small_net())
    a = update_signing_input(upd, "r")
    b = batch_signing_input("r", 0, "h264", 1, 1, [0], 1.0, 1.0, 0, b"")
    c = snapshot_request_signing_input("r", "", 0, "", "", 0, b"")
    assert len({a[:40], b[:40], c[:40]}) == 3
    # length prefixes: moving a byte between adjacent fields changes the input
    assert (snapshot_request_signing_input("ab", "c", 0, "", "", 0, b"")
            != snapshot_request_signing_input("a", "bc", 0, "", "", 0, b""))


def test_batch_signature_covers_stamps_data_and_robot():
    key = SigningKey.generate()
    keys = parse_robot_keys([f"robot1={key.public_text}"])
    args = ("robot1", 7, "h264", 64, 32, [1_000, 2_000], 1.0, 4.0, 200_000, b"frames")
    sig = key.sign(batch_signing_input(*args))
    keys["robot1"].verify(batch_signing_input(*args), sig, key.key_id, "batch")
    for i, changed in ((0, "robot2"), (5, [1_000, 2_001]), (9, b"frameS"), (1, 8)):
        forged = list(args)
        forged[i] = changed
        with pytest.raises(SignatureError):
            keys["robot1"].verify(batch_signing_input(*forged), sig, key.key_id, "batch")


def test_robot_key_entries_must_name_a_device():
    with pytest.raises(KeyFileError, match="DEVICE_ID=PUBLIC_KEY"):
        parse_robot_keys(["no-equals-sign"])
    with pytest.raises(KeyFileError, match="neither base64"):
        parse_robot_keys(["robot1=notakey"])


def test_seen_signatures_refuse_a_replay_per_sender_within_capacity():
    seen = SeenSignatures(capacity=2)
    seen.check("r1", b"a" * 64, "batch 1")
    seen.check("r2", b"a" * 64, "batch 1")  # per sender
    with pytest.raises(SignatureError, match="batch 1 is a replay"):
        seen.check("r1", b"a" * 64, "batch 1")
    seen.check("r1", b"b" * 64, "batch 2")
    seen.check("r1", b"c" * 64, "batch 3")  # "a" falls out of the window of 2
    seen.check("r1", b"a" * 64, "batch 1")
    with pytest.raises(SignatureError):
        seen.check("r1", b"c" * 64, "batch 3")
    with pytest.raises(ValueError, match="capacity"):
        SeenSignatures(capacity=0)


def test_replay_guard_refuses_stale_future_and_reused_nonces():
    guard = ReplayGuard(30.0)
    now = 1_000 * 10**9
    guard.check("r", now - 5 * 10**9, b"n" * 16, now)
    with pytest.raises(SignatureError, match="already used"):
        guard.check("r", now - 5 * 10**9, b"n" * 16, now + 10**9)
    guard.check("other", now, b"n" * 16, now)  # nonces are per robot
    with pytest.raises(SignatureError, match="outside the 30 s window"):
        guard.check("r", now - 31 * 10**9, b"m" * 16, now)
    with pytest.raises(SignatureError, match="outside"):
        guard.check("r", now + 31 * 10**9, b"m" * 16, now)


def test_private_key_file_is_0600_and_open_files_are_refused(tmp_path):
    key = SigningKey.generate()
    path = key.save(tmp_path / "k.key")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert SigningKey.load(path).key_id == key.key_id
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        SigningKey.load(path)


def test_public_key_from_file(tmp_path):
    key = SigningKey.generate()
    pub = tmp_path / "k.pub"
    pub.write_text(key.public_text + "\n")
    assert TrustedKeys.parse([str(pub)]).keys.keys() == {key.key_id}


def test_ams_keys_generate_and_public(tmp_path, capsys):
    assert keys_main(["generate", "--out", str(tmp_path), "--name", "robot1"]) == 0
    printed = capsys.readouterr().out.strip()
    path = tmp_path / "robot1.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert printed == SigningKey.load(path).public_text
    assert keys_main(["public", str(path)]) == 0
    assert capsys.readouterr().out.strip() == printed
    assert keys_main(["generate", "--out", str(tmp_path), "--name", "robot1"]) == 2  # never overwrites
    out = subprocess.run([sys.executable, "-m", "ams_ros.keys.cli", "public", str(path)], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == printed
