"""What a fuzz target counts: cases, rejections, acceptances, crashes, hangs, changes after a rejection."""

from __future__ import annotations

from dataclasses import dataclass, field



@dataclass
class Tally:
    cases: int = 0
    rejected: int = 0
    accepted: int = 0
    crashes: int = 0
    hangs: int = 0
    changed: int = 0
    seconds: float = 0.0
    peak_growth_mib: float = 0.0  # how much this target raised the process's peak RSS
    examples: list[str] = field(default_factory=list)

    def line(self, kind: str) -> str:
        return (f"{kind:8s} cases {self.cases:6d}  rejected {self.rejected:6d}  accepted {self.accepted:6d}  "
                f"crashes {self.crashes}  hangs {self.hangs}  changes after rejection {self.changed}  "
                f"({self.seconds:.1f} s, peak RSS +{self.peak_growth_mib:.0f} MiB)")

    def note(self, what: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(what)
