"""--precision: fp32 is float32 throughout (what the equivalence tests check); bf16 runs the forward under
bfloat16 autocast with the weights, gradients, batch-norm statistics and losses in float32.

Shape legend: b batch, t time, v vocab.
"""
import json

import pytest
import torch
from torch.testing import assert_close

from benchmarks.count_syncs import SyncingOps
from test_train import TINY, run
from wavenet_conv.data.words import IGNORE_INDEX, Vocab, encode_items, pad_items
from wavenet_conv.inference.evaluation import SplitEvaluator
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.conv import ConvWaveNet
from wavenet_conv.models.packing import ItemRow
from wavenet_conv.utils.acceleration import PRECISIONS, autocast

ALPHABET = "abcdefg"
VOCAB = Vocab(tuple("." + ALPHABET))


def batch(count=40, seed=0):
    """Items of 0-20 characters, and many copies of one: level 0's statistics count a pair over 256 times (more
    than bfloat16 counts exactly)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 21, (count,), generator=g).tolist()
    words = ["".join(ALPHABET[i] for i in torch.randint(0, len(ALPHABET), (n,), generator=g).tolist())
             for n in lengths] + ["aaaaaaaaaaaa"] * 30
    return pad_items(encode_items(words, VOCAB))  # b t, b t


def conv_model(make_random_tree, seed=0):
    return ConvWaveNet.from_tree(make_random_tree(ModelConfig(len(VOCAB), 8, 5, 12), seed=seed,
                                                  dtype=torch.float32))


def test_fp32_is_no_autocast_at_all():
    with autocast("cpu", "fp32"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bf16"):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        autocast("cpu", "fp16")
    assert PRECISIONS == ("fp32", "bf16")


def test_a_bf16_training_step_keeps_float32_where_it_matters(make_random_tree):
    """Under bf16 autocast the logits are bfloat16, the loss, the gradients and every batch-norm statistic float32,
    and all are close to the float32 step's (bfloat16 rounding, nothing worse)."""
    x, y = batch()
    models = {precision: conv_model(make_random_tree, seed=1).train() for precision in PRECISIONS}
    out = {}
    for precision, model in models.items():
        with autocast("cpu", precision):
            logits, loss = model(x, y, layout=ItemRow.of(x, y))
        loss.backward()
        out[precision] = logits, loss
    (logits16, loss16), (logits32, loss32) = out["bf16"], out["fp32"]
    assert logits16.dtype == torch.bfloat16 and logits32.dtype == torch.float32
    assert loss16.dtype == torch.float32
    assert_close(loss16, loss32, atol=2e-2, rtol=0)
    valid = y != IGNORE_INDEX
    assert_close(logits16[valid].float(), logits32[valid], atol=0.1, rtol=0.05)
    for (name, p16), p32 in zip(models["bf16"].named_parameters(), models["fp32"].parameters(), strict=True):
        assert p16.dtype == p16.grad.dtype == torch.float32, name
        assert_close(p16.grad, p32.grad, atol=2e-2, rtol=0.1, msg=lambda m: f"{name}: {m}")
    for (name, b16), b32 in zip(models["bf16"].named_buffers(), models["fp32"].buffers(), strict=True):
        assert b16.dtype == b32.dtype, name  # float32 statistics (and the integer count)
        assert_close(b16, b32, atol=1e-2, rtol=1e-2, msg=lambda m: f"{name}: {m}")


def test_a_bf16_training_step_issues_no_syncing_op(make_random_tree):
    x, y = batch(seed=2)
    layout = ItemRow.of(x, y)
    model = conv_model(make_random_tree, seed=2).train()
    with SyncingOps() as mode, autocast("cpu", "bf16"):
        _, loss = model(x, y, layout=layout)
        loss.backward()
    assert not mode.ops, f"syncing ops ran: {dict(mode.calls)}"


def test_bf16_evaluation_is_close_to_float32_and_sums_in_float32(make_random_tree):
    conv = conv_model(make_random_tree, seed=3).eval()
    g = torch.Generator().manual_seed(3)
    words = ["".join(ALPHABET[i] for i in torch.randint(0, len(ALPHABET), (n,), generator=g).tolist())
             for n in torch.randint(0, 21, (200,), generator=g).tolist()]
    fp32 = SplitEvaluator(words, VOCAB).loss(conv)
    bf16 = SplitEvaluator(words, VOCAB, precision="bf16").loss(conv)
    assert isinstance(bf16, float) and bf16 != fp32  # autocast ran
    assert bf16 == pytest.approx(fp32, abs=1e-2)
    assert SplitEvaluator(words, VOCAB, precision="fp32").loss(conv) == fp32  # fp32: exactly as before


def test_bf16_training_from_the_command(tmp_path, small_words_file, capsys):
    """The command trains in bf16 to about fp32's validation loss, says so in summary.json, and refuses an unknown
    precision in one line."""
    vals = {}
    for precision in PRECISIONS:
        work_dir = tmp_path / precision
        code, _, err = run(["-i", small_words_file, "-o", work_dir, "--max-steps", 40, "--precision", precision, *TINY],
                           capsys)
        assert code == 0, err
        summary = json.loads((work_dir / "summary.json").read_text())
        assert summary["precision"] == precision and summary["compile"] is False
        vals[precision] = summary["val_loss"]
    assert vals["bf16"] == pytest.approx(vals["fp32"], abs=0.05)
    code, _, err = run(["-i", small_words_file, "-o", tmp_path / "bad", "--precision", "fp16", *TINY], capsys)
    assert code == 2 and err.startswith("error: ") and "fp16" in err and len(err.strip().splitlines()) == 1
