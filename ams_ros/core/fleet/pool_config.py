"""Where the base station's robots' sessions run (``backend``), and the pool's rules when that is a
pool of actors (issue #12): how many, their CPUs and GPUs, when one counts as overloaded, how the
robot an overloaded actor hands over is chosen, whether its ready robots train in one fused step."""

from __future__ import annotations

from dataclasses import dataclass

from ams_ros.core.common.config import check_choice, knob

LOCAL, RAY = "local", "ray"
BACKENDS: tuple[str, ...] = (LOCAL, RAY)
#: a local Ray instance's object store: robots' states and batches at demo size need little
LOCAL_OBJECT_STORE_BYTES = 256 * 2**20
#: batches kept per robot for replay after an actor's death (those since its last persisted state)
MAX_REPLAY_BATCHES = 256
#: how an overloaded actor picks the robot it hands over (see the module doc)
UTILITY, LOAD = "utility", "load"
PLACEMENTS: tuple[str, ...] = (UTILITY, LOAD)


@dataclass
class PoolConfig:
    """Where the robots' sessions run, and the pool's rules when that is a pool of actors."""

    backend: str = knob(LOCAL, "Where the robots' sessions (student, Adam state, buffer, chain) and the teacher run: "
                               "local (in the server process) | ray (in a pool of Ray actors, e.g. one per GPU)",
                        choices=BACKENDS)
    ray_address: str = knob(LOCAL, "With backend ray: local (start a Ray instance in this process, bound to "
                                   "127.0.0.1) | auto (join the cluster `ray start` runs on this machine) | HOST:PORT "
                                   "(join that cluster's head)")
    actors: int = knob(2, "With backend ray: actors in the pool; each serves several robots with its own teacher")
    actor_cpus: float = knob(1.0, "With backend ray: CPUs each actor reserves")
    actor_gpus: float = knob(0.0, "With backend ray: GPUs each actor reserves (1 = one GPU per actor, 0.5 = two "
                                  "per GPU, 0 = CPU actors)")
    overload: float = knob(0.9, "With backend ray: an actor busier than this share of wall time (labelling and "
                                "training over pool_load_window_s) hands a robot to a less-busy actor")
    load_window_s: float = knob(30.0, "With backend ray: the window (s) over which each actor's load is measured")
    fuse: bool = knob(False, "With backend ray: train the ready robots of one actor in one fused step (vmap over "
                             "their students; per-robot selection and Adam state). Pays on a GPU; on a CPU it is "
                             "slower than one phase after another (docs/results.md)")
    placement: str = knob(UTILITY, "With backend ray: which robot an overloaded actor hands over (among those whose "
                                   "move lowers the busier actor): utility (the lowest predicted mIoU gain per "
                                   "GPU-second, from the scheduler; needs scheduler_policy utility or utility_aging, "
                                   "else as load) | load (the move that leaves the lowest peak load). A dead actor's "
                                   "robots are restored highest utility first", choices=PLACEMENTS)
    spread: bool = knob(True, "With backend ray: start the actors on different Ray nodes where the cluster has "
                              "several (Ray's SPREAD scheduling), so that losing one node loses the fewest actors; "
                              "false: Ray's default, which fills the node the server runs on first")
    check_period_s: float = knob(1.0, "With backend ray: how often the pool pings its actors (a dead one is "
                                      "replaced and its robots restored) and checks their load")
    unreachable_s: float = knob(10.0, "With backend ray: an actor that does not answer a ping for this long (its "
                                      "node cut off by the network, or hung) is given up as lost: its robots are "
                                      "restored elsewhere at once instead of when Ray declares its node dead (about "
                                      "a minute after a link goes down)")

    def __post_init__(self) -> None:
        check_choice("backend", self.backend, BACKENDS)
        check_choice("pool_placement", self.placement, PLACEMENTS)
        if not str(self.ray_address).strip():
            raise ValueError("ray_address is empty: use local (a Ray instance in this process), auto (the cluster "
                             "`ray start` runs here) or HOST:PORT of the cluster's head")
        if self.actors < 1:
            raise ValueError(f"pool_actors must be >= 1, got {self.actors}")
        if self.actor_cpus < 0 or self.actor_gpus < 0:
            raise ValueError(f"pool_actor_cpus and pool_actor_gpus must be >= 0, got {self.actor_cpus}, "
                             f"{self.actor_gpus}")
        if not 0.0 < self.overload <= 1.0:
            raise ValueError(f"pool_overload must be in (0, 1], got {self.overload}")
        if self.load_window_s <= 0 or self.check_period_s <= 0 or self.unreachable_s <= 0:
            raise ValueError(f"pool_load_window_s, pool_check_period_s and pool_unreachable_s must be > 0, got "
                             f"{self.load_window_s}, {self.check_period_s}, {self.unreachable_s}")
