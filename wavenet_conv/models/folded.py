"""The inference form of a ConvWaveNet: the one place where eval-mode batch norm is folded into the convolutions.

torch's `fuse_conv_bn_weights` turns each level's Conv1d + BatchNorm1d into one Conv1d with a bias:
BN(W x) = (s W) x + (beta - s mean), s = gamma / sqrt(var + eps). Evaluation, sampling (cache.py) and the
benchmark all use this form. It runs the same packed row through the same `causal_conv` as ConvWaveNet.

Its two lowest levels are tables, built once: level 0's node depends on a token pair only, so it is a table of
the v * v pairs (batch norm and tanh included); level 1's pre-activation is its earlier tap on one level-0 node
plus its later tap on another, each a row of that table, so each tap is applied to the table once
(`level1_earlier`, `level1_later`) and level 1 costs two row gathers and a tanh at every position, no matmul.
The levels above are their folded Conv1d modules.

Shape legend: b batch, t time, n positions of the packed row, c channels, h hidden, k taps (0: earlier,
1: later), v vocab.
"""
import copy

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from wavenet_conv.models.activations import tanh, tanh_
from wavenet_conv.models.packing import (all_dot_node, causal_conv, look_up_pairs, pair_index, pair_table,
                                         pair_taps_sum, packed_row)


class FoldedConvWaveNet(nn.Module):
    """A frozen copy of a ConvWaveNet's eval-mode function, batch norm folded; `forward(idx)` -> logits (b t v)."""

    def __init__(self, conv):
        super().__init__()
        self.config = conv.config
        with torch.no_grad():
            self.embedding = copy.deepcopy(conv.embedding).requires_grad_(False)
            self.levels = nn.ModuleList(folded_conv(level) for level in conv.levels)
            self.head = copy.deepcopy(conv.head).requires_grad_(False)
            # level 0 on every token pair, batch norm folded, then tanh: row earlier * v + later
            self.pair_table = tanh(pair_table(self.levels[0], self.embedding))  # (v v) h
            if len(self.levels) > 1:  # each of level 1's taps on every level-0 node; the bias with the later one
                earlier_tap, later_tap = self.levels[1].weight.unbind(2)  # h h, h h
                self.level1_earlier = self.pair_table @ earlier_tap.T  # (v v) h
                self.level1_later = torch.addmm(self.levels[1].bias, self.pair_table, later_tap.T)  # (v v) h

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
    def forward(self, idx, targets=None, layout=None):
        """idx (b t), items starting with '.' as for ConvWaveNet -> logits (b t v), 0 on right padding (targets
        -1), which is never computed. layout: the batch's `ItemRow.of(idx, targets)`, as for ConvWaveNet."""
        row = packed_row(idx, targets, layout)
        pairs = pair_index(row.pack(idx), row, self.config.vocab_size)  # n: each position's level-0 pair
        if len(self.levels) == 1:
            x = look_up_pairs(self.pair_table, pairs)  # n h
        else:
            # level 1's earlier child ends 2 back; before the item it is the all-dot node, pair ('.', '.')
            x = tanh_(pair_taps_sum(self.level1_earlier, self.level1_later, pairs, row, 2))  # n h
        for conv in self.levels[2:]:
            x = tanh_(causal_conv(conv, x, row, all_dot_node(x)))  # n h
        return row.unpack(self.head(x))  # b t v


def folded_conv(level):
    """A ConvLevel's Conv1d with its eval-mode batch norm folded in (weight and bias), frozen."""
    conv, bn = copy.deepcopy(level.conv), level.bn
    conv.weight, conv.bias = fuse_conv_bn_weights(
        conv.weight, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return conv.requires_grad_(False)
