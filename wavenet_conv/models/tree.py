"""The lecture's model: each block_size window fused pairwise in a tree of FlattenConsecutive(2) levels."""
import torch
import torch.nn.functional as F

from wavenet_conv.data.words import IGNORE_INDEX
from wavenet_conv.models.layers import BatchNorm1d, Embedding, FlattenConsecutive, Linear, Sequential, Tanh


class TreeWaveNet(Sequential):
    """Embedding -> [FlattenConsecutive(2) -> Linear -> BatchNorm1d -> Tanh] x log2(block_size) -> Linear.

    Layers are created in the lecture's order, so after torch.manual_seed(42) the weights are the lecture's.
    """

    def __init__(self, config):
        layers = [Embedding(config.vocab_size, config.n_embd)]
        fan_in = config.n_embd
        for _ in range(config.n_levels):
            layers += [FlattenConsecutive(2), Linear(2 * fan_in, config.n_hidden, bias=False),
                       BatchNorm1d(config.n_hidden), Tanh()]
            fan_in = config.n_hidden
        layers.append(Linear(config.n_hidden, config.vocab_size))
        super().__init__(layers)
        self.config = config
        with torch.no_grad():
            self.layers[-1].weight *= 0.1  # the lecture's less confident start

    @property
    def embedding(self):
        return self.layers[0]

    @property
    def levels(self):
        """(Linear, BatchNorm1d) of each level, bottom first."""
        return [(self.layers[i + 1], self.layers[i + 2]) for i in range(1, len(self.layers) - 1, 4)]

    @property
    def head(self):
        return self.layers[-1]

    def forward(self, idx, targets=None):
        logits = super().forward(idx)  # b t -> b v
        loss = None if targets is None else F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)
        return logits, loss
