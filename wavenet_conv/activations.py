"""tanh, computed the way that is fastest where it runs.

On the CPU torch.tanh costs about twice torch.sigmoid per element, and tanh(x) = 2 sigmoid(2x) - 1 is the same
number to rounding, so there the levels use that form (in place, one saved output, tanh's own backward).
Elsewhere, and inside torch.compile (which fuses its own tanh), it is torch.tanh.
"""
import torch


def tanh_(x):
    """tanh in place, outside autograd (the sampling cache steps with it)."""
    if x.device.type != "cpu":
        return x.tanh_()
    return x.mul_(2).sigmoid_().mul_(2).sub_(1)


class SigmoidTanh(torch.autograd.Function):
    """tanh(x) as 2 sigmoid(2x) - 1, with the backward of tanh: grad (1 - y^2)."""

    @staticmethod
    def forward(ctx, x):
        y = x.mul(2).sigmoid_().mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def tanh(x):
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return torch.tanh(x)
    return SigmoidTanh.apply(x)
