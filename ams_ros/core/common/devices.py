"""Where the tensors live: the ``device`` and precision settings of every side, resolved once.

Robots run the student on a Jetson and base stations train on a GPU, but CI and small machines
have none, so every model-holding component takes a ``device`` spec (``auto`` | ``cpu`` |
``cuda`` | ``cuda:N``). ``auto`` picks the first CUDA device when torch sees one, else the CPU.
Asking for CUDA where there is none is a start-up error that says what torch sees and how to
fix it, never a silent fall-back to the CPU: a robot that was meant to segment on its GPU and
quietly runs at a few frames per second on its CPU is a failure nobody notices until the field.

``inference_dtype`` (float32 | float16 | bfloat16) is the precision the student runs in; training
precision is the trainer's (``TrainerConfig.train_precision``). Half precision on the CPU is
legal (slow for float16 on most CPUs) so it can be tested here.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from ams_ros.core.common.config import knob

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N")
"""The forms a device spec takes (``cuda:N``: a CUDA device index, e.g. ``cuda:1``)."""
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
DTYPE_CHOICES = tuple(DTYPES)

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


class DeviceError(ValueError):
    """A device spec that cannot be honoured here (a ValueError: the nodes report it at start-up)."""


def torch_sees() -> str:
    """What this torch build sees, for error messages and bench/eval metadata."""
    built = torch.backends.cuda.is_built()
    n = torch.cuda.device_count() if built else 0
    return (f"torch {torch.__version__}, built with CUDA: {'yes (CUDA ' + str(torch.version.cuda) + ')' if built else 'no'}, "
            f"CUDA devices visible: {n}")


def _no_cuda(spec: str, why: str) -> DeviceError:
    if not torch.backends.cuda.is_built():
        fix = "install a CUDA build of PyTorch (see pytorch.org), or set device to 'cpu' (or 'auto')"
    else:
        fix = ("check the driver (nvidia-smi) and CUDA_VISIBLE_DEVICES, pick a visible index, "
               "or set device to 'cpu' (or 'auto')")
    return DeviceError(f"device '{spec}': {why} ({torch_sees()}); fix: {fix}")


def resolve_device(spec: str | torch.device | None = "auto") -> torch.device:
    """The torch device a spec names; DeviceError naming the spec, what torch sees and the fix."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = str(spec if spec is not None else "auto").strip().lower() or "auto"
    if text == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = _CUDA_INDEX.match(text)
    if text != "cuda" and m is None:
        raise DeviceError(f"device '{spec}' is not valid; choose one of: {', '.join(DEVICE_CHOICES)} "
                          f"(e.g. cuda:0)")
    index = int(m.group(1)) if m else 0
    if not torch.cuda.is_available():
        raise _no_cuda(str(spec), "CUDA was asked for but torch has no usable CUDA device")
    count = torch.cuda.device_count()
    if index >= count:
        raise _no_cuda(str(spec), f"there is no CUDA device {index} (valid indices: 0..{count - 1})")
    return torch.device("cuda", index)


def resolve_dtype(name: str | torch.dtype) -> torch.dtype:
    """float32 | float16 | bfloat16 as a torch dtype; ValueError naming the choices otherwise."""
    if isinstance(name, torch.dtype):
        if name not in DTYPES.values():
            raise ValueError(f"dtype {name} is not supported; choose one of: {', '.join(DTYPE_CHOICES)}")
        return name
    key = str(name).strip().lower()
    if key not in DTYPES:
        raise ValueError(f"dtype '{name}' is not valid; choose one of: {', '.join(DTYPE_CHOICES)}")
    return DTYPES[key]


def describe(device: torch.device) -> str:
    """'cpu' or 'cuda:0 (NVIDIA H200)' for logs and reports."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels on ``device`` (timing on CUDA is meaningless without it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configure_cudnn(device: torch.device, benchmark: bool) -> None:
    """``torch.backends.cudnn.benchmark`` for fixed-shape inference/training on CUDA (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(benchmark)


def autocast_for(device: torch.device, dtype: torch.dtype):
    """``torch.autocast`` for a reduced precision, a no-op context for float32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass(frozen=True)
class DeviceConfig:
    """Where and how a side runs its model. ``device``: auto | cpu | cuda | cuda:N."""

    device: str = knob("auto", "Torch device: auto (first CUDA device, else the CPU) | cpu | cuda | cuda:N; "
                       "CUDA where torch sees none is a start-up error")
    inference_dtype: str = knob("float32", "Student inference precision (float16/bfloat16 via autocast; bfloat16 on "
                                "a CPU in OpenVINO with inference_backend auto or openvino; the weights and "
                                "updates stay float32)", choices=DTYPE_CHOICES)
    cudnn_benchmark: bool = knob(False, "CUDA only: let cuDNN pick the fastest kernels for the fixed input size")
    channels_last: bool = knob(False, "Run convolutions in channels-last memory format (can help CUDA tensor "
                               "cores; off by default, no gain measured on the CPU)")
