"""Given its batch's layout, a conv model's forward and backward issue no op that makes the host wait for a device.

`SyncingOps` (benchmarks/count_syncs.py), a TorchDispatchMode, records every aten op that would: `.item()`,
`if t:`, nonzero, boolean-mask indexing and assignment, unique, equal, bincount, repeat_interleave without
output_size. It sees the ops themselves, so it finds on the CPU what a CUDA device would wait for. The layouts
are made outside it, by the batches that make them in training and evaluation. Negative controls: the mode
catches each of those ops (`x[x > 0]` among them), and a model called without a layout, which makes its own
from the batch's values, is caught.

Shape legend: b batch, t time, n positions of the packed row, v vocab.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from benchmarks.count_syncs import SyncingOps
from wavenet_conv.data.words import IGNORE_INDEX, Vocab, encode_items
from wavenet_conv.inference.evaluation import SplitEvaluator, inference_forward
from wavenet_conv.models import packing
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.conv import ConvWaveNet
from wavenet_conv.models.folded import FoldedConvWaveNet
from wavenet_conv.models.gated_conv import GatedConvWaveNet
from wavenet_conv.training.batches import make_name_batch
from wavenet_conv.training.distill import TeacherTargets

ALPHABET = "abcdefg"
VOCAB = Vocab(tuple("." + ALPHABET))
BLOCK_SIZES = [8, 32]


def names_like_words(block_size, seed):
    """Mostly short words (0-4 characters) and two long ones, shuffled: at block 32 the upper levels run on the
    long items' sub-row (`long_items_conv`), the lower ones on the whole row with the item starts replaced."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 5, (10,), generator=g).tolist() + [block_size + 1, block_size // 2 + 1]
    lengths = [lengths[i] for i in torch.randperm(len(lengths), generator=g).tolist()]
    return ["".join(ALPHABET[i] for i in torch.randint(0, len(ALPHABET), (n,), generator=g).tolist())
            for n in lengths]


def long_words(block_size, seed):
    """Items of 9-13 characters: the dilation-4 level runs on the whole row (a third of its positions at an
    item's start), at block 32 the dilation-8 one its taps as matmuls and the dilation-16 one the later tap
    alone."""
    g = torch.Generator().manual_seed(seed)
    return ["".join(ALPHABET[i] for i in torch.randint(0, len(ALPHABET), (n,), generator=g).tolist())
            for n in (9, 12, 10, 13, 11)]


WORDS = {"names-like": names_like_words, "long": long_words}
PATHS_REACHED = {("names-like", 8): {"pair table", "long items"},
                 ("names-like", 32): {"pair table", "taps", "long items"},
                 ("long", 8): {"pair table", "row"}, ("long", 32): {"pair table", "row", "taps", "later tap alone"}}


def conv_model(arch, block_size, make_random_tree, seed=0):
    config = ModelConfig(len(VOCAB), block_size, n_embd=5, n_hidden=12, arch=arch)
    if arch == "lecture":
        return ConvWaveNet.from_tree(make_random_tree(config, seed=seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GatedConvWaveNet(config).double()


def paths_taken(layout, model):
    """Which of causal_conv's paths the model's levels above level 0 take over this row, with autograd on."""
    paths = set()
    for dilation in (2**i for i in range(1, model.config.n_levels)):
        if dilation == 2:  # level 1, on level 0's table of token pairs
            paths.add("pair table")
        elif layout.longest <= dilation:
            paths.add("later tap alone")
        elif layout.few_longer_than(dilation):
            paths.add("long items")
        else:
            paths.add("taps" if layout.mostly_near_start(dilation) else "row")
    return paths


def assert_no_syncing_op(mode):
    assert not mode.ops, f"syncing ops ran: {dict(mode.calls)}"


# ---- the mode: it catches every syncing op, and nothing else ----

SYNCING = {
    "x[x > 0]": lambda x: x[x > 0],
    "x[x > 0] = 0": lambda x: x.clone().__setitem__(x > 0, 0.0),
    ".item()": lambda x: x.sum().item(),
    "int(t)": lambda x: int(x.argmax()),
    "if t:": lambda x: bool((x > 0).any()),
    "nonzero": lambda x: torch.nonzero(x > 0),
    "unique": lambda x: torch.unique(x.round()),
    "unique_consecutive": lambda x: torch.unique_consecutive(x.round()),
    "equal": lambda x: torch.equal(x, x),
    "masked_select": lambda x: x.masked_select(x > 0),
    "bincount": lambda x: torch.bincount(torch.arange(3)),
    "repeat_interleave": lambda x: torch.repeat_interleave(torch.arange(3), torch.tensor([1, 2, 3])),
}

SYNC_FREE = {
    "index_select": lambda x: x.index_select(0, torch.tensor([2, 0])),
    "index_copy": lambda x: x.index_copy(0, torch.tensor([1]), x[:1]),
    "index_add_": lambda x: x.new_zeros(3).index_add_(0, torch.tensor([1, 1]), x[:2]),
    "where": lambda x: torch.where(x > 0, x, 0.0),
    "repeat_interleave with output_size": lambda x: torch.repeat_interleave(
        torch.arange(3), torch.tensor([1, 2, 3]), output_size=6),
    "integer-tensor index": lambda x: x[torch.tensor([0, 2])],
}


@pytest.mark.parametrize("op", SYNCING)
def test_control_the_mode_catches_each_syncing_op(op):
    x = torch.randn(5, generator=torch.Generator().manual_seed(1))
    with SyncingOps() as mode:
        SYNCING[op](x)
    assert mode.total >= 1, op
    with pytest.raises(AssertionError, match="syncing op"), SyncingOps(fail=True):
        SYNCING[op](x)


@pytest.mark.parametrize("op", SYNC_FREE)
def test_the_mode_lets_sync_free_ops_pass(op):
    x = torch.randn(5, generator=torch.Generator().manual_seed(1))
    with SyncingOps() as mode:
        SYNC_FREE[op](x)
    assert_no_syncing_op(mode)


# ---- training: forward, loss and backward ----

@pytest.mark.parametrize("words", WORDS)
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("arch", ["lecture", "gated"])
def test_a_training_step_issues_no_syncing_op(make_random_tree, arch, block_size, words):
    model = conv_model(arch, block_size, make_random_tree, seed=1).train()
    x, y, layout = make_name_batch(encode_items(WORDS[words](block_size, seed=1), VOCAB), "cpu")
    with SyncingOps(where=True) as mode:
        logits, loss = model(x, y, layout=layout)
        loss.backward()
    assert_no_syncing_op(mode)
    assert all(p.grad is not None for p in model.parameters())
    if arch == "lecture":  # between them the batches reach every path of causal_conv with autograd
        assert paths_taken(layout, model) >= PATHS_REACHED[words, block_size]


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_a_distilling_step_issues_no_syncing_op(make_random_tree, block_size):
    """The teacher's rows and the batch's row are gathered on the host (`batch_targets`); the loss is not."""
    items = encode_items(names_like_words(block_size, seed=2), VOCAB)
    teacher = conv_model("lecture", block_size, make_random_tree, seed=3).eval()
    targets = TeacherTargets(teacher, items, len(VOCAB), weight=0.5)
    student = conv_model("lecture", block_size, make_random_tree, seed=4).train()
    indices = [4, 0, 11, 7, 2]
    x, y, layout = make_name_batch([items[i] for i in indices], "cpu")
    teacher_rows, row = targets.batch_targets(indices, x.shape[1], x.device)
    with SyncingOps(where=True) as mode:
        logits, data_loss = student(x, y, layout=layout)
        loss = targets.batch_loss(logits, data_loss, teacher_rows, row)
        loss.backward()
    assert_no_syncing_op(mode)
    assert_close(loss, targets.loss(logits, y, data_loss, indices), atol=0, rtol=0)


# ---- evaluation: eval mode, with autograd and without, the folded form, the gated arch ----

@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("arch", ["lecture", "gated"])
def test_an_evaluation_waits_for_the_device_once(make_random_tree, arch, block_size, monkeypatch):
    """SplitEvaluator's batches (made once, with their layouts) through each model's inference form: one sync in
    the whole evaluation, its final number. Every run of equally long items counts as long here, so the
    lecture conv's inference takes the length-runs path."""
    monkeypatch.setattr(packing, "LENGTH_RUN_POSITIONS", 1)
    words = names_like_words(block_size, seed=5) * 3
    model = conv_model(arch, block_size, make_random_tree, seed=5)
    evaluator = SplitEvaluator(words, VOCAB)
    batches = evaluator.batches_for("conv", block_size, torch.device("cpu"))
    assert all(layout.in_long_length_runs for _, _, layout, _ in batches)
    with SyncingOps(where=True) as mode:
        loss = evaluator.loss(model)
    assert dict(mode.ops) in ({"item.default": 1}, {"_local_scalar_dense.default": 1}), dict(mode.calls)
    forward = inference_forward(model.eval())  # without the layouts: each batch makes its own
    with torch.no_grad():
        total = sum(F.cross_entropy(forward(x, y).flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX,
                                    reduction="sum").item() for x, y, *_ in batches)
    assert_close(loss, total / sum(predictions for *_, predictions in batches))


@pytest.mark.parametrize("block_size", BLOCK_SIZES)
@pytest.mark.parametrize("form", ["eval with autograd", "inference", "folded"])
def test_a_lecture_conv_in_eval_mode_issues_no_syncing_op(make_random_tree, form, block_size, monkeypatch):
    """Over items sorted by length (the evaluator's batches): with autograd the row and long-items paths,
    without it the length runs, the folded form its tables and length runs. The same logits as without a
    layout."""
    monkeypatch.setattr(packing, "LENGTH_RUN_POSITIONS", 1)
    conv = conv_model("lecture", block_size, make_random_tree, seed=6).eval()
    model = FoldedConvWaveNet(conv) if form == "folded" else conv
    words = sorted(names_like_words(block_size, seed=6), key=len)
    x, y, layout = make_name_batch(encode_items(words, VOCAB), "cpu")
    assert layout.in_long_length_runs
    with torch.set_grad_enabled(form == "eval with autograd"), SyncingOps(where=True) as mode:
        out = model(x, y, layout=layout)
        logits = out[0] if isinstance(out, tuple) else out
        F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
    assert_no_syncing_op(mode)
    with torch.set_grad_enabled(form == "eval with autograd"):
        out = model(x, y)  # its own layout: the same paths
    assert_close(logits.detach(), (out[0] if isinstance(out, tuple) else out).detach(), atol=0, rtol=0)


# ---- on a CUDA device: torch's own sync check ----

@pytest.mark.cuda
@pytest.mark.parametrize("form", ["lecture train", "gated train", "lecture eval", "folded"])
def test_on_a_cuda_device_nothing_waits_for_the_gpu(make_random_tree, form):
    """With `torch.cuda.set_sync_debug_mode("error")` every op that makes the host wait for the GPU raises: a
    training step's forward, loss and backward, and an eval-mode forward and loss, given their batch's layout,
    raise nothing; a boolean mask (the control) raises."""
    arch = "gated" if form.startswith("gated") else "lecture"
    model = conv_model(arch, 8, make_random_tree, seed=8).cuda().train(form.endswith("train"))
    model = FoldedConvWaveNet(model) if form == "folded" else model
    x, y, layout = make_name_batch(encode_items(names_like_words(8, seed=8), VOCAB), "cuda")

    def run():
        out = model(x, y, layout=layout)
        logits = out[0] if isinstance(out, tuple) else out
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX)
        if form.endswith("train"):
            loss.backward()

    with torch.set_grad_enabled(form.endswith("train")):
        run()  # lazy initialisation (cuBLAS and cuDNN handles) outside the check
        torch.cuda.synchronize()
        previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        try:
            run()
            with pytest.raises(RuntimeError, match="synchroniz"):
                x[x > 0]
        finally:
            torch.cuda.set_sync_debug_mode(previous)


# ---- negative controls and misuse ----

@pytest.mark.parametrize("form", ["train", "folded"])
def test_control_a_model_without_its_layout_syncs(make_random_tree, form):
    """Without a layout the model makes its own from the batch's values: the mode sees that (the test can fail)."""
    conv = conv_model("lecture", 8, make_random_tree, seed=7).train(form == "train")
    model = FoldedConvWaveNet(conv) if form == "folded" else conv
    x, y, _ = make_name_batch(encode_items(names_like_words(8, seed=7), VOCAB), "cpu")
    with SyncingOps() as mode:
        model(x, y)
    assert {"equal.default", "nonzero.default"} <= set(mode.ops), dict(mode.ops)


def test_a_layout_of_another_batch_is_refused(make_random_tree):
    conv = conv_model("lecture", 8, make_random_tree, seed=8).train()
    items = encode_items(names_like_words(8, seed=8), VOCAB)
    x, y, layout = make_name_batch(items, "cpu")
    with pytest.raises(ValueError, match="layout"):
        conv(x[:3], y[:3], layout=layout)


def test_a_layout_moves_its_tensors_and_keeps_its_numbers():
    """`to` moves every index (one copy), keeps the Python numbers and decisions; on the CPU it is the row."""
    items = encode_items(names_like_words(32, seed=9), VOCAB)
    _, _, layout = make_name_batch(items, "cpu")
    assert layout.to("cpu") is layout
    moved = layout.to("meta")
    assert (moved.n, moved.longest, moved.batch_shape, moved.length_runs, moved.in_long_length_runs) == (
        layout.n, layout.longest, layout.batch_shape, layout.length_runs, layout.in_long_length_runs)
    assert moved.indices.keys() == layout.indices.keys()
    for key, index in layout.indices.items():
        assert moved.indices[key].device.type == "meta" and moved.indices[key].shape == index.shape
    assert [moved.few_longer_than(2**i) for i in range(2, 5)] == [layout.few_longer_than(2**i) for i in range(2, 5)]
    assert copy.copy(moved).pack_index.device.type == "meta"
