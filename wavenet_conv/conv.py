"""The same model as a dilated causal Conv1d stack, slid over whole items: every position at once.

Level i fuses the node ending at t with the node ending at t - 2**i, exactly the tree's pair, so the
tree over the window ending at t is computed for every t while each shared node is computed once.

Shape legend: b batch, t time, c channels, h hidden channels, k taps (0: earlier, 1: later), v vocab.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from wavenet_conv.data import IGNORE_INDEX


class ConvLevel(nn.Module):
    """One tree level: a kernel-2 causal convolution at dilation 2**level, batch norm, tanh."""

    def __init__(self, in_channels, hidden, dilation):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, hidden, kernel_size=2, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm1d(hidden)

    @property
    def dilation(self):
        return self.conv.dilation[0]

    def forward(self, x, valid=None):
        # time-major throughout: the kernel-2 convolution is one matmul over the concatenated taps
        d = self.dilation
        weight = rearrange(self.conv.weight, "h c k -> h (k c)")
        h = F.linear(torch.cat([x[:, :-d], x[:, d:]], dim=-1), weight)  # b t c -> b (t - d) h
        return torch.tanh(self.batch_norm(h, None if valid is None else valid[:, d:]))

    def batch_norm(self, h, valid):
        """Training: statistics over the valid (b, t) positions only; eval: running statistics."""
        bn = self.bn
        if self.training:
            rows = h.reshape(-1, h.shape[-1]) if valid is None else h[valid]  # (b t) h, padding left out
            mean, var = rows.mean(0), rows.var(0)  # unbiased, as the lecture's BatchNorm1d
            with torch.no_grad():
                bn.running_mean.mul_(1 - bn.momentum).add_(bn.momentum * mean)
                bn.running_var.mul_(1 - bn.momentum).add_(bn.momentum * var)
                bn.num_batches_tracked += 1
        else:
            mean, var = bn.running_mean, bn.running_var
        return bn.weight * ((h - mean) / torch.sqrt(var + bn.eps)) + bn.bias


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
        """Logits at every position; logits[:, t] sees only idx[:, t - block_size + 1 .. t]."""
        pad = self.config.block_size - 1
        # before the start, the tree's windows hold '.' tokens: pad tokens, not activations
        x = self.embedding(F.pad(idx, (pad, 0), value=0))  # b t -> b (pad + t) c
        valid = None
        if self.training and targets is not None:
            # right padding (target -1) stays out of the batch statistics
            valid = F.pad(targets != IGNORE_INDEX, (pad, 0), value=True)  # b (pad + t)
        for level in self.levels:
            x = level(x, valid)  # each level shortens time by its dilation, pad in all
            if valid is not None:
                valid = valid[:, level.dilation :]
        logits = self.head(x)  # b t v
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                rearrange(logits, "b t v -> (b t) v"), rearrange(targets, "b t -> (b t)"), ignore_index=IGNORE_INDEX
            )
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
