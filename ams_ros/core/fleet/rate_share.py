"""A robot's fair share of a base station's GPU, as a sampling-rate ceiling (issue #31).

ASR picks each robot's sampling rate from its own scene (the phi-score): a robot alone on the GPU
samples at up to ``r_max``. Robots sharing one GPU each do the same, and every frame they send
costs teacher time at the base station, first come first served. Past the GPU's capacity the
labelling alone outgrows it: on the 12-minute playlist at the paper's costs, nine robots at ASR's
rates (about 0.9 frames/s each) asked for 196 % of the GPU in teacher time, the queue of batches
grew all stream long, and each robot got 4 phases in 713 s with its updates 100-160 s late: a
collapse, not a share. A frame the GPU cannot label in time is worth nothing; asking for it only
delays the phases of every robot.

:func:`fair_share_rate` is the highest rate at which N robots, each labelled and trained once per
update period, fit one GPU: per period a robot costs ``teacher_call_s + r x T x teacher_s`` of
labelling and ``phase_s`` of training, and N of them must fit in T. A robot's commanded rate is the
smaller of ASR's and this ceiling, so a calm robot below it is untouched and the GPU is shared by
rate, not by queueing. Alone (N = 1) the ceiling is above ``r_max`` at any plausible cost, so a
robot's reference run is unchanged. When even ``r_min`` does not fit (training alone outgrows the
GPU), the ceiling is ``r_min`` and the scheduler rations the phases.
"""

from __future__ import annotations


def fair_share_rate(robots: int, period_s: float, teacher_s: float, teacher_call_s: float, phase_s: float,
                    r_min: float, r_max: float) -> float:
    """Frames per second each of ``robots`` may sample so that their labelling and one phase each per
    ``period_s`` fit one GPU; within [``r_min``, ``r_max``]."""
    if robots < 1 or period_s <= 0:
        raise ValueError(f"robots must be >= 1 and period_s > 0, got robots={robots}, period_s={period_s}")
    if not 0 < r_min <= r_max:
        raise ValueError(f"need 0 < r_min <= r_max, got r_min={r_min}, r_max={r_max}")
    left = period_s / robots - teacher_call_s - phase_s  # GPU seconds per period left for one robot's frames
    if teacher_s <= 0:
        return r_max if left >= 0 else r_min
    return min(r_max, max(r_min, left / (period_s * teacher_s)))
