"""Checkpoints written by an earlier layout of the package load unchanged: the format holds tensors, a plain-dict
config and the vocabulary, never module paths. tests/data/ holds a conv, a gated conv and a mixture saved at
commit a82f3ee (the flat package), with their logits on one batch."""
from pathlib import Path

import pytest
import torch

import wavenet_conv
from wavenet_conv.models.checkpoint import load_checkpoint

DATA = Path(__file__).resolve().parent / "data"


@pytest.mark.parametrize("name", ["conv", "gated", "ensemble"])
def test_checkpoints_of_the_flat_package_load_and_predict_as_they_did(name):
    expected = torch.load(DATA / "logits_a82f3ee.pt", weights_only=True)
    model, vocab = wavenet_conv.load(DATA / f"{name}_a82f3ee.pt")
    assert vocab.itos == tuple(".abcdefghijklmnopqrstuvwxyz")
    with torch.no_grad():
        logits, _ = model(expected["x"], expected["y"])
    torch.testing.assert_close(logits, expected[f"{name}_logits"])


def test_the_saved_logits_tell_the_models_apart():
    """Negative control: each model's logits differ from the others', so the check above can fail."""
    expected = torch.load(DATA / "logits_a82f3ee.pt", weights_only=True)
    assert not torch.allclose(expected["conv_logits"], expected["gated_logits"])
    assert not torch.allclose(expected["conv_logits"], expected["ensemble_logits"])
    assert set(load_checkpoint(DATA / "conv_a82f3ee.pt")) >= {"model_type", "config", "vocab", "model"}
