"""Where the robot's student runs each frame: eager PyTorch, ONNX Runtime, OpenVINO or TensorRT (issue #30).

The PyTorch model stays the source of truth: updates are verified and written into it as before
(the double buffer, its flat parameters, its fingerprint). A fast runtime holds a *runner* per copy
of the double buffer, built from that copy's tensors (:func:`~ams_ros.core.edge.onnx_export.state_tensors`)
and the student's ONNX template; after an update is written into the inactive copy, that copy's runner
is rebuilt (ONNX Runtime: a new session; OpenVINO: a recompile; TensorRT: a refit of the engine, which
is built refittable) on the patcher's thread, then swapped in with the model. Inference never waits on
it, and a rebuild that fails keeps the running model (the update is rejected like any other).

Eager PyTorch's runner is the model itself and TensorRT's is called like it (a float ``1 x 3 x H x W``
tensor in [0, 1] in, logits out). ONNX Runtime's and OpenVINO's are :class:`FrameRunner` objects: their
graph takes the uint8 camera frame and gives the label map, the conversion and the argmax fused with
the network (:mod:`ams_ros.core.edge.inference` hands them the frame).

``auto`` picks the fastest runtime installed for the torch device: ONNX Runtime, else OpenVINO, else
PyTorch on a CPU (``ams-bench --only inference`` on this project's 2-core machine: ONNX Runtime's
frame-to-labels graph ran faster than OpenVINO's at one and two threads, and a new session with an
update's weights took a third of OpenVINO's recompile; docs/results.md); TensorRT, else PyTorch, on CUDA.
A runtime that is not installed is refused at start-up with the pip line that installs it; one whose
output disagrees with PyTorch's on a probe frame is refused with the figure (:func:`check_agreement`).
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ams_ros.core.common.config import knob
from ams_ros.core.common.threads import usable_cores
from ams_ros.core.edge.onnx_export import FRAME, LABELS, OUTPUT, default_cache_dir, export_onnx, state_tensors

TORCH, ONNXRUNTIME, OPENVINO, TENSORRT, AUTO = "torch", "onnxruntime", "openvino", "tensorrt", "auto"
RUNTIMES: tuple[str, ...] = (AUTO, TORCH, ONNXRUNTIME, OPENVINO, TENSORRT)
#: the Python module each runtime needs, and the line that installs it
NEEDS = {ONNXRUNTIME: ("onnxruntime", "pip install onnxruntime==1.31.0 onnx==1.23.2"),
         OPENVINO: ("openvino", "pip install openvino==2026.4.1 onnx==1.23.2"),
         TENSORRT: ("tensorrt", "pip install tensorrt (needs CUDA; on a Jetson it comes with JetPack)")}
#: labels a runtime must share with PyTorch on the probe frame to be used
MIN_AGREEMENT = 0.999
#: (issue #30) OpenVINO in bfloat16 against PyTorch's float32 on the start-up noise probe, the harshest
#: frame there is (95.3 % on the paper's student at 512x256, where 99.93 % of the pixels of real frames
#: agree: docs/results.md); a graph with wrong weights agrees on about one pixel in the class count
MIN_AGREEMENT_BFLOAT16 = 0.9


@dataclass(frozen=True)
class RuntimeConfig:
    """Which runtime the robot infers in."""

    inference_backend: str = knob(AUTO, "Where the student runs each frame: auto (the fastest installed for the "
                                        "device: onnxruntime, else openvino, else torch on a CPU; tensorrt, else "
                                        "torch, on CUDA; torch for inference_dtype float16/bfloat16) | torch | "
                                        "onnxruntime | openvino | tensorrt",
                                  choices=RUNTIMES)


class RuntimeUnavailable(ValueError):
    """A runtime that cannot be used here (not installed, wrong device, disagreeing output): a
    configuration error, reported at start-up with the fix."""


def installed(name: str) -> bool:
    return name == TORCH or importlib.util.find_spec(NEEDS[name][0]) is not None and \
        importlib.util.find_spec("onnx") is not None


def runs_in(name: str, dtype: str) -> bool:
    """Whether runtime ``name`` runs the student in ``dtype``: PyTorch in any (autocast), the graph
    runtimes in float32, OpenVINO in bfloat16 too."""
    return name == TORCH or str(dtype) == "float32" or (name == OPENVINO and str(dtype) == "bfloat16")


def resolve_runtime(name: str, device: torch.device, dtype: str = "float32") -> str:
    """The runtime ``name`` asks for on ``device`` (``auto`` resolved); ValueError naming the fix.

    ``dtype`` is the segmenter's ``inference_dtype``. bfloat16 on the CPU is OpenVINO's (where the CPU
    has AVX512_BF16 or AMX it runs 2.2x faster than its float32: docs/results.md), so ``auto`` takes
    OpenVINO for it when installed, else PyTorch's autocast; float16 is PyTorch's autocast only. A
    graph runtime asked for by name runs float32, OpenVINO bfloat16 too; other pairs are refused."""
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"inference_backend '{name}' is not one of: {', '.join(RUNTIMES)}")
    dtype = str(dtype)
    if name == AUTO:
        if dtype == "bfloat16" and device.type == "cpu":
            return OPENVINO if installed(OPENVINO) else TORCH
        if dtype != "float32":
            return TORCH
        order = (TENSORRT,) if device.type == "cuda" else (ONNXRUNTIME, OPENVINO)
        return next((r for r in order if installed(r)), TORCH)
    if not runs_in(name, dtype):
        raise RuntimeUnavailable(f"inference_backend {name} runs the float32 graph, but inference_dtype is {dtype}: "
                                 f"set inference_dtype float32, inference_backend openvino for bfloat16, or "
                                 f"inference_backend torch for autocast in {dtype}")
    if name == TENSORRT and device.type != "cuda":
        raise RuntimeUnavailable(f"inference_backend tensorrt runs on CUDA, but the student's device is {device}: "
                            f"set device: cuda, or inference_backend openvino | onnxruntime | torch")
    if name in (ONNXRUNTIME, OPENVINO) and device.type != "cpu":
        raise RuntimeUnavailable(f"inference_backend {name} runs the student on the CPU here, but its device is {device}: "
                            f"set device: cpu, or inference_backend tensorrt | torch on CUDA")
    if not installed(name):
        raise RuntimeUnavailable(f"inference_backend {name} is not installed: {NEEDS[name][1]}")
    return name


class Runner(ABC):
    """One copy's compiled student, called like the model: a float ``1 x 3 x H x W`` tensor in [0, 1]
    in, logits out (eager PyTorch's runner is the model itself; TensorRT's runs on CUDA tensors)."""

    name: str

    @abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class FrameRunner(ABC):
    """One copy's compiled student that takes the camera frame itself (ONNX Runtime, OpenVINO): the
    conversion, the network and the argmax in one graph (``_FrameToLabels`` of
    :mod:`~ams_ros.core.edge.onnx_export`)."""

    name: str

    @abstractmethod
    def labels(self, frame: np.ndarray) -> np.ndarray:
        """H x W uint8 label map of an H x W x 3 uint8 RGB frame at the student's input size."""

    @abstractmethod
    def logits(self, frame: np.ndarray) -> torch.Tensor:
        """1 x C x H x W float logits of the same frame (the start-up check against PyTorch)."""


class Runtime(ABC):
    """Builds runners from PyTorch models of one architecture, and rebuilds them after updates."""

    name: str
    #: whether :meth:`rebuild` uses ``touched`` (a refit of the changed tensors only, as TensorRT's)
    refits: bool = False

    @abstractmethod
    def build(self, model: nn.Module) -> Runner | FrameRunner:
        """A runner of ``model``'s current weights (the first time: the slow part, e.g. an export)."""

    def rebuild(self, model: nn.Module, runner: Any, touched: set[str] | None = None) -> Runner | FrameRunner:
        """A runner of ``model``'s new weights, given the one built from its old weights and the
        graph names of the tensors that changed since (``None``: any may have)."""
        return self.build(model)


class TorchRuntime(Runtime):
    """Eager PyTorch: the model is its own runner (nothing to rebuild)."""

    name = TORCH

    def build(self, model: nn.Module) -> Runner:
        return model  # type: ignore[return-value]

    def rebuild(self, model: nn.Module, runner: Any, touched: set[str] | None = None) -> Runner:
        return model  # type: ignore[return-value]


class _GraphRuntime(Runtime):
    """Runtimes that take the frame template with the model's tensors written into it."""

    def __init__(self, input_size: tuple[int, int], threads: int, cache_dir=None) -> None:
        import onnx  # lazy: only the ONNX runtimes need it

        self.onnx = onnx
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.threads = int(threads) if threads else max(1, usable_cores() - 1)
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self._template: Any = None

    def graph(self, model: nn.Module) -> bytes:
        """The frame graph with ``model``'s tensors as its initializers."""
        from onnx import numpy_helper

        if self._template is None:
            self._template = self.onnx.load_from_string(export_onnx(model, self.input_size, self.cache_dir, frames=True))
        proto = self.onnx.ModelProto()
        proto.CopyFrom(self._template)
        tensors = state_tensors(model)
        for init in proto.graph.initializer:
            t = tensors.get(init.name)
            if t is not None:
                init.CopyFrom(numpy_helper.from_array(t.detach().cpu().numpy().astype(np.float32), init.name))
        return proto.SerializeToString()


def _batch(frame: np.ndarray) -> np.ndarray:
    """A contiguous ``1 x H x W x 3`` uint8 batch of one frame."""
    a = np.ascontiguousarray(frame, dtype=np.uint8)
    return a if a.ndim == 4 else a[None]


class OnnxRuntimeRunner(FrameRunner):
    name = ONNXRUNTIME

    def __init__(self, session: Any) -> None:
        self.session = session

    def labels(self, frame: np.ndarray) -> np.ndarray:
        return self.session.run([LABELS], {FRAME: _batch(frame)})[0][0]  # only the labels are computed out

    def logits(self, frame: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.session.run([OUTPUT], {FRAME: _batch(frame)})[0])


class OnnxRuntime(_GraphRuntime):
    """ONNX Runtime's CPU execution provider: a new session per set of weights (tens of ms)."""

    name = ONNXRUNTIME

    def build(self, model: nn.Module) -> FrameRunner:
        import onnxruntime as ort  # lazy: installed on the robots that use it

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return OnnxRuntimeRunner(ort.InferenceSession(self.graph(model), options, providers=["CPUExecutionProvider"]))


class OpenVinoRunner(FrameRunner):
    """The labels-only model compiled (OpenVINO computes every output of a model: the logits
    output alone took 14 ms of 41 at 512x256); the full graph is compiled for :meth:`logits` on
    first use only (the start-up check)."""

    name = OPENVINO

    def __init__(self, core: Any, model: Any, config: dict) -> None:
        import openvino as ov

        self.core, self.model, self.config = core, model, config
        labels_only = ov.Model([model.output(LABELS)], model.get_parameters(), "student_labels")
        self.request = core.compile_model(labels_only, "CPU", config).create_infer_request()
        self._logits_request: Any = None

    def labels(self, frame: np.ndarray) -> np.ndarray:
        return np.array(self.request.infer({0: _batch(frame)})[0][0])

    def logits(self, frame: np.ndarray) -> torch.Tensor:
        if self._logits_request is None:
            self._logits_request = self.core.compile_model(self.model, "CPU", self.config).create_infer_request()
        return torch.from_numpy(np.array(self._logits_request.infer({0: _batch(frame)})[OUTPUT]))


class OpenVinoRuntime(_GraphRuntime):
    """OpenVINO on the CPU: the graph read and compiled again per set of weights (a few hundred ms),
    in float32, or in bfloat16 when ``dtype`` says so (on a CPU without bfloat16 OpenVINO runs it in
    float32)."""

    name = OPENVINO

    def __init__(self, input_size: tuple[int, int], threads: int, cache_dir=None, dtype: str = "float32") -> None:
        super().__init__(input_size, threads, cache_dir)
        self.precision = "bf16" if str(dtype) == "bfloat16" else "f32"

    def build(self, model: nn.Module) -> FrameRunner:
        import openvino as ov  # lazy: installed on the robots that use it

        core = ov.Core()
        # the precision stated: on a CPU with AVX512_BF16 or AMX (Zen 4, Sapphire Rapids) OpenVINO's
        # default is bfloat16, whose labels differ from PyTorch's float32; it is used when asked for only
        return OpenVinoRunner(core, core.read_model(self.graph(model)),
                              {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY",
                               "INFERENCE_PRECISION_HINT": self.precision})


def build_runtime(name: str, input_size: tuple[int, int], threads: int, device: torch.device,
                  cache_dir=None, dtype: str = "float32") -> Runtime:
    """The runtime ``name`` (resolved: no ``auto``) for the student at ``input_size`` (``dtype``:
    OpenVINO's precision, see :func:`resolve_runtime`)."""
    if name == TORCH:
        return TorchRuntime()
    if name == ONNXRUNTIME:
        return OnnxRuntime(input_size, threads, cache_dir)
    if name == OPENVINO:
        return OpenVinoRuntime(input_size, threads, cache_dir, dtype)
    if name == TENSORRT:
        from ams_ros.core.edge.tensorrt_runtime import TensorRtRuntime  # lazy: CUDA machines only

        return TensorRtRuntime(input_size, device, cache_dir)
    raise RuntimeUnavailable(f"unknown runtime {name}")


@dataclass(frozen=True)
class Agreement:
    """How a runner's output compares with PyTorch's on a probe frame."""

    labels_equal: float  # share of pixels with the same class
    max_abs_logit_diff: float

    def ok(self, minimum: float = MIN_AGREEMENT) -> bool:
        return self.labels_equal >= minimum and bool(np.isfinite(self.max_abs_logit_diff))


def check_agreement(model: nn.Module, runner: Any, probe: np.ndarray, name: str,
                    minimum: float = MIN_AGREEMENT) -> Agreement:
    """``runner`` against ``model`` on the uint8 RGB frame ``probe`` (H x W x 3 at the input size);
    RuntimeUnavailable with the figures when fewer than ``minimum`` of the labels agree."""
    device = next(model.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(probe)).permute(2, 0, 1)[None].float().div(255.0)
    with torch.no_grad():
        ref = model(x.to(device))
        ref = (ref["out"] if isinstance(ref, dict) else ref).float().cpu()
        got = (runner.logits(probe) if isinstance(runner, FrameRunner) else runner(x)).float().cpu()
    if got.shape != ref.shape:
        agreement = Agreement(0.0, float("inf"))
    else:
        agreement = Agreement(float((got.argmax(1) == ref.argmax(1)).float().mean()), float((got - ref).abs().max()))
    if isinstance(runner, FrameRunner) and agreement.labels_equal > 0:  # the labels the robot publishes, too
        agreement = Agreement(min(agreement.labels_equal,
                                  float((torch.from_numpy(runner.labels(probe)).long() == ref.argmax(1)[0]).float().mean())),
                              agreement.max_abs_logit_diff)
    if not agreement.ok(minimum):
        raise RuntimeUnavailable(f"inference_backend {name} disagrees with PyTorch on the probe frame: "
                                 f"{agreement.labels_equal:.4%} of labels equal (needs {minimum:.1%}), max |logit "
                                 f"difference| {agreement.max_abs_logit_diff:.3g}; use inference_backend torch")
    return agreement


def agreement_needed(name: str, dtype: str) -> float:
    """The share of the probe's labels runtime ``name`` must agree on with PyTorch in ``dtype``."""
    return MIN_AGREEMENT_BFLOAT16 if name == OPENVINO and str(dtype) == "bfloat16" else MIN_AGREEMENT


def probe_frame(input_size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """The start-up probe: a seeded H x W x 3 uint8 RGB frame at ``input_size`` = (W, H)."""
    w, h = int(input_size[0]), int(input_size[1])
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
