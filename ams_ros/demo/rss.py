"""Memory of the demo's processes over stream time, for the soak benchmark (issue #13).

A leak shows as a slope, not as a level: the report fits RSS (MiB) against stream time (hours)
by least squares from ``fit_from_s`` on (the first minutes hold start-up allocations: torch,
DDS, the pretrained student), and writes every sample with it so the fit can be checked.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil


def process_rss_mib(pid: int) -> float | None:
    """Resident set size of a process and its children (MiB); None once it has exited."""
    try:
        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total / 2**20
    except psutil.Error:
        return None


def slope_mib_per_hour(t_s: list[float], mib: list[float], fit_from_s: float = 0.0) -> float | None:
    """Least-squares slope of RSS against time (MiB per hour) over the samples at or after
    ``fit_from_s``; None with fewer than three of them."""
    t = np.asarray(t_s, dtype=float)
    m = np.asarray(mib, dtype=float)
    keep = (t >= fit_from_s) & np.isfinite(m)
    if keep.sum() < 3:
        return None
    slope, _ = np.polyfit(t[keep] / 3600.0, m[keep], 1)
    return float(slope)


@dataclass
class RssLog:
    """RSS samples of named processes, taken every ``every_s`` seconds of stream time."""

    pids: dict[str, int]
    every_s: float
    fit_from_s: float = 120.0
    t: list[float] = field(default_factory=list)
    mib: dict[str, list[float]] = field(default_factory=dict)
    _next_t: float = 0.0

    def __post_init__(self) -> None:
        if self.every_s <= 0:
            raise ValueError(f"every_s={self.every_s!r}: RSS sampling needs a positive period (s), e.g. 30")
        self.mib = {name: [] for name in self.pids}

    def maybe_sample(self, stream_t: float) -> bool:
        """Sample every process if ``every_s`` of stream time passed since the last sample."""
        if stream_t < self._next_t:
            return False
        self._next_t = stream_t + self.every_s
        self.t.append(round(float(stream_t), 2))
        for name, pid in self.pids.items():
            value = process_rss_mib(pid)
            self.mib[name].append(round(value, 1) if value is not None else float("nan"))
        return True

    def summary(self) -> dict:
        out: dict = {"samples": len(self.t), "every_s": self.every_s, "fit_from_s": self.fit_from_s}
        for name, values in self.mib.items():
            finite = [v for v in values if np.isfinite(v)]
            out[name] = {
                "first_mib": finite[0] if finite else None,
                "last_mib": finite[-1] if finite else None,
                "max_mib": max(finite) if finite else None,
                "slope_mib_per_hour": slope_mib_per_hour(self.t, values, self.fit_from_s),
            }
        return out

    def write(self, out: Path) -> dict:
        summary = self.summary()
        (out / "rss.json").write_text(json.dumps({"summary": summary, "t": self.t, "mib": self.mib}, indent=1))
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt

            fig, ax = plt.subplots(figsize=(7, 3.5))
            for name, values in self.mib.items():
                slope = summary[name]["slope_mib_per_hour"]
                label = f"{name} ({slope:+.1f} MiB/h from {self.fit_from_s:g} s)" if slope is not None else name
                ax.plot(np.asarray(self.t) / 60.0, values, label=label)
            ax.set_xlabel("stream time (min)")
            ax.set_ylabel("RSS (MiB)")
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(out / "rss.png", dpi=100)
            plt.close(fig)
        except ImportError:
            pass
        return summary
