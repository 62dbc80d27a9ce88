"""The inference form of a ConvWaveNet: the one place where eval-mode batch norm is folded into the convolutions.

torch's `fuse_conv_bn_weights` turns each level's Conv1d + BatchNorm1d into one Conv1d with a bias:
BN(W x) = (s W) x + (beta - s mean), s = gamma / sqrt(var + eps). Evaluation, sampling (cache.py) and the
benchmark all use this form. Two exact shortcuts make it cheaper than the conv it copies:
- level 0 sees a pair of tokens only, so its output for every one of the v * v pairs is a table, computed once;
- a level whose dilation reaches past the end of every item reads only the all-dot node with its earlier tap,
  so it is a 1x1 convolution (the later tap) plus a constant: half the work.

Shape legend: b batch, t time, c channels, h hidden, k taps (0: earlier, 1: later), v vocab.
"""
import copy

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from wavenet_conv.activations import tanh
from wavenet_conv.conv import causal_pad


class FoldedConvWaveNet(nn.Module):
    """A frozen copy of a ConvWaveNet's eval-mode function, batch norm folded; `forward(idx)` -> logits (b t v)."""

    def __init__(self, conv):
        super().__init__()
        self.config = conv.config
        with torch.no_grad():
            self.embedding = copy.deepcopy(conv.embedding).requires_grad_(False)
            self.levels = nn.ModuleList(folded_conv(level) for level in conv.levels)
            self.head = copy.deepcopy(conv.head).requires_grad_(False)
            vocab = torch.arange(self.config.vocab_size, device=self.head.weight.device)
            pairs = torch.cartesian_prod(vocab, vocab)  # (v v) k: earlier, later token
            # level 0 on every token pair, by its own convolution: row earlier * v + later
            self.pair_table = tanh(self.levels[0](rearrange(self.embedding(pairs), "p k c -> p c k")))[..., 0]

    @property
    def dilations(self):
        return [level.dilation[0] for level in self.levels]

    @property
    def weights(self):
        """Each level's folded weight as one matrix, h (k c), tap 0 the earlier: what the sampling cache steps."""
        return [rearrange(level.weight, "h c k -> h (k c)") for level in self.levels]

    @property
    def biases(self):
        return [level.bias for level in self.levels]

    def level(self, i, earlier, later):
        """One node of level i from its two children, channels last: b ... c, b ... c -> b ... h."""
        return tanh(F.linear(torch.cat([earlier, later], dim=-1), self.weights[i], self.biases[i]))

    def logits_from_top(self, top):
        return self.head(top)  # b ... h -> b ... v

    @torch.no_grad()
    def forward(self, idx):
        """idx (b t), items starting with '.' as for ConvWaveNet -> logits (b t v)."""
        earlier = torch.cat([idx[:, :1], idx[:, :-1]], dim=1)  # b t: position 0's earlier token is '.' too
        x = self.pair_table[earlier * self.config.vocab_size + idx]  # b t h
        x = rearrange(x, "b t h -> b h t")
        for conv in self.levels[1:]:
            d = conv.dilation[0]
            if d >= x.shape[2]:
                # every earlier tap falls before the item: the all-dot node (position 0), a constant term
                constant = torch.mv(conv.weight[:, :, 0], x[0, :, 0]) + conv.bias  # h
                x = tanh(F.conv1d(x, conv.weight[:, :, 1:], constant))  # b h t
            else:
                x = tanh(conv(causal_pad(x, d)))  # b h t
        return self.head(rearrange(x, "b h t -> b t h"))  # b t v


def folded_conv(level):
    """A ConvLevel's Conv1d with its eval-mode batch norm folded in (weight and bias), frozen."""
    conv, bn = copy.deepcopy(level.conv), level.bn
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return conv.requires_grad_(False)
