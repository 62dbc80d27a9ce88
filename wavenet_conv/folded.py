"""Inference form of a ConvWaveNet: eval-mode batch norm folded into each convolution's weight and bias.

BN(W x) = gamma * (W x - mean) / sqrt(var + eps) + beta = (s * W) x + (beta - s * mean), s = gamma / sqrt(var + eps),
so each level becomes one matmul plus bias and tanh. Shape legend: b batch, t time, c channels, h hidden, k taps.
"""
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


class FoldedConvWaveNet(nn.Module):
    """A frozen copy of a ConvWaveNet's eval-mode function; `weights[i]` is (h, (k c)), tap 0 the earlier."""

    def __init__(self, conv):
        super().__init__()
        self.config = conv.config
        self.block_size = conv.config.block_size
        self.dilations = [level.dilation for level in conv.levels]
        with torch.no_grad():
            self.embedding = nn.Parameter(conv.embedding.weight.detach().clone(), requires_grad=False)
            weights, biases = [], []
            for level in conv.levels:
                bn = level.bn
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # h
                weights.append(rearrange(level.conv.weight, "h c k -> h (k c)") * scale[:, None])
                biases.append(bn.bias - scale * bn.running_mean)
            self.weights = nn.ParameterList([nn.Parameter(w, requires_grad=False) for w in weights])
            self.biases = nn.ParameterList([nn.Parameter(b, requires_grad=False) for b in biases])
            self.head_weight = nn.Parameter(conv.head.weight.detach().clone(), requires_grad=False)
            self.head_bias = nn.Parameter(conv.head.bias.detach().clone(), requires_grad=False)

    def level(self, i, earlier, later):
        """One node of level i from its two children: b ... c, b ... c -> b ... h."""
        return torch.tanh(F.linear(torch.cat([earlier, later], dim=-1), self.weights[i], self.biases[i]))

    def logits_from_top(self, top):
        return F.linear(top, self.head_weight, self.head_bias)  # b ... h -> b ... v

    @torch.no_grad()
    def forward(self, idx):
        x = self.embedding[F.pad(idx, (self.block_size - 1, 0), value=0)]  # b t -> b (pad + t) c
        for i, d in enumerate(self.dilations):
            x = self.level(i, x[:, :-d], x[:, d:])  # b t c -> b (t - d) h
        return self.logits_from_top(x)  # b t v
