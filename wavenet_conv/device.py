"""Choosing the torch device from a `--device auto|cpu|cuda` flag."""
import torch

from wavenet_conv.errors import UserError

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
        # batches of whole names come in a few dozen shapes (lengths), each seen again and again: let cuDNN
        # time its convolution algorithms once per shape and keep the fastest
        torch.backends.cudnn.benchmark = True
    return torch.device(name)
