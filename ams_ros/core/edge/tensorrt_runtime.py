"""The student in TensorRT on CUDA (a Jetson, a GPU robot), refitted in place after each update (issue #30).

A TensorRT engine takes minutes to build on a Jetson, so it is built once, *refittable*
(``BuilderFlag.REFIT``), from the student's ONNX template (:mod:`ams_ros.core.edge.onnx_export`),
and kept in the cache directory keyed by the template, TensorRT's version and the GPU's name. Each
copy of the double buffer deserializes its own engine (seconds at most) and is refitted with that
copy's weights at start-up. After an update, only the tensors it touched (:func:`refit_names`:
the double buffer's bookkeeping, plus whatever TensorRT reports missing because it folded them
together with a touched one) are handed to an ``IRefitter``: milliseconds, not a rebuild.

Inference runs on the current CUDA stream with the input and output as torch tensors on the GPU
(no host copies). This module needs ``tensorrt`` and CUDA; it is imported only when
``inference_backend`` is ``tensorrt`` (or ``auto`` finds it on CUDA). Checked by
``tools/gpu_check.sh`` when a GPU is lent (docs/results.md).
"""

from __future__ import annotations

import hashlib
import time
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn

from ams_ros.core.edge.onnx_export import INPUT, OUTPUT, default_cache_dir, export_onnx, state_tensors
from ams_ros.core.edge.runtimes import TENSORRT, Runner, Runtime, RuntimeUnavailable


def refit_names(changed: set[str] | None, all_names: Iterable[str], missing: Iterable[str] = ()) -> list[str]:
    """The weights to hand the refitter: ``changed`` (``None``: every weight) and the ``missing``
    ones TensorRT asks for (weights it folded together with a changed one), each once, sorted."""
    names = set(all_names) if changed is None else set(changed)
    return sorted(names | set(missing))


class TensorRtRunner(Runner):
    """One deserialized engine and its execution context; called with a CUDA float tensor."""

    name = TENSORRT

    def __init__(self, engine: Any, device: torch.device) -> None:
        self.engine = engine
        self.context = engine.create_execution_context()
        self.device = device
        self.out_shape = tuple(engine.get_tensor_shape(OUTPUT))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, torch.float32).contiguous()
        out = torch.empty(self.out_shape, dtype=torch.float32, device=self.device)
        self.context.set_tensor_address(INPUT, x.data_ptr())
        self.context.set_tensor_address(OUTPUT, out.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out


class TensorRtRuntime(Runtime):
    """Refittable TensorRT engines of the student at ``input_size`` on ``device`` (CUDA)."""

    name = TENSORRT
    refits = True

    def __init__(self, input_size: tuple[int, int], device: torch.device, cache_dir=None) -> None:
        import tensorrt as trt  # lazy: CUDA machines only

        if device.type != "cuda":
            raise RuntimeUnavailable(f"inference_backend tensorrt needs a CUDA device, not {device}")
        self.trt = trt
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.device = device
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self._serialized: bytes | None = None
        self.build_s = 0.0  # seconds the engine took to build (0 when read from the cache)

    def _engine_bytes(self, model: nn.Module) -> bytes:
        if self._serialized is not None:
            return self._serialized
        onnx_bytes = export_onnx(model, self.input_size, self.cache_dir)
        gpu = torch.cuda.get_device_name(self.device)
        key = hashlib.sha256(onnx_bytes + f"|trt{self.trt.__version__}|{gpu}".encode()).hexdigest()[:24]
        path = self.cache_dir / f"student_{key}.engine"
        if path.exists():
            self._serialized = path.read_bytes()
            return self._serialized

        t0 = time.perf_counter()
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(onnx_bytes):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeUnavailable(f"TensorRT cannot parse the student's ONNX graph: {errors}")
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.REFIT)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeUnavailable("TensorRT could not build an engine of the student (see its log above)")
        self._serialized = bytes(serialized)
        self.build_s = time.perf_counter() - t0
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".student-", suffix=".engine")
        with os.fdopen(fd, "wb") as f:
            f.write(self._serialized)
        os.replace(tmp, path)
        return self._serialized

    def build(self, model: nn.Module) -> Runner:
        """A new engine (from the cached serialized one) refitted with all of ``model``'s weights."""
        engine = self.trt.Runtime(self.logger).deserialize_cuda_engine(self._engine_bytes(model))
        if engine is None:
            raise RuntimeUnavailable("TensorRT could not deserialize the student's engine")
        runner = TensorRtRunner(engine, self.device)
        self.refit(model, runner, None)
        return runner

    def rebuild(self, model: nn.Module, runner: Runner, touched: set[str] | None = None) -> Runner:
        """``runner`` refitted in place with the tensors that changed (all when ``touched`` is None)."""
        if not isinstance(runner, TensorRtRunner):
            return self.build(model)
        self.refit(model, runner, touched)
        return runner

    def refit(self, model: nn.Module, runner: TensorRtRunner, touched: set[str] | None) -> list[str]:
        """Hand the refitter the weights of ``touched`` (and what it reports missing); the names given."""
        trt = self.trt
        refitter = trt.Refitter(runner.engine, self.logger)
        tensors = state_tensors(model)
        refittable = set(refitter.get_all_weights())
        names = [n for n in refit_names(touched, refittable) if n in refittable]
        keep = []  # the host arrays must outlive refit_cuda_engine
        for name in names:
            arr = np.ascontiguousarray(tensors[name].detach().float().cpu().numpy())
            keep.append(arr)
            refitter.set_named_weights(name, trt.Weights(arr))
        missing = [n for n in refitter.get_missing_weights() if n in tensors]
        for name in missing:
            arr = np.ascontiguousarray(tensors[name].detach().float().cpu().numpy())
            keep.append(arr)
            refitter.set_named_weights(name, trt.Weights(arr))
        if not refitter.refit_cuda_engine():
            raise RuntimeError(f"TensorRT refit failed (weights given: {len(names) + len(missing)})")
        return refit_names(set(names), (), missing)
