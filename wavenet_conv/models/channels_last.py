"""Activations as rows, one per position (n c, channels last), and an nn.Conv1d that convolves them as they lie.

The packed forms keep a level's activations as rows: gathers of table rows, batch norm over positions, the
output layer and the item-start fixes all read or write whole rows of c contiguous numbers. A run of b equally
long items is then a contiguous (b t c) block, and its (b, c, t) view is channels-last. Conv1d on such a view
would first copy it to (b, c, t) contiguous (a transpose with runs of t numbers). `ChannelsLastConv1d` instead
runs it as the 2-d convolution torch itself makes of a Conv1d (height 1), in the channels-last (NHWC) layout
oneDNN and cuDNN convolve directly, and returns a channels-last (b, h, t) view. `python benchmarks/conv_kernel.py
--rounds 7`, twice, on an AMD EPYC (family 25, model 17), one thread, a dilation-4 level at 128 channels over
585 items of 7 positions: 1.24-1.25 ms (92 GFLOP/s) here, against 1.82-1.84 ms (63) for Conv1d on the same run
taken from a (1, c, n) row and 1.51-1.53 ms (75-76) on a contiguous (b, c, t) batch.

Shape legend: b batch, t time, n positions, c input channels, h output channels, k taps.
"""
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def as_time(rows):
    """n c -> 1 c n: the rows as one item of n positions for a Conv1d (a view, channels-last, its batch stride
    n * c as in a batch of such items)."""
    return rearrange(rows, "(b n) c -> b c n", b=1)


def as_rows(x):
    """1 h n -> n h: a channels-last Conv1d output as rows (a view)."""
    return rearrange(x, "1 h n -> n h")


def is_channels_last(x):
    """Whether a (b, c, t) tensor's channels are its fastest-varying dimension, as a view of (b t c) rows is."""
    b, c, t = x.shape
    return c > 1 and x.stride(1) == 1 and x.stride(2) == c and (b == 1 or x.stride(0) == t * c)


class ChannelsLastConv1d(nn.Conv1d):
    """An nn.Conv1d (same parameters, state dict and hooks) that convolves channels-last input without copying
    it: as a 2-d convolution of height 1 in the NHWC layout, output channels-last too. Other input runs the
    plain Conv1d."""

    def _conv_forward(self, x, weight, bias):
        if self.padding_mode != "zeros" or isinstance(self.padding, str) or not is_channels_last(x):
            return super()._conv_forward(x, weight, bias)
        b, c, t = x.shape
        if x.stride(0) == t * c:  # b c 1 t, NHWC, a view whose backward is a view (einops would reset the stride)
            x = x.unsqueeze(2)
        else:  # a size-1 batch may carry any batch stride; oneDNN takes NHWC only with this one
            x = x.as_strided((b, c, 1, t), (t * c, 1, t * c, c))  # its backward copies the whole gradient
        out = F.conv2d(x, rearrange(weight, "h c k -> h c 1 k"), bias,
                       (1, self.stride[0]), (0, self.padding[0]), (1, self.dilation[0]), self.groups)
        return rearrange(out, "b h 1 t -> b h t")  # channels-last, as its input
