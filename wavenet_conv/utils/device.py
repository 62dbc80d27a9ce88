"""Choosing the torch device from a `--device auto|cpu|cuda` flag, and naming it."""
import platform

import torch

from wavenet_conv.utils.errors import UserError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def cuda_works():
    """True when CUDA is not only compiled in but a device really answers."""
    if not torch.cuda.is_available():
        return False
    try:
        torch.zeros(1, device="cuda")
    except RuntimeError:
        return False
    return True


def resolve_device(name="auto"):
    """'auto' picks CUDA when it really works; 'cuda' without a GPU is a user error, not a traceback."""
    if name not in DEVICE_CHOICES:
        raise UserError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if name == "auto":
        name = "cuda" if cuda_works() else "cpu"
    elif name == "cuda" and not cuda_works():
        raise UserError("--device cuda was asked for, but no working CUDA GPU is available")
    if name == "cuda":
        use_exact_float32_convolutions()
    return torch.device(name)


def use_exact_float32_convolutions():
    """Make cuDNN's float32 convolutions full float32, as Linear's matmuls already are by default.

    cuDNN rounds float32 convolution inputs to TF32 (10-bit mantissas) unless told not to. The conv form would then
    differ from the tree form, and from its own cached sampler, by ~3e-4 on an H100, not by float32 rounding.
    cuDNN's autotuning (`cudnn.benchmark`) stays off: when packed training gave every step a new row length, timing
    the algorithms again for each one cost 20 s of a 71 s training run on an H100. Rows now reach the
    convolutions in multiples of packing.ROW_QUANTUM positions, so lengths repeat; autotuning has not been
    measured on a GPU since.
    """
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = False


def hardware_name(device, threads=True):
    """The GPU's name, or the CPU's with this process's thread count (threads=False: without it)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        name = platform.processor() or platform.machine()
    count = torch.get_num_threads()
    return f"{name}, {count} thread{'' if count == 1 else 's'}" if threads else name
