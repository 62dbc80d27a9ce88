"""The gated arch's conv form is its tree form: per-position logits, gradients, causality, negative controls;
and the gated arch through config, checkpoints, evaluation, sampling and the training CLI.

The comparisons are test_equivalence's own (`paired_logits`: the conv's logits at every valid position of a
padded mixed-length batch against the tree's logits on that position's build_windows window).
Shape legend: b batch, c channels, h gate channels, t time, k taps, v vocab.
"""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from test_equivalence import (LARGE_GAP, TOLERANCE, VOCAB, assert_causal_with_exactly_the_window, assert_equivalent,
                              backward_summed_losses, logit_gaps, max_logit_gap, random_words)
from test_train import TINY, run, syllable_words
from torch.testing import assert_close

import wavenet_conv
from wavenet_conv.data.words import IGNORE_INDEX, Vocab, build_windows, encode_items, pad_items
from wavenet_conv.inference.evaluation import SplitEvaluator
from wavenet_conv.inference.sampling import SampleError, sample
from wavenet_conv.models.checkpoint import load, model_from_checkpoint, save_checkpoint
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.gated_conv import (GatedConvLevel, GatedConvWaveNet, causal_pad, tree_to_conv_layout,
                                            weight_pairs)
from wavenet_conv.models.gated_tree import GatedTreeWaveNet

BLOCK_SIZES = [2, 4, 8, 16, 32]


def gated_config(block_size, vocab=VOCAB, dropout=0.0):
    return ModelConfig(vocab_size=len(vocab), block_size=block_size, n_embd=5, n_hidden=6, arch="gated",
                       dropout=dropout)


def random_gated_tree(config, seed=0, dtype=torch.float64):
    """A GatedTreeWaveNet with every weight and bias drawn from torch.Generator(seed) (none left at zero), eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        tree = GatedTreeWaveNet(config)
    with torch.no_grad():
        for name, p in tree.named_parameters():
            scale = 1.0 if "embedding" in name else (0.3 if p.ndim == 1 else p.shape[0] ** -0.5)
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return tree.to(dtype).eval()


def conv_twin(tree):
    return GatedConvWaveNet.from_tree(tree)


# ---- the same function: logits at every position, before and after the weight copy ----

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_conv_logits_equal_tree_logits_at_every_position(block_size, dtype):
    config = gated_config(block_size)
    tree = random_gated_tree(config, seed=block_size, dtype=dtype)
    words = random_words(block_size, seed=block_size)  # lengths 0, < block, = block, > block, mixed
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        conv = GatedConvWaveNet(config).to(dtype).eval()

    assert max_logit_gap(tree, conv, words) > LARGE_GAP  # before the weight copy: another model
    with pytest.raises(AssertionError):
        assert_equivalent(tree, conv, words)

    conv.load_state_dict(conv_twin(tree).state_dict())
    assert_equivalent(tree, conv, words)
    for word in words:  # each item alone, down to the empty item
        assert_equivalent(tree, conv, [word])
    # no batch norm: training mode (dropout 0) is the same function too
    assert_equivalent(tree.train(), conv.train(), words)


def test_conv_runs_real_conv1d_modules_and_keeps_time_length():
    conv = conv_twin(random_gated_tree(gated_config(8)))
    calls = []
    for level in conv.levels:
        assert isinstance(level.fuse, torch.nn.Conv1d)
        assert level.fuse.kernel_size == (2,) and level.fuse.padding == (0,)
        level.fuse.register_forward_hook(lambda m, inputs, out: calls.append((m.dilation[0], inputs[0].shape[-1],
                                                                              out.shape[-1])))
    x, _ = pad_items(encode_items(["abc", "abcdefgabc"], VOCAB))  # t = 11
    conv(x)
    assert calls == [(1, 12, 11), (2, 13, 11), (4, 15, 11)]  # each level: dilation copies in front, t out
    assert conv.levels[-1].residual is None  # the top level's residual would feed nothing


def test_conv_equals_tree_on_a_non_names_vocabulary():
    words = ["O'Brien", "Ann Marie", "St. John", "Zoë", "", "x"]
    vocab = Vocab.from_words(words)  # '.' inside an item is a character token of its own
    tree = random_gated_tree(gated_config(4, vocab), seed=1)
    assert_equivalent(tree, conv_twin(tree), words, vocab)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("block_size", [2, 8, 32])
def test_round_trip_is_exact(block_size, dtype):
    tree = random_gated_tree(gated_config(block_size), seed=3, dtype=dtype)
    conv = conv_twin(tree)
    back = conv.to_tree()
    for a, b in ((tree, back), (conv, GatedConvWaveNet.from_tree(back))):
        state_a, state_b = a.state_dict(), b.state_dict()
        assert list(state_a) == list(state_b)
        assert all(torch.equal(state_a[name], state_b[name]) for name in state_a)
    assert back.head.weight.dtype == dtype and conv.training == tree.training == back.training


# ---- gradients ----

@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("block_size", [2, 8, 16])
def test_gradients_equal_the_summed_tree_gradients(block_size, training):
    """d(conv's summed loss over every position)/dW = sum over windows of d(tree loss)/dW, mapped to the conv."""
    tree = random_gated_tree(gated_config(block_size), seed=5).train(training)
    conv = conv_twin(tree)
    backward_summed_losses(tree, conv, random_words(block_size, seed=5))

    pairs = weight_pairs(tree, conv)
    assert len(pairs) == len(list(conv.parameters())) == len(list(tree.parameters()))
    for tree_param, conv_param, pattern in pairs:
        assert conv_param.grad.abs().sum() > 0  # a vanishing gradient would make the comparison vacuous
        assert_close(conv_param.grad, tree_to_conv_layout(tree_param.grad, pattern), atol=1e-10, rtol=1e-10)


def test_training_ignores_extra_right_padding():
    conv = conv_twin(random_gated_tree(gated_config(8), seed=17)).train()
    x, y = pad_items(encode_items(random_words(8, seed=17), VOCAB))
    x_more, y_more = F.pad(x, (0, 5), value=0), F.pad(y, (0, 5), value=IGNORE_INDEX)
    results = []
    for inputs, targets in ((x, y), (x_more, y_more)):
        model = copy.deepcopy(conv)
        logits, loss = model(inputs, targets)
        loss.backward()
        results.append((loss, logits[targets != IGNORE_INDEX], [p.grad for p in model.parameters()]))
    (loss, logits, grads), (loss_more, logits_more, grads_more) = results
    assert_close(loss_more, loss, atol=1e-12, rtol=1e-12)
    assert_close(logits_more, logits, atol=1e-12, rtol=1e-12)
    for grad, grad_more in zip(grads, grads_more, strict=True):
        assert_close(grad_more, grad, atol=1e-12, rtol=1e-12)


# ---- causality ----

@pytest.mark.parametrize("block_size", [4, 8, 16])
def test_future_and_too_old_tokens_never_matter(block_size):
    assert_causal_with_exactly_the_window(conv_twin(random_gated_tree(gated_config(block_size), seed=7)))


# ---- negative controls: the same check fails on a conv that is not the tree ----

def gated_outputs(level, residual_child, padded):
    """A level's arithmetic on a given left-padded input, with the residual added to a given child."""
    f, g = level.fuse(padded).chunk(2, dim=1)  # b h t each
    gated = torch.tanh(f) * torch.sigmoid(g)
    return (None if level.residual is None else residual_child + level.residual(gated)), level.skip(gated)


class ZeroPaddedLevel(GatedConvLevel):
    """Broken on purpose: zeros before the start, as Conv1d(padding=...) gives, instead of the all-'.' node."""

    def forward(self, x):
        return gated_outputs(self, x, F.pad(x, (self.dilation, 0)))


class EarlierResidualLevel(GatedConvLevel):
    """Broken on purpose: the residual added to the earlier child instead of the later one."""

    def forward(self, x):
        padded = causal_pad(x, self.dilation)  # b c (d + t)
        return gated_outputs(self, padded[..., : -self.dilation], padded)


def broken_conv(tree, level_class):
    conv = conv_twin(tree)
    for level in conv.levels:
        level.__class__ = level_class  # the same weights, one method different
    return conv


@pytest.mark.parametrize("broken_level", [ZeroPaddedLevel, EarlierResidualLevel], ids=["zeros", "earlier"])
@pytest.mark.parametrize("block_size", [4, 8, 16])  # block 2 has one level, whose residual nothing reads
def test_control_broken_convs_fail_the_check(block_size, broken_level):
    tree = random_gated_tree(gated_config(block_size), seed=11)
    words = random_words(block_size, seed=11)
    broken = broken_conv(tree, broken_level)
    with pytest.raises(AssertionError):
        assert_equivalent(tree, broken, words)
    gaps, positions = logit_gaps(tree, broken, words)
    assert gaps.max() > LARGE_GAP
    if broken_level is ZeroPaddedLevel:
        # the classic symptom: wrong at the first block_size - 1 positions, right once the window is inside
        assert gaps[positions < block_size - 1].max() > LARGE_GAP
        assert gaps[positions >= block_size - 1].max() < TOLERANCE[torch.float64]


def test_control_c_k_weight_order_fails_the_check():
    tree = random_gated_tree(gated_config(8), seed=15)
    broken = conv_twin(tree)
    with torch.no_grad():
        for conv_level, tree_level in zip(broken.levels, tree.levels, strict=True):
            conv_level.fuse.weight.copy_(rearrange(tree_level.fuse.weight, "(c k) h -> h c k", k=2))
    assert max_logit_gap(tree, broken, random_words(8, seed=15)) > LARGE_GAP


# ---- dropout ----

def test_dropout_acts_in_training_only():
    tree = random_gated_tree(gated_config(8, dropout=0.5), seed=19)
    conv = conv_twin(tree)
    words = random_words(8, seed=19)
    assert_equivalent(tree, conv, words)  # eval mode: dropout is off, the forms agree
    x, _ = pad_items(encode_items(words, VOCAB))
    conv.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        first, second = conv(x)[0], conv(x)[0]
    assert (first - second).abs().max() > 1e-3  # fresh masks at every call
    assert (first - conv.eval()(x)[0]).abs().max() > 1e-3


# ---- config, checkpoints, evaluation, sampling ----

@pytest.mark.parametrize("kwargs, message", [
    ({"arch": "transformer"}, "arch must be one of lecture, gated"),
    ({"arch": "gated", "dropout": 1.0}, "dropout must be a number in"),
    ({"arch": "gated", "dropout": -0.1}, "dropout must be a number in"),
    ({"arch": "gated", "dropout": "0.1"}, "dropout must be a number in"),
    ({"dropout": 0.1}, "dropout is an option of the gated arch only"),
])
def test_config_rejects_bad_arch_and_dropout(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**kwargs)


@pytest.mark.parametrize("form", ["conv", "tree"])
def test_checkpoint_round_trip_builds_the_gated_class(tmp_path, form):
    tree = random_gated_tree(gated_config(8, dropout=0.2), seed=21, dtype=torch.float32)
    model = conv_twin(tree) if form == "conv" else tree
    save_checkpoint(tmp_path / "model.pt", model, VOCAB)
    loaded, vocab = load(tmp_path)
    assert type(loaded) is type(model) and vocab == VOCAB and loaded.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(),
                                                 strict=True))


def test_old_checkpoint_config_without_arch_loads_the_lecture_model(make_random_tree):
    from wavenet_conv.models.conv import ConvWaveNet

    conv = ConvWaveNet.from_tree(make_random_tree(ModelConfig(len(VOCAB), 4, 3, 5)))
    old_config = {k: v for k, v in conv.config.to_dict().items() if k not in ("arch", "dropout")}
    model = model_from_checkpoint({"model_type": "conv", "config": old_config, "model": conv.state_dict()})
    assert type(model) is ConvWaveNet and model.config.arch == "lecture"


def test_split_loss_of_the_conv_over_items_equals_the_tree_over_windows():
    words = random_words(8, seed=23) * 5
    tree = random_gated_tree(gated_config(8), seed=23)
    X, Y = build_windows(words, VOCAB, 8)
    with torch.no_grad():
        expected = F.cross_entropy(tree(X)[0], Y).item()
    evaluator = SplitEvaluator(words, VOCAB)  # the gated conv runs over padded items through its own forward
    assert_close(evaluator.loss(tree), expected)
    assert_close(evaluator.loss(conv_twin(tree)), expected)


@pytest.mark.parametrize("form", ["conv", "tree"])
def test_naive_and_full_sample_the_same_names_and_cached_is_refused(form):
    tree = random_gated_tree(gated_config(8), seed=25)
    model = conv_twin(tree) if form == "conv" else tree
    names = {method: sample(model, VOCAB, 40, method=method, generator=torch.Generator().manual_seed(1), max_len=20)
             for method in ("naive", "full", None)}
    assert names["naive"] == names["full"] == names[None]  # the default falls back to full
    assert len(set(names["full"])) > 20
    with pytest.raises(SampleError, match="cached sampler exists for the lecture arch only"):
        sample(model, VOCAB, 3, method="cached")


# ---- the training CLI ----

def test_gated_training_run_lowers_the_loss_and_reloads(tmp_path, capsys):
    words_file = tmp_path / "words.txt"
    words_file.write_text("\n".join(syllable_words()) + "\n")
    work_dir = tmp_path / "run"
    code, _, err = run(["-i", words_file, "-o", work_dir, "--arch", "gated", "--dropout", "0.1", "--max-steps", 60,
                        "--learning-rate", "0.01", *TINY], capsys)
    assert code == 0, err
    metrics = [json.loads(line) for line in (work_dir / "metrics.jsonl").read_text().splitlines()]
    val = [m["loss"] for m in metrics if m["split"] == "val"]
    first_train = next(m["loss"] for m in metrics if m["split"] == "train")
    assert val[-1] < val[0] < first_train
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["config"]["arch"] == "gated" and summary["settings"]["dropout"] == 0.1
    model, vocab = wavenet_conv.load(work_dir)
    assert type(model) is GatedConvWaveNet and model.config.dropout == 0.1
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    assert len((work_dir / "samples.txt").read_text().splitlines()) == 6 + 1  # and the count of new ones
    # and it resumes: --arch is part of the run, a different one is refused
    code, _, err = run(["-i", words_file, "-o", work_dir, "--resume", "--arch", "lecture", "--max-steps", 60, *TINY],
                       capsys)
    assert code == 2 and "arch is gated" in err
