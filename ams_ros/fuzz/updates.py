"""Fuzzing what a robot receives: updates of every encoding and snapshots, unsigned and signed, mutated and taken through the robot's receiver."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
from ams_ros.core.edge.double_buffer import DoubleBufferedModel
from ams_ros.core.edge.receiver import APPLIED, UPDATE, UpdateReceiver
from ams_ros.core.models.params import flatten_params, FlatAccessor
from ams_ros.core.security.signing import SigningKey, TrustedKeys, sign_update
from ams_ros.core.wire.encodings import ENCODINGS, encode_snapshot, encode_update

from ams_ros.fuzz.mutations import mutate_deltas, mutate_stream
from ams_ros.fuzz.tally import Tally

DEVICE = "robot_fuzz"


class Signer(Protocol):
    """How the server signs an update, and the keys a robot trusts to check it."""

    trusted: Any  # ams_ros.core.security.signing.TrustedKeys

    def sign(self, update, device_id: str) -> None: ...


class Ed25519Signer:
    """The base station's Ed25519 signature (:mod:`ams_ros.core.security.signing`, issue #13)."""

    def __init__(self) -> None:
        self.key = SigningKey.generate()
        self.trusted = TrustedKeys.parse([self.key.public_text])

    def sign(self, update, device_id: str) -> None:
        sign_update(update, device_id, self.key)


SIGNERS: dict[str, Signer | None] = {"unsigned": None, "ed25519": Ed25519Signer()}


def register_signer(name: str, signer: Signer) -> None:
    """Fuzz updates signed by ``signer`` too (e.g. the Ed25519 signer of the signing work)."""
    SIGNERS[name] = signer


def fuzz_net():
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 5, 1), nn.Conv2d(5, 4, 1))


def digest(holder) -> tuple[str, str, int]:
    a, b = holder.copies()
    return (hashlib.sha256(flatten_params(a).numpy().tobytes()).hexdigest(),
            hashlib.sha256(flatten_params(b).numpy().tobytes()).hexdigest(), int(holder.version))


class UpdateTarget:
    """Valid updates of every encoding (and snapshots), each unsigned and signed by every signer,
    mutated and received as the robot receives them (:class:`~ams_ros.core.edge.receiver.UpdateReceiver`:
    signature, chain admission, version rule, write)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.model = fuzz_net()
        self.version = 7
        n = flatten_params(self.model).numel()
        prep_idx = np.arange(0, n, 5, dtype=np.int64)
        self._prep = encode_update(self.model, prep_idx, flatten_params(self.model).numpy()[prep_idx] + 0.02,
                                   self.version - 1, self.version, "delta_lzma_fp16")
        self._holder_cls = DoubleBufferedModel
        self.robot = self.fresh_robot()
        self.seeds = []
        base_reader = FlatAccessor(self.robot.active).read
        for enc in ENCODINGS:
            for frac in (0.05, 0.5):
                idx = np.sort(rng.choice(n, max(1, int(n * frac)), replace=False)).astype(np.int64)
                base = base_reader(idx)
                vals = base + rng.normal(0, 0.05, idx.size).astype(np.float32)
                self.seeds.append(encode_update(self.model, idx, vals, self.version, self.version + 1, enc,
                                                base_values=base if ENCODINGS[enc].residual else None))
        for enc in ("paper_gzip_fp16", "delta_lzma_q8", "delta_lzma_fp16"):
            self.seeds.append(encode_snapshot(self.model, self.version + 3, enc))

    def fresh_robot(self):
        """The robot at v7 with one applied update, so a catch-up into the inactive copy is pending."""
        robot = self._holder_cls(copy.deepcopy(self.model), version=self.version - 1)
        robot.apply_update(self._prep)
        return robot

    def case(self, rng: np.random.Generator, tally: Tally) -> None:
        signer_name = list(SIGNERS)[int(rng.integers(0, len(SIGNERS)))]
        signer = SIGNERS[signer_name]
        u = replace(self.seeds[int(rng.integers(0, len(self.seeds)))])
        for _ in range(int(rng.integers(1, 4))):
            # mostly inside the streams (past the inflater: the decoders' own checks), sometimes the header
            op = int(rng.integers(0, 7)) if rng.random() < 0.8 else int(rng.integers(7, 12))
            if op <= 1 and not u.encoding.startswith("paper"):
                u.indices_blob = mutate_deltas(rng, u.indices_blob, u.num_selected)
            elif op <= 3:
                u.indices_blob = mutate_stream(rng, u.indices_blob)
            elif op <= 6:
                u.values_blob = mutate_stream(rng, u.values_blob)
            elif op == 7:
                u.num_selected = int(rng.choice([0, 1, u.num_selected - 1, u.num_selected + 1, u.num_params,
                                                 u.num_params + 1, 2**31]))
            elif op == 8:
                u.base_version, u.new_version = (int(v) for v in rng.choice(
                    [(self.version, self.version), (self.version, self.version - 1), (self.version, self.version + 2),
                     (self.version - 1, self.version), (self.version + 5, self.version + 6), (0, 0),
                     (self.version + 2, self.version + 2), (self.version - 3, self.version - 3)]))
            elif op == 9:
                u.encoding = str(rng.choice([*ENCODINGS, "bogus", ""]))
            elif op == 10:
                u.full_snapshot = not u.full_snapshot
            else:
                u.num_params = int(rng.choice([0, u.num_params - 1, u.num_params + 1]))
        if rng.random() < 0.9:
            u.checksum = u.compute_checksum()  # a forger recomputes it: the decoders must hold on their own
        if signer is not None and rng.random() < 0.9:
            signer.sign(u, DEVICE)
        robot = self.robot  # unchanged by every rejection (checked), rebuilt after an acceptance
        trusted = signer.trusted if signer is not None else None
        receiver = UpdateReceiver(robot, DEVICE, trusted)
        before = digest(robot)
        verdict = receiver.receive(u, UPDATE)
        if verdict.kind != APPLIED:
            if verdict.unexpected:  # not a documented rejection: a crash the receiver contained
                tally.crashes += 1
                tally.note(f"update raised an undocumented error: {verdict.reason}")
            else:
                tally.rejected += 1
            if digest(robot) != before:
                tally.changed += 1
                tally.note(f"update changed the model after rejection: {u.encoding} {u.base_version}->{u.new_version}")
                self.robot = self.fresh_robot()
            return
        tally.accepted += 1
        if robot.version != int(u.new_version):
            tally.crashes += 1
            tally.note(f"accepted update left version {robot.version}, update says {u.new_version}")
        self.robot = self.fresh_robot()
