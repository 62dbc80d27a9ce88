"""An ensemble of independently trained models: the mixture of their predicted probabilities.

Models trained from different seeds make different mistakes, so the mean of their next-character
distributions, p(x) = 1/k sum_i p_i(x), predicts better than any one of them: by Jensen's inequality its
negative log-likelihood is at most the mean of the members' (strictly below it wherever they disagree).
That mixture is the model whose loss we report, so the ensemble's logits are the log of the mean of the
members' probabilities, computed stably from their log-softmaxes:

    logits = logsumexp_i(log_softmax(logits_i)) - log k,    softmax(logits) = the mixture.

Averaging logits instead is a product of experts (a geometric mean of the distributions, renormalised),
another model with another loss; averaging weights mixes unrelated networks (no two members learn the
same features in the same channels). Measured on names.txt: 4 runs of the quality recipe (seeds 1-4) reach
val 1.962-1.966 each, the mixture of their probabilities 1.930 (of 2 of them: 1.9415).

Shape legend: b batch, t time, n windows, v vocab, k members.
"""
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from wavenet_conv.data.words import IGNORE_INDEX
from wavenet_conv.models.registry import single_model_type


def mixture_logits(member_logits, targets=None):
    """The log of the mean of the members' probabilities: k logits (b t v, or n v for windows) -> b t v (n v),
    0 at right padding (targets -1), as a single model's."""
    log_probs = torch.stack([F.log_softmax(logits, dim=-1) for logits in member_logits])  # k b t v
    logits = torch.logsumexp(log_probs, dim=0) - math.log(len(member_logits))  # b t v
    if targets is not None:
        logits = logits.masked_fill((targets == IGNORE_INDEX)[..., None], 0.0)  # b t v
    return logits


def model_type_of(model):
    """What a checkpoint stores a model as: "ensemble", or a single model's form, "conv" or "tree"."""
    return "ensemble" if isinstance(model, EnsembleWaveNet) else single_model_type(model)


def members_of(model):
    """The models whose predictions a model mixes: an ensemble's members, or the model itself."""
    return list(model.members) if isinstance(model, EnsembleWaveNet) else [model]


class EnsembleWaveNet(nn.Module):
    """Trained models of one kind (all conv, all tree; either arch) over one vocabulary and block size, whose
    `forward(idx, targets=None) -> (logits, loss)` is the mixture of their probabilities and its NLL.

    It takes the members' inputs: whole items (b t) for convs, windows (n t) for trees.
    """

    def __init__(self, members):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("an ensemble needs at least one member")
        kinds = {model_type_of(member) for member in members}  # a TypeError for anything but a WaveNet
        if "ensemble" in kinds:
            raise ValueError("an ensemble's members must be single models, not ensembles")
        if len(kinds) > 1:
            raise ValueError(f"the members must be all conv or all tree models, got {', '.join(sorted(kinds))}")
        for name in ("vocab_size", "block_size"):
            values = [getattr(member.config, name) for member in members]
            if len(set(values)) > 1:
                raise ValueError(f"the members' {name} must be the same, got {values}")
        self.members = nn.ModuleList(members)
        # the members' mode, left as it is: evaluation restores a model's mode, which is then theirs again
        self.training = all(member.training for member in members)

    def forward(self, idx, targets=None):
        """idx (b t) items or (n t) windows; targets (b t) with -1 on right padding, or (n). Logits (b t v) or (n v)."""
        logits = mixture_logits([member(idx, targets)[0] for member in self.members], targets)  # b t v
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(rearrange(logits, "... v -> (...) v"), rearrange(targets, "... -> (...)"),
                                       ignore_index=IGNORE_INDEX)
