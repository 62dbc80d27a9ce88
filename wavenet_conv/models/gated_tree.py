"""WaveNet's blocks on the lecture's tree (config arch "gated"): explicit block_size windows in, logits out.

The WaveNet paper's residual block (fig. 4) in place of the lecture's Linear -> BatchNorm1d -> Tanh level.
Level i fuses each pair of neighbouring nodes, earlier first, as the lecture does:

    z      = W_i · [earlier ; later] + b_i                  one Linear (2r -> 2h): filter rows, then gate rows
    gated  = tanh(z_filter) ⊙ sigmoid(z_gate)              the gated activation unit, h channels
    node   = later + R_i · gated + c_i                      1×1 residual (h -> r), from the LATER child
    skip_i = S_i · gated(last pair) + e_i                   1×1 skip (h -> r), the pair that ends the window
    logits = O · relu(H · relu(Σ_i skip_i) + a) + o         the head: relu, 1×1, relu, 1×1 (WaveNet's)

The residual comes from the later child, so a level-i node still sees exactly its 2**(i+1) tokens and the top
node exactly the window. The top level has no residual output (nothing reads it). There is no batch norm, so
training mode is the same function as eval mode (dropout 0). Widths: r = n_embd (embedding, residual and skip
channels), h = n_hidden (filter and gate channels each), v = vocab_size, L = log2(block_size) levels; parameters:

    v r + L (4 r h + 2 h) + (L - 1)(h r + r) + L (h r + r) + (r r + r) + (r v + v)

Shape legend: b batch, t time (nodes of a level), k pair (0 earlier, 1 later), c channels, h gate channels, v vocab.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from wavenet_conv.data.words import IGNORE_INDEX
from wavenet_conv.models.layers import Embedding, Linear


class GatedTreeLevel(nn.Module):
    """One level of the tree: fuse pairs of nodes through the gated unit; a residual to the next, a skip to the head."""

    def __init__(self, channels, hidden, dropout, residual=True):
        super().__init__()
        self.fuse = Linear(2 * channels, 2 * hidden)  # rows (k c), as FlattenConsecutive(2) concatenates
        self.residual = Linear(hidden, channels) if residual else None
        self.skip = Linear(hidden, channels)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        pairs = rearrange(x, "b (t k) c -> b t k c", k=2)  # b t c -> b t/2 2 c
        z = self.fuse(rearrange(pairs, "b t k c -> b t (k c)"))  # b t/2 2h
        f, g = z.chunk(2, dim=-1)  # filter, gate: b t/2 h each
        gated = self.dropout(torch.tanh(f) * torch.sigmoid(g))  # b t/2 h
        skip = self.skip(gated[:, -1])  # b c: the node that ends where the window ends
        nodes = None if self.residual is None else pairs[:, :, 1] + self.residual(gated)  # b t/2 c
        return nodes, skip


class GatedTreeWaveNet(nn.Module):
    """Embedding -> [GatedTreeLevel] x log2(block_size) -> relu(sum of skips) -> Linear -> relu -> Linear."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        r, h = config.n_embd, config.n_hidden
        self.embedding = Embedding(config.vocab_size, r)
        self.levels = nn.ModuleList(
            GatedTreeLevel(r, h, config.dropout, residual=i < config.n_levels - 1) for i in range(config.n_levels)
        )
        self.head_hidden = Linear(r, r)
        self.head = Linear(r, config.vocab_size)
        with torch.no_grad():
            self.head.weight *= 0.1  # the lecture's less confident start

    def forward(self, idx, targets=None):
        x = self.embedding(idx)  # b t -> b t c, t = block_size
        skips = 0
        for level in self.levels:
            x, skip = level(x)  # b t c -> b t/2 c, b c
            skips = skips + skip
        logits = self.head(F.relu(self.head_hidden(F.relu(skips))))  # b v
        loss = None if targets is None else F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        return logits, loss
