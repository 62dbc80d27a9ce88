"""--compile: a compiled conv trains and evaluates as the eager one, and one graph serves batches of every length.

The compiled forward takes other paths than the eager one where a fixed size would enter the graph: each
level's taps as matmuls (packing.gathered_taps_conv) and batch norm as plain sums (conv.rows_batch_norm). Those
paths are checked first in eager float64, exactly (no compiler needed), then compiled in float32 against eager.

Shape legend: b batch, t time.
"""
import copy
import shutil

import pytest
import torch
from torch.testing import assert_close

from wavenet_conv.data.words import IGNORE_INDEX, Vocab, encode_items, pad_items
from wavenet_conv.inference.evaluation import SplitEvaluator
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.conv import ConvWaveNet
from wavenet_conv.models.folded import FoldedConvWaveNet
from wavenet_conv.models.packing import ItemRow
from wavenet_conv.utils.acceleration import compilations, compile_model

ALPHABET = "abcdefg"
VOCAB = Vocab(tuple("." + ALPHABET))
has_compiler = pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                                  reason="torch.compile on the CPU needs a C++ compiler")


def words_of(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return ["".join(ALPHABET[i] for i in torch.randint(0, len(ALPHABET), (n,), generator=g).tolist())
            for n in lengths]


def varied_batches(count, batch_size, seed=0):
    """`count` batches of item lengths 0-20 drawn afresh each time: the packed row's length, the longest item and
    the positions each dilation reads differ from batch to batch."""
    g = torch.Generator().manual_seed(seed)
    batches = []
    for k in range(count):
        lengths = torch.randint(0, 21, (batch_size,), generator=g).tolist()
        x, y = pad_items(encode_items(words_of(lengths, seed + k), VOCAB))  # b t, b t
        batches.append((x, y))
    return batches


def small_conv(make_random_tree, block_size=8, seed=0, dtype=torch.float32):
    config = ModelConfig(len(VOCAB), block_size, n_embd=5, n_hidden=12)
    return ConvWaveNet.from_tree(make_random_tree(config, seed=seed, dtype=dtype))


# ---- the compiled paths, in eager float64: the same function ----

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("block_size", [4, 8, 32])
def test_the_compiled_paths_compute_the_eager_function(make_random_tree, block_size, training, monkeypatch):
    """With torch.compiler.is_compiling() made true in eager mode, the conv (and in eval the folded form) runs the
    paths a compiled graph holds, on a layout made for them: logits, loss, gradients and batch-norm statistics
    equal the eager paths' in float64."""
    conv = small_conv(make_random_tree, block_size, seed=3, dtype=torch.float64).train(training)
    compiled_paths = copy.deepcopy(conv)
    x, y = varied_batches(1, 12, seed=block_size)[0]
    expected_logits, expected_loss = conv(x, y, layout=ItemRow.of(x, y))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    logits, loss = compiled_paths(x, y, layout=ItemRow.of(x, y, compiled=True))
    assert_close(logits, expected_logits, atol=1e-10, rtol=1e-10)
    assert_close(loss, expected_loss, atol=1e-12, rtol=1e-12)
    if training:
        loss.backward()
        expected_loss.backward()
        for (name, p), q in zip(compiled_paths.named_parameters(), conv.parameters(), strict=True):
            assert_close(p.grad, q.grad, atol=1e-10, rtol=1e-10, msg=lambda m: f"{name}: {m}")
    for got, expected in zip(compiled_paths.buffers(), conv.buffers(), strict=True):
        assert_close(got, expected, atol=1e-12, rtol=1e-12)
    if not training:
        with torch.no_grad():
            monkeypatch.undo()
            folded = FoldedConvWaveNet(conv)(x, y, layout=ItemRow.of(x, y))
            monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
            assert_close(FoldedConvWaveNet(conv)(x, y, layout=ItemRow.of(x, y, compiled=True)), folded,
                         atol=1e-10, rtol=1e-10)


def test_control_a_wrong_earlier_tap_fails_the_check(make_random_tree, monkeypatch):
    """Negative control: gathered taps that read one position too far back miss the eager logits by far."""
    conv = small_conv(make_random_tree, 8, seed=4, dtype=torch.float64).train()
    x, y = varied_batches(1, 12, seed=5)[0]
    with torch.no_grad():
        expected, _ = conv(x, y)
        earlier_reads = ItemRow.earlier_reads

        def one_too_far(row, dilation):
            reads, source = earlier_reads(row, dilation)
            return (reads - 1).clamp(min=0), source

        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        monkeypatch.setattr(ItemRow, "earlier_reads", one_too_far)
        logits, _ = conv(x, y, layout=ItemRow.of(x, y, compiled=True))
    valid = y != IGNORE_INDEX
    assert (logits[valid] - expected[valid]).abs().max() > 1e-2


def test_a_compiled_layout_carries_what_the_graph_reads():
    """The indices of the compiled path for every dilation from 4 below the longest item (level 1, at dilation 2,
    runs on level 0's pair table), and a pack index even for a batch without padding, so that padded and
    unpadded batches run one graph."""
    x, y = pad_items(encode_items(["abcdefghij"[:n] for n in (5, 5, 5)], Vocab(tuple(".abcdefghij"))))
    layout = ItemRow.of(x, y, compiled=True)
    assert layout.pack_index is not None and ItemRow.of(x, y).pack_index is None  # no padding here
    assert sorted(key for key in layout.indices) == [("earlier_reads", 4), ("earlier_source", 4)]
    reads, source = layout.earlier_reads(4)
    # each item: offsets 0-5 at positions 6k .. 6k + 5; offsets 4 and 5 read 4 back, the others the all-dot node
    assert reads.tolist() == [0, 1, 6, 7, 12, 13]
    assert source.tolist() == [0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 3, 4, 0, 0, 0, 0, 5, 6]


# ---- compiled: the same losses, few compilations ----

@has_compiler
def test_compiled_training_equals_eager_with_one_graph_for_every_batch(make_random_tree):
    """24 Adam steps on batches of varied lengths, compiled and eager from the same weights: the same losses
    (float32, within 1e-4) and the same weights after; one graph compiled for all 24 batches."""
    eager = small_conv(make_random_tree, 8, seed=7).train()
    compiled = copy.deepcopy(eager)
    forward = compile_model(compiled)
    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-2) for m in (eager, compiled)]
    before = compilations()
    losses = {"eager": [], "compiled": []}
    for x, y in varied_batches(24, 16, seed=11):
        for name, model, optimizer in (("eager", eager, optimizers[0]), ("compiled", forward, optimizers[1])):
            compiled_layout = name == "compiled"
            _, loss = model(x, y, layout=ItemRow.of(x, y, compiled=compiled_layout))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses[name].append(loss.item())
    assert compilations() - before == 1
    assert_close(torch.tensor(losses["compiled"]), torch.tensor(losses["eager"]), atol=1e-4, rtol=0)
    for p, q in zip(compiled.parameters(), eager.parameters(), strict=True):
        assert_close(p, q, atol=1e-3, rtol=1e-3)
    for p, q in zip(compiled.buffers(), eager.buffers(), strict=True):
        assert_close(p.float(), q.float(), atol=1e-3, rtol=1e-3)


@has_compiler
def test_compiled_evaluation_equals_eager_and_compiles_once(make_random_tree):
    """A split's loss through the compiled folded form equals the eager one; a second evaluation (a new folded
    model, as after every training step) and another split compile nothing more."""
    conv = small_conv(make_random_tree, 8, seed=9).eval()
    words = words_of(torch.randint(0, 21, (300,), generator=torch.Generator().manual_seed(2)).tolist(), 13)
    expected = SplitEvaluator(words, VOCAB).loss(conv)
    evaluator = SplitEvaluator(words, VOCAB, compile=True)
    before = compilations()
    assert evaluator.loss(conv) == pytest.approx(expected, abs=1e-5)
    first = compilations() - before
    assert 1 <= first <= 2  # one graph; two where the first batch is a short one that skips a level
    with torch.no_grad():
        conv.head.bias.add_(0.1)  # new weights, a new folded model
    expected = SplitEvaluator(words, VOCAB).loss(conv)
    assert evaluator.loss(conv) == pytest.approx(expected, abs=1e-5)
    assert SplitEvaluator(words[:100], VOCAB, compile=True).loss(conv) == pytest.approx(
        SplitEvaluator(words[:100], VOCAB).loss(conv), abs=1e-5)
    assert compilations() - before == first


def test_compile_paths_keep_gradients_for_every_level(make_random_tree, monkeypatch):
    """Every level learns on the compiled paths too (a level whose taps never reach the graph would get none)."""
    conv = small_conv(make_random_tree, 32, seed=12, dtype=torch.float64).train()
    x, y = varied_batches(1, 12, seed=6)[0]
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    _, loss = conv(x, y, layout=ItemRow.of(x, y, compiled=True))
    loss.backward()
    assert all(level.conv.weight.grad.abs().sum() > 0 for level in conv.levels)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("block_size", [8, 32])
def test_the_benchmarks_compiled_macs_are_what_the_compiled_paths_do(make_random_tree, block_size, mode,
                                                                      monkeypatch):
    """benchmarks/compare.py --compile divides by compare_workloads.compiled_macs: the multiply-adds that a flop
    counter sees when the compiled paths run (in eager mode, as in the first test)."""
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks import compare_workloads as cw

    aten = torch.ops.aten
    mapping = {aten.addmm_: lambda c, a, b, *args, out_shape=None, **kw: 2 * a[0] * a[1] * b[1],
               aten.mv: lambda a, b, *args, out_shape=None, **kw: 2 * a[0] * a[1]}
    conv = small_conv(make_random_tree, block_size, seed=8).train(mode == "train")
    x, y = varied_batches(1, 16, seed=block_size)[0]
    layout = ItemRow.of(x, y, compiled=True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    forms = {"conv": lambda: conv(x, y, layout=layout)[1]}
    if mode == "eval":
        folded = FoldedConvWaveNet(conv)
        forms["conv_folded"] = lambda: folded(x, y, layout=layout)
    for form, forward in forms.items():
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            if mode == "train":
                forward().backward()
            else:
                with torch.no_grad():
                    forward()
        assert counter.get_total_flops() == 2 * cw.packed_macs(conv.config, y, form + cw.COMPILED, mode), form


def test_compiled_batches_share_one_length_and_train_as_before(make_random_tree):
    """For a compiled model every training batch is padded to the longest item's length: a convolution's
    backward over the padded batch (the gated arch's) would otherwise fix each batch's length in a new graph.
    The extra padding changes no loss."""
    from wavenet_conv.training.batches import NameBatches

    items = encode_items(words_of(torch.randint(0, 21, (64,), generator=torch.Generator().manual_seed(4)).tolist(),
                                  17), VOCAB)
    padded, plain = (NameBatches(items, 16, "cpu", seed=0, compiled=compiled) for compiled in (True, False))
    conv = small_conv(make_random_tree, 8, seed=5).train()
    for _ in range(4):
        x, y, options = padded.next()
        x_plain, y_plain, plain_options = plain.next()
        assert x.shape[1] == 1 + max(len(item) for item in items) >= x_plain.shape[1]
        assert_close(conv(x, y, **options)[1], conv(x_plain, y_plain, **plain_options)[1], atol=1e-6, rtol=1e-6)
