"""Sampling names from a trained model three ways that provably return the same names.

- naive: the lecture's loop, one name at a time, the whole tree re-run on the last block_size tokens per character;
- full: the conv re-run over each name's whole prefix per character, many names at once;
- cached: Fast WaveNet generation (wavenet_conv.cache), one new node per level per character, many names at once;
  the lecture arch only: a gated model samples with `full` by default and refuses `cached` in one line.

An ensemble (ensemble.py) draws from the mixture of its members' distributions: naive and full run its
forward (its members as trees, or as convs), cached steps one cache per member and mixes their probabilities.

All three draw their randomness the same way: one uniform number per (name, position), drawn up front,
turned into a character by inverse-CDF sampling. The same seed therefore gives the same names whichever
method runs; only rounding in the logits can move a draw across a boundary.

Shape legend: b batch (names), t time, v vocab.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F

from wavenet_conv.models.ensemble import EnsembleWaveNet, members_of, mixture_logits, model_type_of
from wavenet_conv.models.folded import FoldedConvWaveNet
from wavenet_conv.models.incremental import IncrementalWaveNet
from wavenet_conv.models.registry import model_classes
from wavenet_conv.utils.errors import UserError

METHODS = ("naive", "full", "cached")
MAX_LEN_BLOCKS = 4  # default max_len: the prefix plus 4 * block_size characters (names.txt: 32, its longest is 15)


class SampleError(UserError, ValueError):
    """Arguments that cannot be sampled with: reported in one line (exit status 2 from the CLI)."""


def next_tokens(logits, uniforms, temperature=1.0, top_k=None):
    """Inverse-CDF sampling: the first token whose cumulative probability exceeds the uniform (b v, b -> b).

    Computed in float64 whatever the model's dtype, so that only the logits' own rounding can differ
    between methods.
    """
    logits = logits.double() if temperature == 1 else logits.double() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # b 1
        logits = logits.masked_fill(logits < kth_largest, -math.inf)
    cdf = torch.cumsum(F.softmax(logits, dim=-1), dim=-1)  # b v
    targets = uniforms.double()[:, None] * cdf[:, -1:]  # b 1: scaled by the total, which rounding keeps near 1
    return torch.searchsorted(cdf, targets, right=True)[:, 0].clamp_(max=cdf.shape[-1] - 1)  # b


def sample(model, vocab, num_samples, *, method=None, generator=None, temperature=1.0, top_k=None,
           prefix="", max_len=None):
    """`num_samples` names from a tree or conv model of either arch, or an ensemble of them, each starting with
    `prefix`.

    method None: cached for the lecture arch, full for the gated arch (which has no cached form); for an
    ensemble, cached when every member is of the lecture arch.

    A name ends at its first '.' (left out of the result) or after `max_len` characters (default: the
    prefix plus 4 * block_size). The uniforms are drawn from `generator` up front, shape [num_samples,
    max_len], so every method returns the same names for the same seed.
    """
    try:
        model_type_of(model)
    except TypeError:
        raise TypeError(f"can sample from a tree or conv WaveNet, not a {type(model).__name__}") from None
    config = members_of(model)[0].config  # an ensemble's members share the vocabulary and block size
    other_archs = sorted({member.config.arch for member in members_of(model)} - {"lecture"})
    if method is None:
        method = "full" if other_archs else "cached"
    if method not in METHODS:
        raise SampleError(f"unknown sampling method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "cached" and other_archs:
        raise SampleError(f"the cached sampler exists for the lecture arch only; sample the {other_archs[0]} "
                          f"arch with method full or naive")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
        raise SampleError(f"the number of samples must be a non-negative integer, got {num_samples!r}")
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise SampleError(f"temperature must be a positive number, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise SampleError(f"top_k must be a positive integer, got {top_k!r}")
    if len(vocab) != config.vocab_size:
        raise SampleError(f"the vocabulary has {len(vocab)} tokens but the model {config.vocab_size}")
    bad = [ch for ch in prefix if ch not in vocab.stoi]
    if bad:
        raise SampleError(f"prefix {prefix!r} has character {bad[0]!r}, which is not in the vocabulary")
    if max_len is None:
        max_len = len(prefix) + MAX_LEN_BLOCKS * config.block_size
    if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len <= len(prefix):
        raise SampleError(f"max_len must be an integer longer than the prefix ({len(prefix)}), got {max_len!r}")

    if num_samples == 0:
        return []
    device = next(model.parameters()).device
    uniforms = torch.rand((num_samples, max_len), generator=generator, dtype=torch.float64,
                          device=generator.device if generator is not None else "cpu").to(device)  # b t
    prefix_tokens = vocab.encode(prefix)
    draw = dict(temperature=temperature, top_k=top_k)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            generate = {"naive": generate_naive, "full": generate_full, "cached": generate_cached}[method]
            tokens = generate(model, prefix_tokens, uniforms, draw)  # b t, 0 after each name's end
    finally:
        model.train(was_training)
    return decode_names(tokens, vocab)


def describe_samples(names, train_words):
    """One line per name, marked as in the training split or new, then how many are new: what the sample
    command prints and a run's samples.txt holds."""
    seen = train_words if hasattr(train_words, "store") else set(train_words)  # a token store answers `in` itself
    lines = [f"{name:<24} {'in train' if name in seen else 'new'}" for name in names]
    in_train = sum(name in seen for name in names)
    share = in_train / len(names) if names else 0.0
    return lines + [f"{in_train} of {len(names)} samples ({share:.1%}) occur in the training data; "
                    f"{len(names) - in_train} are new"]


def decode_names(tokens, vocab):
    """Rows of tokens, each name followed by 0s only, to strings in one vectorised pass (b t -> b names)."""
    tokens = tokens.numpy()
    lengths = (tokens != 0).sum(axis=1)  # b: a name's tokens are all non-zero
    table = np.array(["\n"] + list(vocab.itos[1:]), dtype="<U1")  # a name's '.' becomes the line break after it
    chars = table[np.pad(tokens, ((0, 0), (0, 1)))]  # b (t + 1): room for the break after a name cut at max_len
    keep = np.arange(chars.shape[1]) <= lengths[:, None]  # b (t + 1): each name and one break
    return chars[keep].tobytes().decode("utf-32-le").split("\n")[:-1]


def as_tree(model):
    if isinstance(model, EnsembleWaveNet):
        return EnsembleWaveNet(map(as_tree, model.members)).eval()
    return model if model_type_of(model) == "tree" else model.to_tree().eval()


def as_conv(model):
    if isinstance(model, EnsembleWaveNet):
        return EnsembleWaveNet(map(as_conv, model.members)).eval()
    conv_class = model_classes(model.config.arch)[1]
    return model if model_type_of(model) == "conv" else conv_class.from_tree(model).eval()


def generate_naive(model, prefix_tokens, uniforms, draw):
    """The lecture's loop: one name at a time, the tree over the last block_size tokens per character."""
    tree = as_tree(model)
    block_size = members_of(tree)[0].config.block_size
    num_samples, max_len = uniforms.shape
    out = torch.zeros(num_samples, max_len, dtype=torch.long)
    for n in range(num_samples):
        context = [0] * block_size
        for position in range(max_len):
            if position < len(prefix_tokens):
                ix = prefix_tokens[position]
            else:
                logits, _ = tree(torch.tensor([context], device=uniforms.device))  # 1 v
                ix = next_tokens(logits, uniforms[n, position : position + 1], **draw).item()
            out[n, position] = ix
            if ix == 0:
                break
            context = context[1:] + [ix]
    return out


def generate_full(model, prefix_tokens, uniforms, draw):
    """The conv over every unfinished name's whole history, re-run for each new character."""
    conv = as_conv(model)
    num_samples, max_len = uniforms.shape
    device = uniforms.device
    history = torch.tensor([0] + prefix_tokens, device=device).repeat(num_samples, 1)  # b t
    out = torch.zeros(num_samples, max_len, dtype=torch.long, device=device)
    out[:, : len(prefix_tokens)] = history[:, 1:]
    going = torch.arange(num_samples, device=device)  # b: the names not stopped yet, rows of `out`
    for position in range(len(prefix_tokens), max_len):
        logits, _ = conv(history)  # b t v
        ix = next_tokens(logits[:, -1], uniforms[going, position], **draw)  # b
        out[going, position] = ix
        still = ix != 0
        going, history = going[still], torch.cat([history[still], ix[still, None]], dim=1)
        if len(going) == 0:
            break
    return out.cpu()


def generate_cached(model, prefix_tokens, uniforms, draw):
    """Fast WaveNet generation for all names at once; a stopped name drops out of every later step. An ensemble
    steps one cache per member and draws from the mixture of their probabilities."""
    num_samples, max_len = uniforms.shape
    device = uniforms.device
    out = torch.zeros(num_samples, max_len, dtype=torch.long, device=device)
    caches = [IncrementalWaveNet(FoldedConvWaveNet(member), num_samples) for member in members_of(as_conv(model))]
    if isinstance(model, EnsembleWaveNet):
        def step(tokens, rows=None):
            """b -> b v: the log of the mean of the members' next-token probabilities."""
            return mixture_logits([cache.step(tokens, rows) for cache in caches])
    else:
        step = caches[0].step
    tokens = torch.zeros(num_samples, dtype=torch.long, device=device)  # b: the start '.'
    for position, ix in enumerate(prefix_tokens):
        step(tokens)  # only fills the buffers: the prefix is given, not drawn
        tokens = torch.full_like(tokens, ix)
        out[:, position] = ix
    going = torch.arange(num_samples, device=device)  # b: the names not stopped yet, rows of `out`
    rows = None  # `going` for the caches, None while that is every name
    for position in range(len(prefix_tokens), max_len):
        ix = next_tokens(step(tokens, rows), uniforms[:, position].index_select(0, going), **draw)  # b
        out[going, position] = ix
        still = ix != 0
        if still.all():
            tokens = ix
        else:
            going = rows = going[still]
            tokens = ix[still]
        if len(going) == 0:
            break
    return out.cpu()
