"""The same model as a dilated causal Conv1d stack, slid over whole items: every position at once.

Level i is a kernel-2 `nn.Conv1d` at dilation 2**i: it fuses the node ending at t with the node ending at
t - 2**i, exactly the tree's pair, so the tree over the window ending at t is computed for every t while each
shared node is computed once.

The start of an item, exactly and without padding tokens: an item's input is `[., w1 .. wL]`, so position 0
holds '.' and at every level position 0 is the node over an all-'.' window, the same node for every item. The
tree's windows that reach back before the item hold only '.' too, so the left context of every level is that
node: each level's input is left-padded with `dilation` copies of its own position 0 (`causal_pad`), and the
time length stays L + 1 at every level. (Zero-padding, what `Conv1d(padding=...)` does, is the classic bug.)

Batch norm in training mode counts each node at a valid position (target not -1) once: every real node of
every item, and the all-dot node once per item (its position 0, which predicts the item's first character).
Right padding stays out of the statistics and the loss. The variance is the unbiased one, as in the lecture's
BatchNorm1d. In eval mode the running statistics apply, and the conv equals the tree exactly.

Training (targets given, training mode) packs the batch: the valid positions of every item, back to back in
one row, so that no right padding is computed at all and batch norm's statistics are plain sums along time.
Each level still runs its Conv1d once, over the whole row. Where an item's earlier tap would reach into the
item before it (its first `dilation` positions), the conv's output is corrected to the all-dot node's term:
the earlier tap's weight times (all-dot node - what the conv read). The first item of the row is exact
through `causal_pad` already. The result is the padded batch's function, logits, loss and gradients alike.

Level 0 is a plain convolution too: its token-pair form (the conv run once on each of the v * v pairs, then
looked up) trained no faster here (83.6 against 85.4 ms a step on 2 CPU threads), so it lives only in the
inference form, FoldedConvWaveNet, where it also absorbs batch norm and tanh.

Shape legend: b batch, t time, c channels, h hidden channels, k taps (0: earlier, 1: later), v vocab.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from wavenet_conv.activations import tanh
from wavenet_conv.data import IGNORE_INDEX


def causal_pad(x, dilation):
    """`dilation` copies of position 0 (the all-dot node) in front of each item: b c t -> b c (dilation + t)."""
    return torch.cat([x[:, :, :1].expand(-1, -1, dilation), x], dim=2)


def item_offsets(lengths):
    """Each position's offset within its item, for items of these lengths packed back to back: b -> n."""
    starts = torch.cumsum(lengths, 0) - lengths  # b: where each item starts in the row
    return torch.arange(int(lengths.sum()), device=lengths.device) - torch.repeat_interleave(starts, lengths)


def crossing_positions(item_offset, dilation):
    """The positions of a packed row whose earlier tap at this dilation reads the item before (m); the first
    `dilation` positions read `causal_pad`, the all-dot node, already."""
    position = torch.arange(len(item_offset), device=item_offset.device)
    return torch.nonzero((item_offset < dilation) & (position >= dilation)).squeeze(1)


class ConvLevel(nn.Module):
    """One tree level: a kernel-2 causal convolution at dilation 2**level, batch norm, tanh."""

    def __init__(self, in_channels, hidden, dilation):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, hidden, kernel_size=2, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(hidden)

    @property
    def dilation(self):
        return self.conv.dilation[0]

    def forward(self, x, item_offset=None):
        """b c t -> b h t; item_offset (t), for a packed row (b = 1): each position's offset within its item."""
        h = self.conv(self.left_pad(x))  # b c (d + t) -> b h t
        if item_offset is not None:
            h = self.fix_item_starts(h, x, item_offset)
        return tanh(self.batch_norm(h))

    def left_pad(self, x):
        return causal_pad(x, self.dilation)  # b c t -> b c (d + t)

    def fix_item_starts(self, h, x, item_offset):
        """In a packed row, an item's first `dilation` positions read their earlier tap from the item before;
        replace that term by the all-dot node's (position 0 of the row, an item's first position)."""
        crossing = crossing_positions(item_offset, self.dilation)  # m
        earlier_tap = self.conv.weight[:, :, 0]  # h c
        read = x[0].index_select(1, crossing - self.dilation)  # c m (its backward is an index_add, no sort)
        correction = earlier_tap @ (x[0, :, :1] - read)  # h m
        return h.index_add(2, crossing, correction[None])  # 1 h t

    def batch_norm(self, h):
        """b h t -> b h t: the running statistics in eval mode; in training the batch's, over every position of
        h (the packed row holds only valid positions).

        The lecture normalizes with the unbiased variance, torch's fused kernel with the biased one (m = var_b):
        (h - mean) / sqrt(var_b * n / (n - 1) + eps) = sqrt((n - 1) / n) * (h - mean) / sqrt(var_b + eps'),
        with eps' = eps * (n - 1) / n. So the kernel runs with that eps and gamma scaled by sqrt((n - 1) / n);
        its running variance is the unbiased one already.
        """
        bn = self.bn
        if not self.training:
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)  # h
            return torch.addcmul((bn.bias - bn.running_mean * scale)[:, None], h, scale[:, None])  # b h t
        n = h.shape[0] * h.shape[2]
        if n < 2:
            raise ValueError("batch norm in training needs at least 2 positions; this batch has 1")
        shrink = (n - 1) / n
        with torch.no_grad():
            bn.num_batches_tracked += 1
        return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight * shrink**0.5, bn.bias, training=True,
                            momentum=bn.momentum, eps=bn.eps * shrink)


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

    def forward(self, idx, targets=None):
        """idx (b t): items that start with '.', as pad_items makes them; targets (b t), -1 on right padding.

        Logits (b t v) at every position; logits[:, t] sees only idx[:, t - block_size + 1 .. t], with '.'
        before the item.
        """
        if self.training and targets is not None:
            return self.packed_forward(idx, targets)
        x = rearrange(self.embedding(idx), "b t c -> b c t")
        for level in self.levels:
            x = level(x)  # b c t -> b h t
        logits = self.head(rearrange(x, "b h t -> b t h"))  # b t v
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                rearrange(logits, "b t v -> (b t) v"), rearrange(targets, "b t -> (b t)"), ignore_index=IGNORE_INDEX
            )
        return logits, loss

    def packed_forward(self, idx, targets):
        """Training: the batch's valid positions packed into one row (n of them), through the same levels.

        Returns the logits in the batch's (b t v) layout (0 on right padding) and the mean loss.
        """
        valid = targets != IGNORE_INDEX  # b t
        lengths = valid.sum(1)  # b: items + 1, the end marker
        if not torch.equal(valid, torch.arange(idx.shape[1], device=idx.device) < lengths[:, None]):
            raise ValueError("targets must be -1 only on right padding, after each item's end marker")
        item_offset = item_offsets(lengths)  # n
        x = rearrange(self.embedding(idx[valid]), "n c -> 1 c n")  # items back to back, each from its '.'
        for level in self.levels:
            x = level(x, item_offset=item_offset)  # 1 c n -> 1 h n
        packed_logits = self.head(rearrange(x, "1 h n -> n h"))  # n v
        loss = F.cross_entropy(packed_logits, targets[valid])
        logits = packed_logits.new_zeros(*idx.shape, packed_logits.shape[-1])  # b t v
        logits[valid] = packed_logits
        return logits, loss

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
        from wavenet_conv.tree import TreeWaveNet

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

