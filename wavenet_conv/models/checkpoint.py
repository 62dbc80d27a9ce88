"""Checkpoints: tensors plus a plain-dict config, written atomically, loaded without running code.

A single model's checkpoint holds its model_type ("conv" or "tree"), config, vocab and weights ("model").
An ensemble's (model_type "ensemble") holds under "model" the list of its members, each a dict of the same
model_type, config and weights a single checkpoint stores, and as its config {"members": their number}.
"""
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch

from wavenet_conv.data.words import Vocab
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.ensemble import EnsembleWaveNet, model_type_of
from wavenet_conv.models.registry import MODEL_TYPES, build_model
from wavenet_conv.utils.errors import CheckpointError
from wavenet_conv.utils.files import write_atomically

CHECKPOINT_NAME = "model.pt"
MODEL_KEYS = ("model_type", "config", "model")  # what a checkpoint stores of a model, and of each ensemble member


def model_state(model):
    """(model_type, config, weights): what a checkpoint stores of a model. An ensemble's weights are its members'
    states, each a dict of those three as a single model's checkpoint has them: tensors and plain values only."""
    model_type = model_type_of(model)
    if model_type == "ensemble":
        members = [dict(zip(MODEL_KEYS, model_state(member))) for member in model.members]
        return model_type, {"members": len(members)}, members
    return model_type, model.config.to_dict(), {k: v.detach().cpu() for k, v in model.state_dict().items()}


def save_checkpoint(path, model, vocab, **extra):
    """Write model, config and vocabulary (plus `extra`: optimizer state, RNG state, step...) atomically: a kill
    at any moment leaves the previous checkpoint or the new one, never a torn file (files.write_atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model_type, config, weights = model_state(model)
    state = {"model_type": model_type, "config": config, "vocab": list(vocab.itos), "model": weights, **extra}
    return write_atomically(path, lambda tmp: torch.save(state, tmp))


def link_checkpoint(source, path):
    """Make `path` name the same checkpoint as `source` (a hard link, or a copy where links are not allowed), atomically.

    save_checkpoint never rewrites a file in place, so the two names stay the same checkpoint until either is
    replaced; linking costs nothing, writing the checkpoint again ~15 ms.
    """
    def link_or_copy(tmp):
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)

    return write_atomically(path, link_or_copy)


def checkpoint_path(path):
    """A work dir or a checkpoint file -> the checkpoint file."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_checkpoint(path, map_location="cpu"):
    """The checkpoint dict, loaded with weights_only=True: a checkpoint can never run code."""
    path = checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {str(path)!r}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {first_line}") from None
    if not isinstance(state, dict) or not {*MODEL_KEYS, "vocab"} <= state.keys():
        raise CheckpointError(f"{str(path)!r} is not a wavenet_conv checkpoint")
    if state["model_type"] == "ensemble":
        members = state["model"]
        if not isinstance(members, list) or not members:
            raise CheckpointError(f"{str(path)!r} holds an ensemble without members")
        for i, member in enumerate(members):
            if not isinstance(member, dict) or not set(MODEL_KEYS) <= member.keys():
                raise CheckpointError(f"{str(path)!r}: ensemble member {i} is not a model (no {', '.join(MODEL_KEYS)})")
            if member["model_type"] not in MODEL_TYPES:
                raise CheckpointError(f"{str(path)!r}: ensemble member {i} has an unknown model type "
                                      f"{member['model_type']!r}")
    elif state["model_type"] not in MODEL_TYPES:
        raise CheckpointError(f"{str(path)!r} holds an unknown model type {state['model_type']!r}")
    return state


def model_from_checkpoint(state):
    """The model of a checkpoint dict (load_checkpoint's), or of one ensemble member's dict in it."""
    if state["model_type"] == "ensemble":
        members = []
        for i, member in enumerate(state["model"]):
            try:
                members.append(model_from_checkpoint(member))
            except CheckpointError as e:
                raise CheckpointError(f"ensemble member {i}: {e}") from None
        try:
            return EnsembleWaveNet(members)
        except ValueError as e:
            raise CheckpointError(f"the ensemble's members do not fit together: {e}") from None
    try:
        model = build_model(state["model_type"], ModelConfig(**state["config"]))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint does not fit its own config: {str(e).splitlines()[0]}") from None
    return model


def load(path, device="cpu"):
    """(model, vocab) from a work dir or a model.pt, in eval mode on `device`, ready to evaluate or sample."""
    state = load_checkpoint(path)
    model = model_from_checkpoint(state).to(device).eval()
    return model, Vocab(state["vocab"])
