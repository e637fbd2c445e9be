"""A per-robot downlink budget the server keeps (issue #10): gamma and the update encoding per phase.

The paper's headline is "less than 300 Kbps each way", but its downlink follows from gamma and
the encoding, not from a target. A robot on a shared radio link needs the converse: a budget
(``downlink_budget_kbps``) and a server that picks, before each phase, how many coordinates to
train and send (gamma) and how to code them so the updates stay within it.

The rule, per phase:

- a token bucket holds the bytes the robot may still receive: it fills at the budget's rate
  with stream time (at most ``burst_periods`` update periods' worth) and every update shipped
  is taken from it at its real size, so an update that came out larger than planned makes the
  next one smaller and the measured average holds;
- the encodings are tried from the most faithful (the configured ``update_encoding``) to the
  cheapest (``residual_zstd_ternary``), each with its bytes per selected parameter as last
  measured (a prior from ``make bench`` until then): the first that carries the configured gamma
  within the tokens is used at that gamma;
- if none does, the cheapest encoding is used at the gamma the tokens allow: more coordinates
  with fewer bits each (sparse ternary compression's trade, and AMS's own Table 3: which
  coordinates are trained matters more than how finely they are sent), down to ``min_gamma``,
  below which the phase is sent anyway and counted as over budget.

Snapshots and catch-up updates (resyncs) are not planned here: they are what a robot needs to
run the server's chain at all; they are taken from the bucket too, so the phases after a resync
pay for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ams_ros.core.common.config import knob

# Bytes per selected parameter at gamma 5 % on the bench's update (`make bench ARGS="--only
# updates"`, 2026-12-03): the estimate of an encoding before this session has shipped one.
PRIOR_BYTES_PER_SELECTED = {
    "paper_gzip_fp16": 2.32, "delta_lzma_fp16": 2.21, "delta_lzma_q8": 1.35, "residual_lzma_q8": 1.34,
    "residual_lzma_q6": 1.17, "residual_zlib_q6": 1.22, "residual_zstd_q4": 0.89, "residual_zstd_q3": 0.76,
    "residual_zstd_q2": 0.64, "residual_zstd_ternary": 0.55,
}
# what every update costs besides its blobs (header, checksum, signature, scale tables)
UPDATE_OVERHEAD_BYTES = 400
ESTIMATE_MARGIN = 0.95
# cheapest last: the ladder the planner walks down from the configured encoding
LADDER = ("residual_zstd_q4", "residual_zstd_q3", "residual_zstd_q2", "residual_zstd_ternary")


@dataclass(frozen=True)
class DownlinkBudgetConfig:
    downlink_budget_kbps: float = knob(0.0, "Per-robot downlink budget (Kbps): before each phase the trainer picks "
                                            "gamma (at most the configured one) and the update encoding so the "
                                            "updates stay within it; 0 = no budget (gamma and update_encoding as set)")
    min_gamma: float = knob(0.002, "Least fraction of parameters a budgeted phase trains and sends")
    burst_periods: float = knob(2.0, "Unspent budget carried over, in update periods (the token bucket's depth)")

    def __post_init__(self) -> None:
        if self.downlink_budget_kbps < 0:
            raise ValueError(f"downlink_budget_kbps={self.downlink_budget_kbps}: must be >= 0 (0 = no budget)")
        if not 0.0 < self.min_gamma <= 1.0:
            raise ValueError(f"min_gamma={self.min_gamma}: must be in (0, 1]")
        if self.burst_periods < 1.0:
            raise ValueError(f"burst_periods={self.burst_periods}: must be >= 1 (one period's budget at least)")


@dataclass(frozen=True)
class PhasePlan:
    gamma: float
    encoding: str
    planned_bytes: int
    tokens_bytes: float
    over_budget: bool  # even min_gamma with the cheapest encoding did not fit


@dataclass
class DownlinkBudget:
    """The token bucket and the per-encoding size estimates of one robot."""

    config: DownlinkBudgetConfig
    period_s: float
    tokens: float = 0.0
    last_t: float | None = None
    bytes_per_selected: dict[str, float] = field(default_factory=lambda: dict(PRIOR_BYTES_PER_SELECTED))
    spent_bytes: int = 0
    first_t: float | None = None

    @property
    def enabled(self) -> bool:
        return self.config.downlink_budget_kbps > 0

    @property
    def rate_bytes_per_s(self) -> float:
        return self.config.downlink_budget_kbps * 1000.0 / 8.0

    def _fill(self, now: float) -> None:
        if self.last_t is None:  # the first phase trains on one period of samples: that period's budget
            self.last_t, self.first_t = now, now - self.period_s
            self.tokens = self.rate_bytes_per_s * self.period_s
            return
        dt = max(0.0, now - self.last_t)
        self.last_t = max(self.last_t, now)
        cap = self.rate_bytes_per_s * self.period_s * self.config.burst_periods
        self.tokens = min(cap, self.tokens + self.rate_bytes_per_s * dt)

    def plan(self, now: float, num_params: int, gamma: float, encoding: str) -> PhasePlan:
        """Gamma and encoding for the phase about to train at stream time ``now``."""
        if not self.enabled:
            return PhasePlan(gamma, encoding, 0, float("inf"), False)
        self._fill(now)
        # 5 % kept back: the size per parameter is an estimate (it grows as gamma shrinks)
        room = ESTIMATE_MARGIN * self.tokens - UPDATE_OVERHEAD_BYTES
        # the configured encoding, then the ladder's cheaper ones (ordered by their bench sizes)
        ladder = [encoding] + [e for e in LADDER if PRIOR_BYTES_PER_SELECTED[e] < PRIOR_BYTES_PER_SELECTED[encoding]]
        for name in ladder:
            size = self.bytes_per_selected[name] * gamma * num_params
            if size <= room:
                return PhasePlan(gamma, name, int(size + UPDATE_OVERHEAD_BYTES), self.tokens, False)
        cheapest = ladder[-1]
        fit = max(room, 0.0) / (self.bytes_per_selected[cheapest] * num_params)
        g = min(gamma, max(fit, self.config.min_gamma))
        size = self.bytes_per_selected[cheapest] * g * num_params + UPDATE_OVERHEAD_BYTES
        return PhasePlan(g, cheapest, int(size), self.tokens, fit < self.config.min_gamma)

    def shipped(self, encoding: str | None, num_selected: int, wire_bytes: int) -> None:
        """An update left for the robot: its bytes come out of the bucket, and (for a sparse
        update) its size per selected parameter updates that encoding's estimate. Nothing
        without a budget."""
        if not self.enabled:
            return
        self.tokens -= wire_bytes
        self.spent_bytes += int(wire_bytes)
        if encoding in self.bytes_per_selected and num_selected > 0:
            measured = max(wire_bytes - UPDATE_OVERHEAD_BYTES, 0) / num_selected
            # the size per parameter shifts as training settles: follow it, smoothed
            self.bytes_per_selected[encoding] = 0.5 * self.bytes_per_selected[encoding] + 0.5 * measured

    def average_kbps(self, now: float) -> float | None:
        """Bytes shipped, over the stream time since one period before the first plan (Kbps)."""
        if self.first_t is None or now <= self.first_t:
            return None
        return self.spent_bytes * 8.0 / 1000.0 / (now - self.first_t)

