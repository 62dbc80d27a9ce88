"""The lecture's WaveNet as a dilated causal Conv1d stack, slid over whole items: every position at once.

    embedding -> [Conv1d(kernel 2, dilation 2**i) -> BatchNorm1d -> tanh] for i in 0 .. n_levels - 1 -> Linear

Level i fuses the node ending at t with the node ending at t - 2**i: exactly the tree's pair. So the tree over
the window ending at t is computed for every t at once, and each node that neighbouring windows share is
computed once instead of once per window.

The left context is the all-dot node. An item's input is `[., w1 .. wL]`, so its position 0 holds '.', and at
every level position 0 is the node over an all-'.' window. The tree's windows that reach back before the item
hold only '.' too, so what each level sees before an item is that node (`ConvLevel.left_context`), not zeros:
zeros, what `Conv1d(padding=...)` reads, are the classic bug. Time stays L + 1 at every level and block size.

Batch norm in training counts each valid position once: every real node of every item and the all-dot node
once per item (its position 0 predicts the item's first character); right padding stays out of the statistics
and the loss. The variance is the unbiased one, as in the lecture's BatchNorm1d. In eval mode the running
statistics apply, and the conv equals the tree exactly (tests/test_equivalence.py, docs/equivalence.md).

How a batch runs fast (packing.py): its items back to back in one packed row of n positions, level 0 as a
table of token pairs and level 1's taps on that table, each level above's Conv1d over the row with the item
starts fixed exactly. Read
`causal_conv(conv, x, row, left)` as "the Conv1d over each item, with `left` in front of it". The row's
layout (`ItemRow`) comes with the batch, made on the CPU, so the forward never waits for the device.

Shape legend: b batch, t time, n positions of the packed row, c channels, h hidden channels, k taps, v vocab.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from wavenet_conv.models.activations import tanh, tanh_
from wavenet_conv.models.channels_last import ChannelsLastConv1d
from wavenet_conv.models.packing import all_dot_node, causal_conv, first_level, packed_row, position_rows
from wavenet_conv.models.tree import TreeWaveNet


class ConvWaveNet(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.n_embd)
        widths = [config.n_embd] + [config.n_hidden] * config.n_levels
        self.levels = nn.ModuleList(
            ConvLevel(widths[i], config.n_hidden, dilation=2**i) for i in range(config.n_levels)
        )
        self.head = nn.Linear(config.n_hidden, config.vocab_size)  # position-wise output layer

    def forward(self, idx, targets=None, layout=None):
        """idx (b t): items that start with '.', as pad_items makes them; targets (b t), -1 on right padding;
        layout: the batch's `ItemRow.of(idx, targets)` on idx's device, as the batches make it (None: made
        here, which reads the batch's values).

        Logits (b t v) at every position (0 on right padding); logits[:, t] sees only
        idx[:, t - block_size + 1 .. t], with the item's first node standing for the dots before it. The
        batch's valid positions (all of them without targets) run packed in one row, through every level.
        """
        row = packed_row(idx, targets, layout)
        tokens = row.pack(idx)  # n: items back to back, each from its '.'
        first, *above = self.levels
        # the embedding and level 0 at once: level 0 sees a pair of tokens, so it is a table of the v * v pairs
        x = first_level(first, self.embedding, tokens, row, self.config.vocab_size)  # n h, as that table's rows
        for level in above:
            x = level(x, row)  # n c -> n h: Conv1d at dilation 2**i, batch norm, tanh
        packed_logits = self.head(position_rows(x))  # n v
        loss = None
        if targets is not None:
            loss = F.cross_entropy(packed_logits, row.pack(targets))
        return row.unpack(packed_logits), loss

    @classmethod
    def from_tree(cls, tree):
        """The conv form of a TreeWaveNet: same weights and batch-norm state, exactly."""
        conv = cls(tree.config).to(device=tree.head.weight.device, dtype=tree.head.weight.dtype)
        with torch.no_grad():
            conv.embedding.weight.copy_(tree.embedding.weight)
            for level, (linear, bn) in zip(conv.levels, tree.levels):
                # the tree concatenates a pair time-major, earlier first: rows of its weight are (k c)
                level.conv.weight.copy_(rearrange(linear.weight, "(k c) h -> h c k", k=2))
                level.bn.weight.copy_(bn.gamma)
                level.bn.bias.copy_(bn.beta)
                level.bn.running_mean.copy_(bn.running_mean)
                level.bn.running_var.copy_(bn.running_var)
                level.bn.eps, level.bn.momentum = bn.eps, bn.momentum
            conv.head.weight.copy_(rearrange(tree.head.weight, "h v -> v h"))
            conv.head.bias.copy_(tree.head.bias)
        return conv.train(tree.training)

    def to_tree(self):
        """The tree form of this model: the exact inverse of from_tree."""
        tree = TreeWaveNet(self.config).to(device=self.head.weight.device, dtype=self.head.weight.dtype)
        with torch.no_grad():
            tree.embedding.weight.copy_(self.embedding.weight)
            for level, (linear, bn) in zip(self.levels, tree.levels):
                linear.weight.copy_(rearrange(level.conv.weight, "h c k -> (k c) h"))
                bn.gamma.copy_(level.bn.weight)
                bn.beta.copy_(level.bn.bias)
                bn.running_mean.copy_(level.bn.running_mean)
                bn.running_var.copy_(level.bn.running_var)
                bn.eps, bn.momentum = level.bn.eps, level.bn.momentum
            tree.head.weight.copy_(rearrange(self.head.weight, "v h -> h v"))
            tree.head.bias.copy_(self.head.bias)
        return tree.train(self.training)


class ConvLevel(nn.Module):
    """One tree level: a kernel-2 causal convolution at dilation 2**level, batch norm, tanh."""

    def __init__(self, in_channels, hidden, dilation):
        super().__init__()
        # an nn.Conv1d that also convolves channels-last (b, c, t) views without copying them (channels_last.py)
        self.conv = ChannelsLastConv1d(in_channels, hidden, kernel_size=2, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(hidden)

    @property
    def dilation(self):
        return self.conv.dilation[0]

    def forward(self, x, row):
        """n c -> n h over the items of a packed row."""
        return self.activate(causal_conv(self.conv, x, row, self.left_context(x, row)))  # n h

    def left_context(self, x, row):
        """What each item sees before it, c: the all-dot node. (Zeros, what `Conv1d(padding=...)` reads, are the
        classic bug.)"""
        return all_dot_node(x)

    def activate(self, h):
        h = self.batch_norm(h)  # n h
        return tanh(h) if torch.is_grad_enabled() else tanh_(h)  # in inference, in place: h is batch norm's own

    def batch_norm(self, h):
        """n h -> n h: the running statistics in eval mode; in training the batch's, over every position of
        the row (it holds only valid positions).

        The lecture normalizes with the unbiased variance, torch's fused kernel with the biased one (m = var_b):
        (h - mean) / sqrt(var_b * n / (n - 1) + eps) = sqrt((n - 1) / n) * (h - mean) / sqrt(var_b + eps'),
        with eps' = eps * (n - 1) / n. So the kernel runs with that eps and gamma scaled by sqrt((n - 1) / n);
        its running variance is the unbiased one already.
        """
        bn = self.bn
        if not self.training:
            return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
        n = h.shape[0]
        if n < 2:
            raise ValueError("batch norm in training needs at least 2 positions; this batch has 1")
        if torch.compiler.is_compiling():  # the kernel's eps below would fix n in the graph: plain sums instead
            return rows_batch_norm(bn, h)
        shrink = (n - 1) / n
        with torch.no_grad():
            bn.num_batches_tracked += 1
        return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight * shrink**0.5, bn.bias, training=True,
                            momentum=bn.momentum, eps=bn.eps * shrink)


def rows_batch_norm(bn, h):
    """Training-mode batch norm over the rows, n h -> n h, as sums that a compiled graph keeps for any n: the
    lecture's formula with the unbiased variance, its statistics in float32 under bf16 autocast too."""
    h = h.to(torch.promote_types(h.dtype, torch.float32))
    mean, var = h.mean(0), h.var(0)  # h, h
    with torch.no_grad():
        bn.running_mean.lerp_(mean, bn.momentum)
        bn.running_var.lerp_(var, bn.momentum)
        bn.num_batches_tracked += 1
    return (h - mean) * torch.rsqrt(var + bn.eps) * bn.weight + bn.bias
