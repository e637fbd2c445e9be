"""Fuzzing camera images: ``sensor_msgs/Image``-shaped messages in every encoding, mutated and converted as the segmenter converts them."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from ams_ros.core.sources.pixel_formats import _CHANNELS, ImageConversionError, image_to_rgb

from ams_ros.fuzz.tally import Tally

class ImageTarget:
    """``sensor_msgs/Image``-shaped messages of every encoding with random sizes, steps, lengths."""

    def case(self, rng: np.random.Generator, tally: Tally) -> None:
        enc = str(rng.choice([*_CHANNELS, "bayer_rggb8", "32FC1", "", "RGB8"]))
        w = int(rng.choice([0, 1, 2, 3, 5, 8, 17, 64, int(rng.integers(1, 300))]))
        h = int(rng.choice([0, 1, 2, 3, 7, 16, int(rng.integers(1, 200))]))
        ch = _CHANNELS.get(enc, 3) * (2 if enc == "mono16" else 1)
        row = w * ch
        step = int(rng.choice([0, row, row + int(rng.integers(1, 9)), max(0, row - 1), int(rng.integers(0, 4 * row + 2))]))
        size = int(rng.choice([(step or row) * h, (step or row) * h - 1, (step or row) * h + 7, 0,
                               int(rng.integers(0, max(1, 3 * row * h)))]))
        msg = SimpleNamespace(encoding=enc, width=w, height=h, step=step, is_bigendian=int(rng.integers(0, 2)),
                              data=rng.bytes(max(0, size)))
        if rng.random() < 0.05:
            msg.width, msg.height = int(rng.choice([-1, 2**31, 2**40])), h
        try:
            rgb = image_to_rgb(msg)
        except ImageConversionError:
            tally.rejected += 1
            return
        tally.accepted += 1
        if rgb.dtype != np.uint8 or rgb.shape != (h, w, 3):
            tally.crashes += 1
            tally.note(f"accepted {enc} {w}x{h} step {step}: output {rgb.shape} {rgb.dtype}")
