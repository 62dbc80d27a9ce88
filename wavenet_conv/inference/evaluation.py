"""Loss over whole splits in eval mode: the conv over whole items, the tree over windows, one number either way.

A conv runs over items sorted by length, so that batches carry little right padding; the lecture arch's conv
in its inference form (FoldedConvWaveNet: batch norm folded into the convolutions).

Every next-character prediction of a split counts once, so the conv over whole items and the tree over the
split's build_windows windows give the same mean (the same model, converted), up to float rounding.

Each conv batch carries its packed row's layout (packing.ItemRow), made on the CPU once with the batches, and
the losses add up on the device: a whole evaluation waits for the device once, for its final number.

With compile (utils/acceleration.py) each form runs through torch.compile, its layouts those a compiled model
reads; with precision bf16 under bfloat16 autocast, the losses summed in float32.

An ensemble (ensemble.py) runs on its members' kind of batches, all members on the same batch, each in the
form it would be evaluated in alone: its loss is the NLL of the mixture at every prediction, which needs
every member's distribution for that prediction side by side.

Shape legend: b batch, t time, n windows, v vocab.
"""
import functools

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from wavenet_conv.data.words import IGNORE_INDEX, build_windows, encode_items, item_lengths, pad_items
from wavenet_conv.models.ensemble import members_of, mixture_logits, model_type_of
from wavenet_conv.models.folded import FoldedConvWaveNet
from wavenet_conv.models.packing import ItemRow
from wavenet_conv.utils.acceleration import autocast, compile_model
from wavenet_conv.utils.errors import DatasetError

BATCH_POSITIONS = 1 << 12  # positions (conv) or windows (tree) per batch: small enough to stay in cache
SPLIT_NAMES = ("train", "val", "test")


def item_batches(items, max_positions=BATCH_POSITIONS):
    """Whole items sorted by length (eval mode has no batch statistics to bias), padded: [(x b t, y b t)]."""
    lengths = item_lengths(items)
    order = np.argsort(lengths, kind="stable").tolist()
    lengths = lengths.tolist()
    batches, start = [], 0
    while start < len(order):
        end = start + 1
        # grow the batch while its padded size (its last item is the longest) stays within the budget
        while end < len(order) and (end + 1 - start) * (lengths[order[end]] + 1) <= max_positions:
            end += 1
        batches.append(pad_items(items, order[start:end]))
        start = end
    return batches


def window_batches(words, vocab, block_size, max_windows=BATCH_POSITIONS):
    """The tree's inputs: every build_windows window of the split, in batches: [(X n t, Y n)]."""
    X, Y = build_windows(words, vocab, block_size)
    return list(zip(X.split(max_windows), Y.split(max_windows)))


class SplitEvaluator:
    """The full-split loss of a model; the split's batches are built once and reused at every evaluation.

    A conv runs over whole items sorted by length (the lecture arch's in its folded inference form); the tree
    over windows; an ensemble over its members' kind of batches. compile, precision: as for training
    (utils/acceleration.py).
    """

    def __init__(self, words, vocab, compile=False, precision="fp32"):
        self.words = words
        self.vocab = vocab
        self.compile = compile
        self.precision = precision
        self.batches = {}

    def batches_for(self, model_type, block_size, device):
        """[(x, y, layout or None, predictions)] on `device`: a conv's batches with their packed rows' layouts."""
        key = (model_type, block_size, str(device))
        if key not in self.batches:
            if model_type == "conv":
                batches = [(x, y, ItemRow.of(x, y, compiled=self.compile))
                           for x, y in item_batches(encode_items(self.words, self.vocab))]
            else:
                batches = [(x, y, None) for x, y in window_batches(self.words, self.vocab, block_size)]
            self.batches[key] = [(x.to(device), y.to(device), None if layout is None else layout.to(device),
                                  int((y != IGNORE_INDEX).sum())) for x, y, layout in batches]
        return self.batches[key]

    def loss(self, model):
        """Mean cross-entropy over every prediction of the split, in eval mode; the model's mode is restored."""
        device = next(model.parameters()).device
        member = members_of(model)[0]  # an ensemble's members are all of one kind and block size
        batches = self.batches_for(model_type_of(member), member.config.block_size, device)
        was_training = model.training
        model.eval()
        total = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device, read once at the end
        count = sum(predictions for *_, predictions in batches)
        try:
            with torch.inference_mode():
                forward = inference_forward(model, self.compile)  # the folded form built outside autocast
                for x, y, layout, _ in batches:
                    with autocast(device, self.precision):
                        logits = forward(x, y, layout)  # the folded form computes valid positions only
                    if logits.ndim == 3:
                        logits, y = rearrange(logits, "b t v -> (b t) v"), rearrange(y, "b t -> (b t)")
                    total += F.cross_entropy(logits.float(), y, ignore_index=IGNORE_INDEX, reduction="sum")
        finally:
            model.train(was_training)
        return total.item() / count


def inference_forward(model, compile=False):
    """(x, y, layout=None) -> logits of a model in eval mode: the lecture arch's conv in its folded inference
    form, the gated arch and the tree as they are, an ensemble the mixture of its members' forms. layout: a
    conv batch's `ItemRow.of(x, y)`, which the tree's windows do without. compile: each form through
    torch.compile, one compiled function for every model of that form (each evaluation folds a new one)."""
    if model_type_of(model) == "ensemble":
        forwards = [inference_forward(member, compile) for member in model.members]
        return lambda x, y, layout=None: mixture_logits([forward(x, y, layout) for forward in forwards], y)
    if model_type_of(model) == "conv" and model.config.arch == "lecture":
        folded, forward = FoldedConvWaveNet(model), compiled(folded_logits) if compile else folded_logits
        return lambda x, y, layout=None: forward(folded, x, y, layout)
    forward = compiled(model_logits) if compile else model_logits
    return lambda x, y, layout=None: forward(model, x)


def folded_logits(folded, x, y, layout):
    return folded(x, y, layout=layout)  # b t v


def model_logits(model, x):
    return model(x)[0]  # b t v (a conv) or b v (the tree's windows)


@functools.cache
def compiled(function):
    return compile_model(function)


def split_loss(model, words, vocab):
    """The mean loss of `model` over every prediction of `words`, in eval mode (conv: whole items; tree: windows)."""
    return SplitEvaluator(words, vocab).loss(model)


def evaluate_splits(model, splits, vocab):
    """{'train': loss, 'val': loss, 'test': loss} for a dict of split name -> words."""
    return {name: split_loss(model, words, vocab) for name, words in splits.items()}


def check_vocab(words, vocab):
    """The data must be spelled in the model's vocabulary."""
    unseen = set("".join(words)) - set(vocab.itos[1:])
    if unseen:
        raise DatasetError(f"the input file has characters the model was not trained on: {''.join(sorted(unseen))!r}")
