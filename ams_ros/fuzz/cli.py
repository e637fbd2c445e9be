"""``make fuzz``: a seeded fuzzer over what a robot and a base station take from the network.

Issue #13 found updates that crashed the edge, partial writes into the inactive copy and frame
batches that inflated to gigabytes. This replays that hunt on every run, deterministically from
``--seed``: it mutates valid inputs (every update encoding of ``wire.encodings.ENCODINGS`` and
snapshots, unsigned or signed by each registered signer; H.264 and JPEG frame batches, with a
small "bomb" among the seeds; ``sensor_msgs/Image``-shaped messages in every encoding) and feeds
them to the same code the nodes run: the robot's :class:`~ams_ros.core.edge.receiver.UpdateReceiver`
(signature, chain admission, version rule, the double buffer's write),
:meth:`RobotSession.add_encoded_batch` with :class:`BatchLimits`, and
:func:`~ams_ros.core.sources.pixel_formats.image_to_rgb`. For each kind it counts

- ``rejected``: raised the documented error (UpdateError, FrameCodecError, ImageConversionError),
- ``accepted``: went through (and the output was checked: indices, frame count and size, image shape),
- ``crashes``: any other exception, or an accepted output that is wrong,
- ``hangs``: a case that took longer than ``--hang-s`` (5 s),
- ``changed``: a rejected (or crashing) update after which the running model, the inactive copy
  or the version differ (hashed before and after), or a rejected batch that still added samples;

and prints the peak memory of the process. The exit code is 1 when any crash, hang or change
was found. Signers are pluggable (:func:`register_signer`): unsigned (the robot trusts no key) and
Ed25519 (the base station's signature, the robot trusting its key) are built in; another registers
an object with ``sign(update, device_id)`` and ``trusted`` (the keys a robot would trust).

    make fuzz ARGS="--cases 10000"          # 10,000 updates, 2,000 batches, 2,000 images
"""

from __future__ import annotations

import argparse
import resource
import signal
import sys
import time
import traceback
from typing import Callable

import numpy as np

from ams_ros.fuzz.batches import BatchTarget
from ams_ros.fuzz.images import ImageTarget
from ams_ros.fuzz.tally import Tally
from ams_ros.fuzz.updates import SIGNERS, UpdateTarget


class _Hang(Exception):
    pass


def _alarm(_sig, _frame):
    raise _Hang()


def run_target(name: str, target, cases: int, rng: np.random.Generator, hang_s: float,
               expected: tuple[type[BaseException], ...] = ()) -> Tally:
    tally = Tally()
    t_start = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    try:
        for i in range(cases):
            tally.cases += 1
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, hang_s)
            try:
                target.case(rng, tally)
            except _Hang:
                tally.hangs += 1
                tally.note(f"case {i}: no answer within {hang_s:g} s")
            except Exception as exc:
                tally.crashes += 1
                tally.note(f"case {i}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if time.perf_counter() - t0 > hang_s and tally.hangs == 0:
                tally.hangs += 1
    finally:
        signal.signal(signal.SIGALRM, old)
    tally.seconds = time.perf_counter() - t_start
    return tally


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fuzz(updates: int, batches: int, images: int, seed: int = 0, hang_s: float = 5.0,
         out: Callable[[str], None] = print) -> dict[str, Tally]:
    """Run the three targets; returns their tallies (``make fuzz`` prints them)."""
    import torch

    torch.set_num_threads(1)
    results: dict[str, Tally] = {}
    plan = [("updates", UpdateTarget, updates), ("batches", BatchTarget, batches), ("images", ImageTarget, images)]
    for k, (name, cls, n) in enumerate(plan):
        if n <= 0:
            continue
        rng = np.random.default_rng([seed, k])
        target = cls(rng) if cls is not ImageTarget else cls()
        peak0 = peak_rss_mib()
        results[name] = run_target(name, target, n, rng, hang_s)
        results[name].peak_growth_mib = peak_rss_mib() - peak0
        out(results[name].line(name))
        for ex in results[name].examples:
            out(f"  {ex}")
    out(f"peak memory (max RSS of this process) {peak_rss_mib():.0f} MiB; signers: {', '.join(SIGNERS)}; seed {seed}")
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ams-fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=1000,
                    help="update cases; batches and images get a fifth of it each unless given (default 1000)")
    ap.add_argument("--updates", type=int, default=None)
    ap.add_argument("--batches", type=int, default=None)
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--hang-s", type=float, default=5.0, help="a case slower than this counts as a hang")
    a = ap.parse_args(argv)
    upd = a.cases if a.updates is None else a.updates
    bat = a.cases // 5 if a.batches is None else a.batches
    img = a.cases // 5 if a.images is None else a.images
    cmd = f"--updates {upd} --batches {bat} --images {img} --seed {a.seed}"
    print(f"ams fuzz {cmd}")
    res = fuzz(upd, bat, img, a.seed, a.hang_s)
    bad = sum(t.crashes + t.hangs + t.changed for t in res.values())
    print("OK: 0 crashes, 0 hangs, 0 changes after rejection" if not bad else f"FAILED: {bad} findings")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
