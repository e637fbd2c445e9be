"""How the pool talks to its actors: :class:`RayActor` (a :class:`~ams_ros.core.fleet.worker.PoolWorker`
in a Ray actor; Ray imported only here, on first use) or :class:`InProcessActor` (the same worker in
this process: the pool's rules tested without Ray). A dead actor is :class:`ActorGone`."""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Optional, Protocol

from ams_ros.core.common.paths import SOURCE_ROOT
from ams_ros.core.fleet.pool_config import LOCAL, LOCAL_OBJECT_STORE_BYTES, PoolConfig
from ams_ros.core.fleet.worker import PoolWorker, WorkerSpec


class ActorGone(RuntimeError):
    """The actor died (killed, its process or node lost): its robots must be restored elsewhere."""


class ActorRef(Protocol):
    name: str

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any: ...

    def kill(self) -> None: ...


class InProcessActor:
    """A :class:`PoolWorker` in this process behind the actor interface (tests, benchmarks):
    ``kill()`` makes every later call raise :class:`ActorGone`, as a killed Ray actor does."""

    def __init__(self, spec: WorkerSpec, name: str) -> None:
        self.name = name
        self.worker: Optional[PoolWorker] = PoolWorker(spec, name)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        worker = self.worker
        if worker is None:
            raise ActorGone(f"actor {self.name} was killed")
        return getattr(worker, method)(*args)

    def kill(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.worker = None


def import_ray(local: bool = False) -> Any:
    """Ray, imported on first use only (``backend: local`` never needs it; lazy on purpose).

    ``local``: a single-machine instance on loopback. Ray on Linux turns a node address of
    127.0.0.1 into the machine's network address unless its single-machine mode (what it runs
    on macOS) is on, which Ray reads from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when it is first
    imported: set here before the import, and inherited by every process the instance starts."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage telemetry
    if local:
        if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
            raise RuntimeError("Ray was imported in this process before a local instance was asked for, so it reads "
                               "its node address as the machine's network address: start the local instance "
                               "(connect_ray) before anything else imports ray")
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError("backend ray needs the ray package (pip install ray==2.60.0; `make setup` installs it), "
                           "or set backend: local") from exc
    return ray


def connect_ray(address: str, num_cpus: float | None = None, num_gpus: float | None = None) -> str:
    """Start or join Ray once per process; returns what was done, for the log.

    ``local``: a new Ray instance in this process, every service bound to 127.0.0.1, no dashboard,
    no usage statistics. ``auto`` / ``HOST:PORT``: join an existing cluster (``ray start``)."""
    text = str(address).strip()
    ray = import_ray(local=text == LOCAL)
    if ray.is_initialized():
        return "Ray already initialised in this process"
    if text == LOCAL:
        # the workers it starts inherit this environment: they must import this ams_ros
        root = str(SOURCE_ROOT)
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([root, *[p for p in paths if p]])
        ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=False,
                 num_cpus=None if num_cpus is None else max(1, int(round(num_cpus))),
                 num_gpus=None if num_gpus is None else int(num_gpus),
                 object_store_memory=LOCAL_OBJECT_STORE_BYTES, log_to_driver=False, configure_logging=False)
        return "started a local Ray instance on 127.0.0.1"
    ray.init(address=text, log_to_driver=False, configure_logging=False)
    return f"joined the Ray cluster at {text}"


def disconnect_ray() -> None:
    """End this process's Ray connection (a local instance stops with it); nothing without Ray."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


class RayActor:
    """A :class:`PoolWorker` in a Ray actor. Errors the worker raises come back as themselves
    (ValueError, FrameCodecError, RobotNotHere); a dead actor as :class:`ActorGone`."""

    def __init__(self, spec: WorkerSpec, name: str, cpus: float = 1.0, gpus: float = 0.0,
                 max_concurrency: int = 8, spread: bool = True) -> None:
        ray = self._ray = import_ray()
        self.name = name
        cls = ray.remote(PoolWorker)
        self.handle = cls.options(num_cpus=cpus, num_gpus=gpus, max_concurrency=max_concurrency, max_restarts=0,
                                  max_task_retries=0,
                                  scheduling_strategy="SPREAD" if spread else "DEFAULT").remote(spec, name)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        ray = self._ray
        try:
            return ray.get(getattr(self.handle, method).remote(*args), timeout=timeout)
        except ray.exceptions.RayActorError as exc:
            raise ActorGone(f"actor {self.name} died: {exc}") from exc
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, BaseException):
                raise cause from None
            raise

    def kill(self) -> None:
        try:
            self._ray.kill(self.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def ray_actor_factory(spec: WorkerSpec, config: PoolConfig) -> Callable[[str], RayActor]:
    return lambda name: RayActor(spec, name, cpus=config.actor_cpus, gpus=config.actor_gpus, spread=config.spread)


def in_process_factory(spec: WorkerSpec) -> Callable[[str], InProcessActor]:
    return lambda name: InProcessActor(spec, name)
