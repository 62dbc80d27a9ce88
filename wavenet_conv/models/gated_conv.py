"""WaveNet's blocks as a dilated causal Conv1d stack over whole items: GatedTreeWaveNet at every position at once.

Level i is a kernel-2 nn.Conv1d at dilation 2**i (filter and gate in one conv of 2h output channels, split in
half), then 1×1 nn.Conv1d residual and skip outputs: the formulas of gated_tree.py, with node(t) fusing
node(t - 2**i) and node(t) of the level below, the residual added to node(t) (the later child).

Start of an item, exactly: position 0 of every item is the '.' token, so at every level position 0 is the node
over an all-'.' window, the same for every item, and every window that reaches before the start holds only '.'
there. Each level's left context is therefore `dilation` copies of its own position 0 (replicate padding, not
zeros), the conv runs with padding 0, and time stays item length + 1 at every level. Right padding cannot reach
a valid position (the stack is causal), and there is no batch norm, so it changes nothing in training either.

Shape legend: b batch, c residual/skip channels, h gate channels, t time, k taps (0 earlier, 1 later), v vocab.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from wavenet_conv.data.words import IGNORE_INDEX


def causal_pad(x, dilation):
    """`dilation` copies of position 0 (the all-dot node) in front of each item of a padded batch (the gated
    arch's layout): b c t -> b c (dilation + t)."""
    return torch.cat([x[:, :, :1].expand(-1, -1, dilation), x], dim=2)


class GatedConvLevel(nn.Module):
    """One level: gated kernel-2 conv at dilation 2**level, 1×1 residual (absent at the top), 1×1 skip."""

    def __init__(self, channels, hidden, dilation, dropout, residual=True):
        super().__init__()
        self.fuse = nn.Conv1d(channels, 2 * hidden, kernel_size=2, dilation=dilation)  # filter, then gate
        self.residual = nn.Conv1d(hidden, channels, kernel_size=1) if residual else None
        self.skip = nn.Conv1d(hidden, channels, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    @property
    def dilation(self):
        return self.fuse.dilation[0]

    def forward(self, x):
        z = self.fuse(causal_pad(x, self.dilation))  # b c t -> b 2h t
        f, g = z.chunk(2, dim=1)  # filter, gate: b h t each
        gated = self.dropout(torch.tanh(f) * torch.sigmoid(g))  # b h t
        nodes = None if self.residual is None else x + self.residual(gated)  # b c t: residual on the later child
        return nodes, self.skip(gated)  # b c t, b c t


class GatedConvWaveNet(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        r, h = config.n_embd, config.n_hidden
        self.embedding = nn.Embedding(config.vocab_size, r)
        self.levels = nn.ModuleList(
            GatedConvLevel(r, h, 2**i, config.dropout, residual=i < config.n_levels - 1)
            for i in range(config.n_levels)
        )
        self.head_hidden = nn.Linear(r, r)  # position-wise, as a 1×1 conv
        self.head = nn.Linear(r, config.vocab_size)

    def forward(self, idx, targets=None, layout=None):
        """idx (b t) = [0, w1..wL] right-padded; logits[:, t] see only idx[:, t - block_size + 1 .. t].

        layout (an `ItemRow`, as the batches hand every conv) is not read: this stack runs over the padded
        batch, where no op waits for the device (padding's loss is dropped by ignore_index, on the device)."""
        x = rearrange(self.embedding(idx), "b t c -> b c t")
        skips = 0
        for level in self.levels:
            x, skip = level(x)  # b c t, b c t
            skips = skips + skip
        hidden = F.relu(self.head_hidden(F.relu(rearrange(skips, "b c t -> b t c"))))  # b t c
        logits = self.head(hidden)  # b t v
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(rearrange(logits, "b t v -> b v t"), targets, ignore_index=IGNORE_INDEX)

    @classmethod
    def from_tree(cls, tree):
        """The conv form of a GatedTreeWaveNet, the same weights exactly."""
        conv = cls(tree.config).to(device=tree.head.weight.device, dtype=tree.head.weight.dtype)
        copy_weights(tree, conv, to_conv=True)
        return conv.train(tree.training)

    def to_tree(self):
        """The tree form of this model: the exact inverse of from_tree."""
        from wavenet_conv.models.gated_tree import GatedTreeWaveNet

        tree = GatedTreeWaveNet(self.config).to(device=self.head.weight.device, dtype=self.head.weight.dtype)
        copy_weights(tree, self, to_conv=False)
        return tree.train(self.training)


def weight_pairs(tree, conv):
    """(tree tensor, conv tensor, einops pattern from the tree's layout to the conv's) for every parameter."""
    pairs = [(tree.embedding.weight, conv.embedding.weight, "v c -> v c")]
    for tree_level, conv_level in zip(tree.levels, conv.levels, strict=True):
        # the tree concatenates a pair time-major, earlier first: rows of its fuse weight are (k c)
        pairs.append((tree_level.fuse.weight, conv_level.fuse.weight, "(k c) h -> h c k"))
        pairs.append((tree_level.fuse.bias, conv_level.fuse.bias, "h -> h"))
        for name in ("residual", "skip"):
            tree_linear, conv_1x1 = getattr(tree_level, name), getattr(conv_level, name)
            if tree_linear is not None:
                pairs.append((tree_linear.weight, conv_1x1.weight, "h c -> c h 1"))
                pairs.append((tree_linear.bias, conv_1x1.bias, "c -> c"))
    for name in ("head_hidden", "head"):
        tree_linear, conv_linear = getattr(tree, name), getattr(conv, name)
        pairs.append((tree_linear.weight, conv_linear.weight, "i o -> o i"))
        pairs.append((tree_linear.bias, conv_linear.bias, "o -> o"))
    return pairs


def tree_to_conv_layout(tree_tensor, pattern):
    """A tree parameter (or its gradient) in the layout of its conv parameter."""
    return rearrange(tree_tensor, pattern, **({"k": 2} if "k" in pattern else {}))


def copy_weights(tree, conv, to_conv):
    with torch.no_grad():
        for tree_tensor, conv_tensor, pattern in weight_pairs(tree, conv):
            if to_conv:
                conv_tensor.copy_(tree_to_conv_layout(tree_tensor, pattern))
            else:
                tree_layout, conv_layout = pattern.split(" -> ")
                tree_tensor.copy_(rearrange(conv_tensor, f"{conv_layout} -> {tree_layout}"))
