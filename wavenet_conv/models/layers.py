"""The lecture's layers (makemore part 5), with its semantics and names, as torch modules.

As modules they move between devices and live in a state_dict; the arithmetic is the lecture's own.
Shape legend: b batch, t time, c channels, k consecutive elements fused into one.
"""
import torch
from einops import rearrange
from torch import nn


class Embedding(nn.Module):
    def __init__(self, num_embeddings, embedding_dim):
        super().__init__()
        self.weight = nn.Parameter(torch.randn((num_embeddings, embedding_dim)))

    def forward(self, idx):
        return self.weight[idx]  # b t -> b t c


class FlattenConsecutive(nn.Module):
    """Concatenate each n consecutive time steps, earlier first: the `(k c)` order the conv must keep."""

    def __init__(self, n):
        super().__init__()
        self.n = n

    def forward(self, x):
        x = rearrange(x, "b (t k) c -> b t (k c)", k=self.n)  # b t c -> b t/n (n c)
        if x.shape[1] == 1:
            x = rearrange(x, "b 1 c -> b c")  # the lecture squeezes the last time step away
        return x


class Linear(nn.Module):
    """`x @ weight (+ bias)` with weight of shape (fan_in, fan_out) and the lecture's init randn / sqrt(fan_in)."""

    def __init__(self, fan_in, fan_out, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn((fan_in, fan_out)) / fan_in**0.5)
        self.bias = nn.Parameter(torch.zeros(fan_out)) if bias else None

    def forward(self, x):
        out = x @ self.weight
        return out if self.bias is None else out + self.bias


class BatchNorm1d(nn.Module):
    """The lecture's batch norm: statistics over every dimension but the last, unbiased variance."""

    def __init__(self, dim, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.gamma = nn.Parameter(torch.ones(dim))
        self.beta = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x):
        if self.training:
            dims = tuple(range(x.ndim - 1))  # (0,) for b c, (0, 1) for b t c: the lecture's 3-D fix
            xmean = x.mean(dims)
            xvar = x.var(dims)  # unbiased, as in the lecture
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * xmean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * xvar)
        else:
            xmean, xvar = self.running_mean, self.running_var
        xhat = (x - xmean) / torch.sqrt(xvar + self.eps)
        return self.gamma * xhat + self.beta


class Tanh(nn.Module):
    def forward(self, x):
        return torch.tanh(x)


class Sequential(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x
