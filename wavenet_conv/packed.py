"""The conv over packed items: no padding anywhere, the all-dot nodes computed once, the embedding folded in.

ConvWaveNet pads each item with block_size - 1 dots and evaluates every level at every padded position;
length-bucketed batches still pad on the right. But a node whose window holds only dots is the same node
for every item, so here each level is a tensor of rows: row 0 is that all-dot node, rows 1.. are the nodes
ending at each character of each item, the items one after another. The kernel-2 convolution at dilation d
reads, for the row of character t, the row of character t - d of the same item, or row 0 when t - d falls
before the item. Same function as ConvWaveNet, in training mode (the all-dot row weighs in the batch norm
statistics as often as ConvWaveNet counts it) and in eval mode, where batch norm is folded into the weights
and level 0, which sees only two tokens, becomes a lookup table over the v * v token pairs.

Shape legend: m items, n characters, r rows (1 + n), p predictions (m + n), c channels, h hidden, v vocab.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from wavenet_conv.data import IGNORE_INDEX


@dataclass
class PackedItems:
    """A batch of items laid out as rows; built once, outside any timed region.

    Rows follow the items one after another, or, for items of one length, time-major (all first characters,
    then all second ones...): then the row of character t - d is always `d * rows_per_step` rows earlier, and
    the dilated convolution is two matmuls over shifted slices instead of a gather.
    """

    tokens: torch.Tensor  # r: the character of each row; row 0 (all dots) holds '.'
    previous: torch.Tensor  # r: the token before it ('.' at an item's start)
    earlier: list  # per level 1.. (dilation 2**level): r, the row of character t - dilation, or 0
    window_rows: torch.Tensor  # p: the row whose top node predicts each target, in build_windows order
    n_items: int
    block_size: int
    rows_per_step: int = None  # time-major layout: rows per time step (the number of items); else None

    @classmethod
    def from_items(cls, items, block_size, time_major=False):
        """items: token lists [w1 .. wL] (encode_items); predictions follow build_windows' order."""
        lengths = torch.tensor([len(it) for it in items], dtype=torch.long)  # m
        item = torch.repeat_interleave(torch.arange(len(items)), lengths)  # n, items one after another
        starts = torch.cumsum(lengths, 0) - lengths  # m
        t = torch.arange(len(item)) - starts[item] + 1  # n: 1-based position in its item
        if time_major:
            if len(set(lengths.tolist())) != 1:
                raise ValueError("a time-major layout needs items of one length")
            row = 1 + (t - 1) * len(items) + item  # n
        else:
            row = torch.arange(1, len(item) + 1)  # n: row 0 is the all-dot node
        chars = torch.tensor([tok for it in items for tok in it], dtype=torch.long)  # n
        tokens, previous = torch.zeros(len(item) + 1, dtype=torch.long), torch.zeros(len(item) + 1, dtype=torch.long)
        tokens[row] = chars
        previous[row] = torch.where(t > 1, F.pad(chars[:-1], (1, 0)), 0)
        earlier = []
        for level in range(1, block_size.bit_length() - 1):
            d = 2**level
            earlier.append(torch.zeros(len(item) + 1, dtype=torch.long))
            earlier[-1][row] = torch.where(t > d, F.pad(row, (d, 0))[: len(row)], 0)  # character t - d, same item
        # each item predicts its first character from the all-dot window (row 0), then one per character
        window_rows = torch.zeros(len(item) + len(items), dtype=torch.long)  # p
        window_rows[torch.arange(len(item)) + item + 1] = row
        return cls(tokens, previous, earlier, window_rows, len(items), block_size,
                   len(items) if time_major else None)

    @property
    def n_predictions(self):
        return len(self.window_rows)

    def to(self, device):
        move = lambda x: x.to(device)  # noqa: E731
        return PackedItems(move(self.tokens), move(self.previous), [move(e) for e in self.earlier],
                           move(self.window_rows), self.n_items, self.block_size, self.rows_per_step)


def packed_batch(items, block_size, time_major=False):
    """(PackedItems, targets p): each item's characters, then '.', in build_windows order (that of window_rows)."""
    targets = torch.tensor([token for item in items for token in item + [0]], dtype=torch.long)
    return PackedItems.from_items(items, block_size, time_major), targets


class PackedConvWaveNet(nn.Module):
    """A ConvWaveNet's function over PackedItems; shares (and trains) that ConvWaveNet's parameters.

    Each level keeps u = (1 + tanh z) / 2 = sigmoid(2 z) instead of tanh z: the affine map between the two
    folds into the next level's weights and into the head, and sigmoid is the cheaper kernel.
    """

    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.config = conv.config
        self.train(conv.training)
        self._eval_cache = (None, None)

    def forward(self, packed, targets=None):
        """Logits per row (r v; row 0 serves every item's first prediction); targets p in build_windows order."""
        if self.training:
            u = self.top_training(packed)  # r h
            head = self.conv.head
            head_weight, head_bias = self.sigmoid_space_head(head.weight, head.bias)
        else:
            weights = self.eval_weights()
            u = self.top_eval(packed, weights)
            head_weight, head_bias = weights["head"]
        logits = F.linear(u, head_weight, head_bias)  # r v
        loss = None
        if targets is not None:
            per_prediction = logits.index_select(0, packed.window_rows)  # p v
            loss = F.cross_entropy(per_prediction, targets, ignore_index=IGNORE_INDEX)
        return logits, loss

    @staticmethod
    def sigmoid_space_head(weight, bias):
        """The head's weight and bias on u: W tanh z + b = 2 W u + (b - W 1)."""
        return 2 * weight, bias - weight.sum(1)

    def dot_rows(self, packed, level):
        """How often ConvWaveNet counts the all-dot node of `level` in its statistics: per item, the positions
        from the first full window up to the item's leading '.'."""
        return packed.n_items * (self.config.block_size - 2 ** (level + 1) + 1)

    def weight(self, level):
        return rearrange(self.conv.levels[level].conv.weight, "h c k -> h (k c)")  # tap 0 the earlier

    @staticmethod
    def dilated(u, packed, level, weight, bias=None):
        """z = W [u(t - 2**level); u(t)] + bias for every row: r c -> r h; weight h (k c), tap 0 the earlier."""
        if packed.rows_per_step is None:
            return F.linear(torch.cat([u.index_select(0, packed.earlier[level - 1]), u], dim=1), weight, bias)
        earlier, later = rearrange(weight, "h (k c) -> k h c", k=2)
        shift = 2**level * packed.rows_per_step
        z = F.linear(u, later, bias)  # r h
        # rows whose earlier node lies before the item (and row 0 itself) pair with the all-dot row
        z[: 1 + shift] += F.linear(u[0], earlier)
        if shift < len(u) - 1:
            z[1 + shift :].addmm_(u[1 : len(u) - shift], earlier.T)  # time-major: t - d is `shift` rows back
        return z

    def top_training(self, packed):
        embedding = self.conv.embedding.weight  # v c
        earliest, latest = rearrange(self.weight(0), "h (k c) -> k h c", k=2)
        # embedding then a linear map is one embedding per tap: v x h tables instead of an (n, 2c) x (2c, h) matmul
        z = F.embedding(packed.previous, embedding @ earliest.T) + F.embedding(packed.tokens, embedding @ latest.T)
        u = self.sigmoid_of_batch_norm(z, 0, self.dot_rows(packed, 0), 0)  # r h
        for level in range(1, len(self.conv.levels)):
            weight = self.weight(level)  # h (k c)
            # W tanh = W (2 u - 1) = 2 W u - W 1: the constant leaves the batch statistics but not the running mean
            z = self.dilated(u, packed, level, 2 * weight)  # r h
            u = self.sigmoid_of_batch_norm(z, level, self.dot_rows(packed, level), -weight.detach().sum(1))
        return u

    def sigmoid_of_batch_norm(self, z, level, dot_rows, mean_offset):
        """sigmoid(2 BN(z)) with ConvWaveNet's training statistics: row 0 weighs `dot_rows`, every other row
        once, unbiased variance; z + mean_offset is the layer's real input, for the running mean."""
        bn = self.conv.levels[level].bn
        weights = torch.ones(len(z), dtype=z.dtype, device=z.device)  # r
        weights[0] = dot_rows
        count = dot_rows + len(z) - 1
        mean = weights @ z / count  # h
        centered = z - mean  # r h
        var = weights @ (centered * centered) / (count - 1)  # h
        with torch.no_grad():
            bn.running_mean.mul_(1 - bn.momentum).add_(bn.momentum * (mean + mean_offset))
            bn.running_var.mul_(1 - bn.momentum).add_(bn.momentum * var)
            bn.num_batches_tracked += 1
        return torch.addcmul(2 * bn.bias, centered, 2 * bn.weight * torch.rsqrt(var + bn.eps)).sigmoid_()

    def eval_weights(self):
        """Eval-mode batch norm folded into each level, in sigmoid space: level 0 as a (v v) x h table of u for
        every token pair, level i as (weight h (k c), bias h) with u_i = sigmoid(weight u_pair + bias), and the
        head. Computed once per state of the parameters when no gradient is wanted."""
        if torch.is_grad_enabled():
            return self.fold()
        tensors = list(self.conv.parameters()) + list(self.conv.buffers())
        key = tuple((t.data_ptr(), t._version) for t in tensors)  # any in-place change bumps a version
        if self._eval_cache[0] != key:
            self._eval_cache = (key, self.fold())
        return self._eval_cache[1]

    def fold(self):
        folded = []
        for i, level in enumerate(self.conv.levels):
            bn = level.bn
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # h
            folded.append((self.weight(i) * scale[:, None], bn.bias - scale * bn.running_mean))
        (weight, bias), embedding = folded[0], self.conv.embedding.weight  # v c
        earliest, latest = rearrange(weight, "h (k c) -> k h c", k=2)
        # level 0 sees two tokens only: its output for every token pair is one table
        z = (embedding @ earliest.T)[:, None] + (embedding @ latest.T)[None] + bias  # v v h
        return {
            "table": torch.sigmoid(2 * rearrange(z, "a b h -> (a b) h")),  # (v v) h
            # sigmoid(2 z) with z = W (2 u - 1) + b
            "levels": [(4 * weight, 2 * (bias - weight.sum(1))) for weight, bias in folded[1:]],
            "head": self.sigmoid_space_head(self.conv.head.weight, self.conv.head.bias),
        }

    def top_eval(self, packed, weights):
        pairs = packed.previous * self.config.vocab_size + packed.tokens  # r
        u = weights["table"].index_select(0, pairs)  # r h
        for level, (weight, bias) in enumerate(weights["levels"], start=1):
            u = self.dilated(u, packed, level, weight, bias).sigmoid_()  # r h
        return u
