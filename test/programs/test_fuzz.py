"""A short seeded fuzz run (issue #13) inside the suite: malformed updates (every encoding,
snapshots, unsigned and HMAC-signed), frame batches (with bombs) and images give no crash, no
hang and no change to the model after a rejection. ``make fuzz`` runs the long one."""

from __future__ import annotations

import numpy as np

from ams_ros.fuzz import cli as fuzz
from ams_ros.fuzz import updates as fuzz_updates


def test_a_thousand_fuzzed_inputs_give_no_crash_no_hang_and_no_change_after_rejection():
    lines: list[str] = []
    res = fuzz.fuzz(updates=700, batches=150, images=150, seed=13, out=lines.append)
    report = "\n".join(lines)
    for name in ("updates", "batches", "images"):
        t = res[name]
        assert t.crashes == 0 and t.hangs == 0 and t.changed == 0, report
        assert t.rejected + t.accepted == t.cases, report
        assert t.rejected > 0, report  # the mutators do produce bad inputs
    assert res["images"].accepted > 0 and res["updates"].accepted > 0, report  # ... and some good ones


def test_the_fuzzer_finds_a_decoder_that_crashes(monkeypatch):
    """The harness counts what it should: a decoder raising IndexError is a crash, not a rejection."""
    from ams_ros.core.edge import double_buffer

    target = fuzz.UpdateTarget(np.random.default_rng(0))
    real = double_buffer.decode_update
    calls = {"n": 0}

    def broken_after_checks(update, *a, **k):
        calls["n"] += 1
        out = real(update, *a, **k)
        if calls["n"] % 2 == 0:  # every other valid one: as if the writer hit a bad index
            raise IndexError("index 123456 is out of bounds")
        return out

    monkeypatch.setattr(double_buffer, "decode_update", broken_after_checks)
    monkeypatch.setattr(fuzz_updates, "SIGNERS", {"unsigned": None})
    t = fuzz.run_target("updates", target, 400, np.random.default_rng(1), 5.0)
    assert t.crashes > 0 and "IndexError" in "".join(t.examples)


def test_a_registered_signer_is_fuzzed_and_a_wrong_signature_is_rejected(monkeypatch):
    from ams_ros.core.security.signing import SigningKey, TrustedKeys

    class Rejecting:  # signs with garbage; the robot trusts a key nobody signs with
        trusted = TrustedKeys.parse([SigningKey.generate().public_text])

        def sign(self, update, device_id):
            update.signature = b"x"

    monkeypatch.setattr(fuzz_updates, "SIGNERS", {"never": Rejecting()})
    t = fuzz.run_target("updates", fuzz.UpdateTarget(np.random.default_rng(0)), 40, np.random.default_rng(2), 5.0)
    assert t.rejected == 40 and t.accepted == 0 and t.changed == 0
