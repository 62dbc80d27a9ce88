"""The conv form is the lecture's tree: the same logits at every position, the same gradients, causal,
blind to right padding in training, and the checks fail loudly on the classic bugs (negative controls).

Every comparison pairs the conv's logits at each valid position of a padded batch of whole items with the tree's
logits on that position's window, as the lecture's build_dataset makes it (`paired_logits`): the real tests and
the negative controls run that same check. Models have random weights and random batch-norm gamma, beta and
running statistics (conftest.random_tree). Shape legend: b batch, t time, c channels, h hidden, k taps, v vocab.
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.testing import assert_close

from wavenet_conv.data.words import IGNORE_INDEX, Vocab, build_windows, encode_items, pad_items
from wavenet_conv.models import conv as conv_module
from wavenet_conv.models import packing
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.conv import ConvWaveNet
from wavenet_conv.models.folded import FoldedConvWaveNet
from wavenet_conv.models.packing import ItemRow

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
LARGE_GAP = 1e-2  # a broken conv misses by at least this much; the tolerances above are far below it
ALPHABET = "abcdefg"
VOCAB = Vocab(tuple("." + ALPHABET))
BLOCK_SIZES = [2, 4, 8, 16, 32]


def small_config(block_size, vocab=VOCAB):
    return ModelConfig(vocab_size=len(vocab), block_size=block_size, n_embd=5, n_hidden=12)


def random_words(block_size, seed=0):
    """Items of length 0, shorter than, equal to and longer than block_size, in mixed order."""
    g = torch.Generator().manual_seed(seed)
    lengths = [block_size + 1, 0, 2 * block_size + 3, 1, block_size - 1, block_size, 3]
    lengths += torch.randint(0, 2 * block_size + 1, (3,), generator=g).tolist()
    return ["".join(ALPHABET[i] for i in torch.randint(0, len(ALPHABET), (n,), generator=g).tolist())
            for n in lengths]


def names_like_words(block_size, seed=0):
    """Like names at a long block: mostly short items (0-4 characters), two longer than half the block. At
    the upper dilations most positions then lie in items no longer than the dilation, so the module runs on
    the sub-row of the longer items only (`long_items_conv`)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 5, (10,), generator=g).tolist() + [block_size + 1, block_size // 2 + 1]
    lengths = [lengths[i] for i in torch.randperm(len(lengths), generator=g).tolist()]
    return ["".join(ALPHABET[i] for i in torch.randint(0, len(ALPHABET), (n,), generator=g).tolist())
            for n in lengths]


WORDS = {"mixed": random_words, "names-like": names_like_words}


def paired_logits(tree, conv, words, vocab=VOCAB):
    """(conv logits at every valid position of the padded batch, tree logits on each position's window, positions).

    Row k of all three is the k-th prediction of build_windows: item by item, position by position.
    """
    device = tree.head.weight.device
    x, y = pad_items(encode_items(words, vocab))  # b t
    windows, targets = build_windows(words, vocab, tree.config.block_size)  # n block, n
    valid = y != IGNORE_INDEX  # b t
    assert torch.equal(y[valid], targets), "the padded batch and the windows must be the same predictions"
    positions = torch.arange(x.shape[1]).expand_as(x)[valid]  # n: each prediction's position t in its item
    with torch.no_grad():
        conv_logits = conv(x.to(device))[0][valid.to(device)]  # n v
        tree_logits = tree(windows.to(device))[0]  # n v
    return conv_logits, tree_logits, positions


def logit_gaps(tree, conv, words, vocab=VOCAB):
    """max over the vocabulary of |conv - tree| for each prediction, and each prediction's position."""
    conv_logits, tree_logits, positions = paired_logits(tree, conv, words, vocab)
    return (conv_logits - tree_logits).abs().amax(-1).cpu(), positions


def max_logit_gap(tree, conv, words, vocab=VOCAB):
    return logit_gaps(tree, conv, words, vocab)[0].max().item()


def assert_equivalent(tree, conv, words, vocab=VOCAB):
    conv_logits, tree_logits, _ = paired_logits(tree, conv, words, vocab)
    tol = TOLERANCE[tree_logits.dtype]
    assert_close(conv_logits, tree_logits, atol=tol, rtol=tol)


# ---- logits: equal at every position after the copy, different before it ----

@pytest.mark.parametrize("words_of", WORDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("block_size", BLOCK_SIZES)
def test_conv_logits_equal_tree_logits_at_every_position(make_random_tree, torch_device, block_size, dtype,
                                                         words_of):
    config = small_config(block_size)
    tree = make_random_tree(config, seed=block_size, dtype=dtype, device=torch_device)
    words = WORDS[words_of](block_size, seed=block_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        conv = ConvWaveNet(config).to(device=torch_device, dtype=dtype).eval()

    assert max_logit_gap(tree, conv, words) > LARGE_GAP  # before the weight copy: another model
    with pytest.raises(AssertionError):
        assert_equivalent(tree, conv, words)

    conv.load_state_dict(ConvWaveNet.from_tree(tree).state_dict())
    assert not conv.training
    assert_equivalent(tree, conv, words)  # the whole mixed-length batch at once
    for word in words:  # and each item alone: a batch without padding, down to the empty item
        assert_equivalent(tree, conv, [word])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                    reason="TF32 needs an Ampere or newer GPU")
def test_tf32_convolutions_break_float32_agreement_so_cuda_turns_them_off(make_random_tree):
    """Negative control for resolve_device's CUDA setting: with cuDNN's default TF32 the float32 check fails."""
    config = ModelConfig(vocab_size=len(VOCAB), block_size=8, n_embd=24, n_hidden=128)  # wide enough to round
    tree = make_random_tree(config, seed=1, dtype=torch.float32, device="cuda")
    conv = ConvWaveNet.from_tree(tree).to("cuda").eval()
    words = random_words(8, seed=1)
    assert not torch.backends.cudnn.allow_tf32  # as resolve_device("cuda") leaves it (conftest does the same)
    assert_equivalent(tree, conv, words)
    try:
        torch.backends.cudnn.allow_tf32 = True  # torch's default
        with pytest.raises(AssertionError):
            assert_equivalent(tree, conv, words)
    finally:
        torch.backends.cudnn.allow_tf32 = False


def test_conv_equals_tree_on_a_non_names_vocabulary(make_random_tree):
    words = ["O'Brien", "Ann Marie", "St. John", "Zoë", "Ωmega", "", "x"]
    vocab = Vocab.from_words(words)  # '.' inside an item is a character token of its own
    tree = make_random_tree(small_config(4, vocab), seed=1)
    assert_equivalent(tree, ConvWaveNet.from_tree(tree), words, vocab)


def test_from_tree_follows_device_dtype_and_mode(make_random_tree, torch_device):
    tree = make_random_tree(small_config(4), dtype=torch.float32, device=torch_device)
    for training in (False, True):
        conv = ConvWaveNet.from_tree(tree.train(training))
        assert conv.training == training
        for tensor in conv.parameters():
            assert tensor.dtype == torch.float32 and tensor.device.type == torch_device.type


# ---- the conversion is exact both ways ----

def assert_same_state(a, b):
    a, b = a.state_dict(), b.state_dict()
    assert list(a) == list(b)
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("block_size", [2, 8, 32])
def test_round_trip_is_exact(make_random_tree, block_size, dtype):
    tree = make_random_tree(small_config(block_size), seed=3, dtype=dtype)
    conv = ConvWaveNet.from_tree(tree)
    back = conv.to_tree()
    assert_same_state(back, tree)
    assert back.training == tree.training and back.head.weight.dtype == dtype
    for (_, bn), (_, bn_back) in zip(tree.levels, back.levels, strict=True):
        assert (bn_back.eps, bn_back.momentum) == (bn.eps, bn.momentum)
    assert_same_state(ConvWaveNet.from_tree(back), conv)


# ---- gradients ----

def tree_grads_in_conv_layout(tree):
    """The tree's gradients, named and shaped as the conv's parameters: the conversion applied to gradients."""
    grads = {"embedding.weight": tree.embedding.weight.grad}
    for i, (linear, bn) in enumerate(tree.levels):
        grads[f"levels.{i}.conv.weight"] = rearrange(linear.weight.grad, "(k c) h -> h c k", k=2)
        grads[f"levels.{i}.bn.weight"] = bn.gamma.grad
        grads[f"levels.{i}.bn.bias"] = bn.beta.grad
    grads["head.weight"] = rearrange(tree.head.weight.grad, "h v -> v h")
    grads["head.bias"] = tree.head.bias.grad
    return grads


def backward_summed_losses(tree, conv, words):
    """Backward through the conv's loss summed over every position and the tree's summed over every window.

    The two sums (and the two models' own mean losses) must be equal before any gradient is compared.
    """
    device = tree.head.weight.device
    x, y = (t.to(device) for t in pad_items(encode_items(words, VOCAB)))
    windows, targets = (t.to(device) for t in build_windows(words, VOCAB, tree.config.block_size))
    logits, mean_loss = conv(x, y)
    conv_loss = F.cross_entropy(rearrange(logits, "b t v -> (b t) v"), rearrange(y, "b t -> (b t)"),
                                ignore_index=IGNORE_INDEX, reduction="sum")
    tree_logits, tree_mean_loss = tree(windows, targets)
    tree_loss = F.cross_entropy(tree_logits, targets, reduction="sum")
    assert_close(conv_loss, tree_loss, atol=1e-10, rtol=1e-10)
    assert_close(mean_loss, tree_mean_loss, atol=1e-10, rtol=1e-10)
    conv_loss.backward()
    tree_loss.backward()


@pytest.mark.parametrize("block_size, words_of", [(2, "mixed"), (8, "mixed"), (16, "mixed"), (16, "names-like"),
                                                  (32, "names-like")])
def test_gradients_equal_the_summed_tree_gradients(make_random_tree, torch_device, block_size, words_of):
    """Eval mode: d(conv's summed loss over every position)/dW = sum over windows of d(tree loss)/dW, mapped."""
    tree = make_random_tree(small_config(block_size), seed=5, device=torch_device)
    conv = ConvWaveNet.from_tree(tree)
    backward_summed_losses(tree, conv, WORDS[words_of](block_size, seed=5))

    expected = tree_grads_in_conv_layout(tree)
    got = {name: p.grad for name, p in conv.named_parameters()}
    assert set(got) == set(expected)
    for name, grad in got.items():
        assert grad.abs().sum() > 0, name  # a vanishing gradient would make the comparison vacuous
        assert_close(grad, expected[name], atol=1e-10, rtol=1e-10, msg=lambda m: f"{name}: {m}")


# ---- causality ----

@pytest.mark.parametrize("block_size", [4, 8])
def test_future_and_too_old_tokens_never_matter(make_random_tree, block_size):
    assert_causal_with_exactly_the_window(ConvWaveNet.from_tree(make_random_tree(small_config(block_size), seed=7)))


def assert_causal_with_exactly_the_window(conv, seed=7):
    """Later tokens never move earlier logits; at t, tokens before the window t - block_size + 1 .. t never matter."""
    block_size = conv.config.block_size
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(VOCAB), (3, 3 * block_size), generator=g)  # b t
    idx[:, 0] = 0  # items start with '.'
    logits = conv(idx)[0].detach()

    def changed(positions):
        """idx with new tokens (each differing from the old one) at the given positions, never the leading '.'."""
        positions = [p for p in positions if p > 0]
        other = idx.clone()
        other[:, positions] = (idx[:, positions] + 1 + torch.randint(0, len(VOCAB) - 1, (3, len(positions)),
                                                                     generator=g)) % len(VOCAB)
        return conv(other)[0].detach()

    T = idx.shape[1]
    for t in range(T - 1):
        after = changed(list(range(t + 1, T)))
        assert_close(after[:, : t + 1], logits[:, : t + 1], atol=0, rtol=0)  # the future never leaks back
        assert (after[:, t + 1] - logits[:, t + 1]).abs().max() > 1e-6  # ...while it does change later logits
    for t in range(block_size, T):
        oldest = t - block_size + 1  # the first token of the window ending at t
        assert_close(changed(list(range(oldest)))[:, t], logits[:, t], atol=0, rtol=0)
        assert (changed([oldest])[:, t] - logits[:, t]).abs().max() > 1e-6


@pytest.mark.parametrize("block_size", [2, 4, 8])
def test_receptive_field_is_exactly_the_window(make_random_tree, block_size, monkeypatch):
    """Autograd: logits[:, t] depend on level 0's nodes (one per position p, over the tokens p - 1 and p) exactly
    at the window's pairs, t, t - 2, .., t - block_size + 2; a pair before the item is its first node, over '.'.

    Level 0 is a table of token pairs, so the probe is added to its nodes as each position looks them up; level
    1 then runs its Conv1d over those rows instead of its taps on the table (which the node-by-node checks
    cover)."""
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(block_size), seed=9))
    idx = torch.randint(0, len(VOCAB), (2, 2 * block_size + 1), generator=torch.Generator().manual_seed(9))
    idx[:, 0] = 0  # items start with '.'
    probe = torch.zeros(2, idx.shape[1], conv.config.n_hidden, dtype=torch.float64, requires_grad=True)
    first_level = packing.first_level
    # the conv runs the batch packed as rows, one per position: (b t) h
    monkeypatch.setattr(conv_module, "first_level",
                        lambda *args: first_level(*args).rows() + rearrange(probe, "b t h -> (b t) h"))
    logits = conv(idx)[0]  # b t v
    for t in range(idx.shape[1]):
        (grad,) = torch.autograd.grad(logits[:, t].sum(), probe, retain_graph=True)
        sensitivity = grad.abs().sum((0, 2))  # t: how much each position's level-0 node moves logits[:, t]
        window = torch.zeros_like(sensitivity, dtype=torch.bool)
        window[[max(0, t - p) for p in range(0, block_size, 2)]] = True
        assert (sensitivity[window] > 1e-9).all(), t
        assert (sensitivity[~window] == 0).all(), t


# ---- the start of an item: the all-dot node, not a token prefix and not zeros ----

def token_prefix_logits(conv, idx):
    """The previous design, written out: block_size - 1 '.' tokens in front of each item, unpadded convolutions
    that shorten time by their dilation, eval-mode batch norm. The conv must equal it exactly."""
    x = rearrange(conv.embedding(F.pad(idx, (conv.config.block_size - 1, 0), value=0)), "b t c -> b c t")
    for level in conv.levels:
        x = torch.tanh(level.bn(level.conv(x)))  # b c (pad + t) -> b h (pad + t - d)
    return conv.head(rearrange(x, "b h t -> b t h"))


@pytest.mark.parametrize("block_size", [2, 4, 8, 16, 32])
def test_all_dot_node_padding_equals_the_token_prefix(make_random_tree, block_size):
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(block_size), seed=29))
    x, _ = pad_items(encode_items(random_words(block_size, seed=29), VOCAB))
    with torch.no_grad():
        expected = token_prefix_logits(conv, x)
        assert_close(conv(x)[0], expected, atol=1e-10, rtol=1e-10)
        assert conv(x)[0].shape[1] == x.shape[1]  # time stays item length + 1: no prefix is computed


def conv1d_calls(conv, x, y, inference=False):
    """(module, input shape, output shape) of every nn.Conv1d call in one forward and backward, or in one
    forward without autograd (inference)."""
    calls = []
    hooks = [module.register_forward_hook(lambda m, inputs, out: calls.append((m, inputs[0].shape, out.shape)))
             for module in conv.modules() if isinstance(module, torch.nn.Conv1d)]
    try:
        if inference:
            with torch.no_grad():
                conv(x, y)
        else:
            _, loss = conv(x, y)
            loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    return calls


def level_one_on_the_row(monkeypatch):
    """Level 0's nodes gathered into the row's positions before level 1, so that level 1 runs on the row as the
    levels above it do, not its taps on level 0's pair table (`packing.pair_rows_conv`)."""
    first_level = packing.first_level
    monkeypatch.setattr(conv_module, "first_level", lambda *args: first_level(*args).rows())


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_level_one_runs_its_taps_on_level_zeros_pair_table(make_random_tree, training):
    """Level 1 applies each tap to level 0's table of token pairs and looks up each position's two rows: its
    Conv1d module is not called, the result is the node-by-node one, and every level gets a gradient."""
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(8), seed=31)).train(training)
    x, y = pad_items(encode_items(random_words(8, seed=31), VOCAB))
    reference = copy.deepcopy(conv)
    calls = conv1d_calls(conv, x, y)
    assert conv.levels[1].conv not in [m for m, _, _ in calls]
    assert_node_by_node(conv, reference, x, y)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_every_level_runs_its_conv1d_module(make_random_tree, training, monkeypatch):
    """On the row, with no level having most of its positions at an item's start, forward hooks see each
    level's nn.Conv1d above level 0 (a table of token pairs) called once per forward, in eval and in training
    alike, on the packed row (1, c, dilation + n), n the valid positions, not on the padded (b, c, t) batch,
    with zero filler up to a multiple of packing.ROW_QUANTUM positions."""
    level_one_on_the_row(monkeypatch)
    monkeypatch.setattr(packing, "NEAR_START_SHARE", 2.0)  # no level runs its taps as matmuls
    block_size = 8
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(block_size), seed=31)).train(training)
    x, y = pad_items(encode_items(random_words(block_size, seed=31), VOCAB))
    calls = conv1d_calls(conv, x, y)
    assert [m for m, _, _ in calls] == [level.conv for level in conv.levels[1:]]
    n = int((y != IGNORE_INDEX).sum())
    assert n < x.numel()  # the packed row is really another shape than the padded batch
    for (m, shape_in, shape_out), level in zip(calls, conv.levels[1:], strict=True):
        row = level.dilation + n
        assert tuple(shape_in) == (1, m.in_channels, row + -row % packing.ROW_QUANTUM)
        assert tuple(shape_out) == (1, m.out_channels, shape_in[2] - level.dilation)
    assert all(level.conv.weight.grad.abs().sum() > 0 for level in conv.levels)  # gradients flow through conv1d


def name_length_words(seed):
    """Items of 5-7 characters, as names are: at dilation 2 under a third of the positions lie at an item's
    start, at dilation 4 over half."""
    g = torch.Generator().manual_seed(seed)
    return ["".join(ALPHABET[i] for i in torch.randint(0, len(ALPHABET), (n,), generator=g).tolist())
            for n in (5, 7, 6, 5, 7, 6)]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_a_level_mostly_at_item_starts_runs_its_taps_as_matmuls(make_random_tree, training, monkeypatch):
    """Name-length items at block 8, on the row: the dilation-2 level runs its Conv1d module; at dilation 4,
    where over packing.NEAR_START_SHARE of the outputs would be replaced, the level runs its two taps as matmuls
    on the module's weight, without calling it. The result is the node-by-node one, every level with a
    gradient."""
    level_one_on_the_row(monkeypatch)
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(8), seed=37)).train(training)
    x, y = pad_items(encode_items(name_length_words(seed=37), VOCAB))
    layout = ItemRow.of(x, y)
    assert [layout.mostly_near_start(d) for d in (2, 4)] == [False, True]
    reference = copy.deepcopy(conv)
    calls = conv1d_calls(conv, x, y)
    assert [m for m, _, _ in calls] == [conv.levels[1].conv]
    assert_node_by_node(conv, reference, x, y)


def assert_node_by_node(conv, reference, x, y):
    """conv's logits (in its mode) are the node-by-node ones of `reference` (its copy before the forward), and
    every level got a gradient (each still learns, whichever path its convolution took)."""
    if conv.training:
        expected_logits, _, _ = reference_training_forward(reference, x, y)
    else:
        with torch.no_grad():
            expected_logits = token_prefix_logits(reference, x)[y != IGNORE_INDEX]
    with torch.no_grad():
        logits = conv(x, y)[0][y != IGNORE_INDEX]
    assert_close(logits, expected_logits, atol=1e-10, rtol=1e-10)
    assert all(level.conv.weight.grad.abs().sum() > 0 for level in conv.levels)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_a_level_with_few_long_items_convolves_only_those(make_random_tree, training, monkeypatch):
    """Names-like items at block 32, on the row: a level where under 3/4 of the positions lie in items longer than its
    dilation runs its module on the sub-row of those items, unpadded (1, c, n_long) -> (1, h, n_long - d); the
    others on the whole row. Either row is followed by zero filler up to a multiple of packing.ROW_QUANTUM
    positions. Every level runs its module once, and the result is the node-by-node one."""
    level_one_on_the_row(monkeypatch)
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(32), seed=35)).train(training)
    x, y = pad_items(encode_items(names_like_words(32, seed=35), VOCAB))
    lengths = (y != IGNORE_INDEX).sum(1)  # b: positions of each item
    n = int(lengths.sum())
    reference = copy.deepcopy(conv)
    calls = conv1d_calls(conv, x, y)
    assert [m for m, _, _ in calls] == [level.conv for level in conv.levels[1:]]
    sub_rows = 0
    for (m, shape_in, shape_out), level in zip(calls, conv.levels[1:], strict=True):
        d = level.dilation
        n_long = int(lengths[lengths > d].sum())
        sub_row = 4 * n_long < 3 * n
        sub_rows += sub_row
        row = n_long if sub_row else d + n
        row += -row % packing.ROW_QUANTUM
        assert (tuple(shape_in), tuple(shape_out)) == ((1, m.in_channels, row), (1, m.out_channels, row - d))
    assert sub_rows >= 2  # the words do reach the sub-row path, at more than one level
    assert_node_by_node(conv, reference, x, y)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_a_level_whose_dilation_passes_every_item_reads_only_the_all_dot_node(make_random_tree, training,
                                                                             monkeypatch):
    """Items of at most 4 positions at block 32: levels with dilation >= 4 skip the module (every earlier tap
    reads the all-dot node: a 1x1 convolution of the later tap), and the result is still the node-by-node one."""
    level_one_on_the_row(monkeypatch)
    monkeypatch.setattr(packing, "NEAR_START_SHARE", 2.0)  # the dilation-2 level on the row, by its module
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(32), seed=33)).train(training)
    x, y = pad_items(encode_items(["abc", "", "d", "efg", "ab"], VOCAB))  # longest: 4 positions
    reference = copy.deepcopy(conv)
    calls = conv1d_calls(conv, x, y)
    assert [m for m, _, _ in calls] == [level.conv for level in conv.levels[1:] if level.dilation < 4]
    assert_node_by_node(conv, reference, x, y)


def length_sorted_words(block_size, seed=0):
    """Three items of each length (0, 1, shorter than, equal to and longer than block_size), shortest first,
    as evaluation sorts them: runs of equally long items."""
    g = torch.Generator().manual_seed(seed)
    lengths = sorted({0, 1, block_size - 1, block_size, block_size + 1, 2 * block_size + 3}) * 3
    return ["".join(ALPHABET[i] for i in torch.randint(0, len(ALPHABET), (n,), generator=g).tolist())
            for n in sorted(lengths)]


@pytest.mark.parametrize("block_size", [2, 8, 32])
def test_inference_over_length_runs_runs_each_module_once_per_length(make_random_tree, block_size, monkeypatch):
    """In inference over items sorted by length, in runs long enough (here: any), each level's nn.Conv1d runs
    once per length longer than its dilation, on those items as they lie in the row, unpadded: (b, c, t) ->
    (b, h, t - d). The logits are the token-prefix ones, in the conv and in the folded form; with autograd on,
    the row runs as before. (Level 1 on the row: on its own it runs its taps on level 0's pair table.)"""
    level_one_on_the_row(monkeypatch)
    monkeypatch.setattr(packing, "LENGTH_RUN_POSITIONS", 1)
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(block_size), seed=41)).eval()
    x, y = pad_items(encode_items(length_sorted_words(block_size, seed=41), VOCAB))
    valid = y != IGNORE_INDEX
    with torch.no_grad():
        expected = token_prefix_logits(conv, x)[valid]
        logits = conv(x, y)[0][valid]
    calls = conv1d_calls(conv, x, y, inference=True)
    lengths = valid.sum(1).unique().tolist()  # ascending: each run's length
    items = {t: int((valid.sum(1) == t).sum()) for t in lengths}
    assert [(m, tuple(i), tuple(o)) for m, i, o in calls] == [
        (level.conv, (items[t], level.conv.in_channels, t), (items[t], level.conv.out_channels, t - level.dilation))
        for level in conv.levels[1:] for t in lengths if t > level.dilation]
    assert_close(logits, expected, atol=1e-10, rtol=1e-10)
    assert_close(FoldedConvWaveNet(conv)(x, y)[valid], expected, atol=1e-10, rtol=1e-10)
    assert [m for m, _, _ in conv1d_calls(conv, x, y)] == [level.conv for level in conv.levels[1:]]  # autograd: the row


def test_short_length_runs_run_the_row(make_random_tree, monkeypatch):
    """Runs shorter than LENGTH_RUN_POSITIONS on average (the quick benchmark's 500 names, ~300 positions a
    run, were slower per length) and unsorted items keep the packed row: one call per level (level 1 on the
    row too)."""
    level_one_on_the_row(monkeypatch)
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(8), seed=43)).eval()
    for words in (length_sorted_words(8, seed=43), random_words(8, seed=43)):
        x, y = pad_items(encode_items(words, VOCAB))
        calls = conv1d_calls(conv, x, y, inference=True)
        assert [m for m, _, _ in calls] == [level.conv for level in conv.levels[1:]]


# ---- negative controls: the same check must fail on the classic bugs ----

def zeros_before_items(x, row):
    return x.new_zeros(x.shape[1])  # c


def unfixed_first_pairs(conv, monkeypatch):
    """Broken on purpose: level 0 pairs each item's first '.' with the token before it in the packed row (the
    item before's last one), not with the '.' before the item."""
    monkeypatch.setattr(packing, "pair_index", lambda tokens, row, v: torch.roll(tokens, 1) * v + tokens)
    return conv


def zero_padded_levels(conv, monkeypatch):
    """Broken on purpose: each level reads zeros before each item, as Conv1d(padding=...) does (level 1 on the
    row, as the levels above; on level 0's pair table see `test_control_the_pair_table_path_before_items`)."""
    level_one_on_the_row(monkeypatch)
    for level in conv.levels:
        level.left_context = zeros_before_items
    return conv


@pytest.mark.parametrize("break_", [unfixed_first_pairs, zero_padded_levels])
@pytest.mark.parametrize("block_size", [4, 8])
def test_control_wrong_activations_before_items_fail_the_check(make_random_tree, block_size, break_, monkeypatch):
    tree = make_random_tree(small_config(block_size), seed=11)
    words = random_words(block_size, seed=11)
    assert_equivalent(tree, ConvWaveNet.from_tree(tree), words)  # the same check passes on the real conv
    broken = break_(ConvWaveNet.from_tree(tree), monkeypatch)
    with pytest.raises(AssertionError):
        assert_equivalent(tree, broken, words)
    gaps, positions = logit_gaps(tree, broken, words)
    assert gaps.max() > LARGE_GAP
    # exactly the classic symptom: wrong at the first block_size - 1 positions, right once the window is inside
    assert gaps[positions < block_size - 1].max() > LARGE_GAP
    assert gaps[positions >= block_size - 1].max() < TOLERANCE[torch.float64]


@pytest.mark.parametrize("block_size", [4, 8])
def test_control_zeros_before_items_fail_over_length_runs_too(make_random_tree, block_size, monkeypatch):
    """The length-run path reads the all-dot node through the same left context: zeros there break it at the
    first block_size - 1 positions of every item, as on the row."""
    monkeypatch.setattr(packing, "LENGTH_RUN_POSITIONS", 1)
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(block_size), seed=45)).eval()
    x, y = pad_items(encode_items(length_sorted_words(block_size, seed=45), VOCAB))
    valid = y != IGNORE_INDEX
    with torch.no_grad():
        expected = token_prefix_logits(conv, x)
        assert_close(conv(x, y)[0][valid], expected[valid], atol=1e-10, rtol=1e-10)
        gaps = (zero_padded_levels(conv, monkeypatch)(x, y)[0] - expected).abs().amax(-1)  # b t
    positions = torch.arange(x.shape[1]).expand_as(x)
    assert gaps[valid & (positions < block_size - 1)].max() > LARGE_GAP
    assert gaps[valid & (positions >= block_size - 1)].max() < TOLERANCE[torch.float64]


@pytest.mark.parametrize("block_size", [2, 8])
def test_control_c_k_weight_order_fails_the_check(make_random_tree, block_size):
    tree = make_random_tree(small_config(block_size), seed=13)
    words = random_words(block_size, seed=13)
    broken = ConvWaveNet.from_tree(tree)
    with torch.no_grad():
        for level, (linear, _) in zip(broken.levels, tree.levels, strict=True):
            level.conv.weight.copy_(rearrange(linear.weight, "(c k) h -> h c k", k=2))  # the wrong order
    with pytest.raises(AssertionError):
        assert_equivalent(tree, broken, words)
    assert max_logit_gap(tree, broken, words) > LARGE_GAP


# ---- training mode: right padding changes nothing ----

def train_step(conv, x, y, targets_for_bn=True):
    """One training-mode forward and backward; returns (loss, grads, running statistics, logits at valid positions)."""
    conv.zero_grad()
    if targets_for_bn:
        logits, loss = conv(x, y)
    else:  # plain batch norm: statistics over every position, padding included
        logits, _ = conv(x)
        loss = F.cross_entropy(rearrange(logits, "b t v -> (b t) v"), rearrange(y, "b t -> (b t)"),
                               ignore_index=IGNORE_INDEX)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in conv.named_parameters()}
    buffers = {name: b.clone() for name, b in conv.named_buffers()}
    return loss.detach(), grads, buffers, logits.detach()[y != IGNORE_INDEX]


def reference_training_forward(conv, x, y):
    """The conv's training mode written out node by node.

    Level i's node at position p fuses the nodes at p - 2**i and p; before position 0 stands the all-dot node,
    which is position 0's node (every item starts with '.'). A level's batch statistics are the mean and the
    unbiased variance over its nodes at valid positions (target not -1), each node once: so each item's
    all-dot node counts once. Returns (logits at valid positions, mean loss, [(batch mean, batch variance)]).
    """
    valid = y != IGNORE_INDEX  # b t
    nodes = conv.embedding.weight[x]  # b t c
    statistics = []
    for level in conv.levels:
        d, weight, bn = level.dilation, level.conv.weight, level.bn  # weight: h c k
        h = torch.stack([nodes[:, max(p - d, 0)] @ weight[:, :, 0].T + nodes[:, p] @ weight[:, :, 1].T
                         for p in range(x.shape[1])], dim=1)  # b t h
        counted = h[valid]  # nodes at valid positions
        mean, var = counted.mean(0), counted.var(0)
        statistics.append((mean, var))
        nodes = torch.tanh(bn.weight * (h - mean) / torch.sqrt(var + bn.eps) + bn.bias)
    logits = conv.head(nodes)[valid]  # n v
    return logits, F.cross_entropy(logits, y[valid]), statistics


@pytest.mark.parametrize("block_size, words_of", [(2, "mixed"), (8, "mixed"), (32, "mixed"), (16, "names-like"),
                                                  (32, "names-like")])
def test_packed_training_equals_the_node_by_node_reference_with_gradients(make_random_tree, block_size, words_of):
    """Training packs the batch into one row and replaces each item's first positions; the reference pads
    each item on its own. Same logits, loss and parameter gradients."""
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(block_size), seed=41)).train()
    x, y = pad_items(encode_items(WORDS[words_of](block_size, seed=41), VOCAB))
    reference = copy.deepcopy(conv)
    expected_logits, expected_loss, _ = reference_training_forward(reference, x, y)
    expected_loss.backward()
    logits, loss = conv(x, y)
    loss.backward()
    assert_close(logits[y != IGNORE_INDEX], expected_logits, atol=1e-10, rtol=1e-10)
    assert_close(loss, expected_loss, atol=1e-12, rtol=1e-12)
    for (name, p), q in zip(conv.named_parameters(), reference.parameters(), strict=True):
        assert_close(p.grad, q.grad, atol=1e-10, rtol=1e-10, msg=lambda m: f"{name}: {m}")


def reads_across_item_starts(row, dilation):
    """Broken on purpose: every position's earlier tap reads `dilation` back in the row, into the item before."""
    reads = torch.arange(dilation, row.n) - dilation  # m
    source = torch.cat([torch.zeros(dilation, dtype=torch.long), torch.arange(1, row.n - dilation + 1)])  # n
    return reads, source


@pytest.mark.parametrize("path", ["row", "taps", "pair table"])
@pytest.mark.parametrize("block_size", [4, 8])
def test_control_packed_items_without_the_start_fix_fail_the_check(make_random_tree, block_size, path,
                                                                   monkeypatch):
    """Broken on purpose: the packed row's items read the item before them, as plain packing does, on the
    Conv1d's row (nothing replaced), with the taps as matmuls (every earlier tap `dilation` back) and on level
    0's pair table (every earlier pair `dilation` back)."""
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(block_size), seed=43)).train()
    x, y = pad_items(encode_items(random_words(block_size, seed=43), VOCAB))
    with torch.no_grad():
        expected_logits, _, _ = reference_training_forward(conv, x, y)
        if path == "pair table":
            monkeypatch.setattr(packing, "earlier_pairs", lambda pairs, row, dilation: torch.roll(pairs, dilation))
        else:
            level_one_on_the_row(monkeypatch)
        if path == "row":
            monkeypatch.setattr(packing, "NEAR_START_SHARE", 2.0)
            monkeypatch.setattr(ItemRow, "crossing", lambda row, dilation: torch.zeros(0, dtype=torch.long))
        elif path == "taps":
            monkeypatch.setattr(packing, "NEAR_START_SHARE", 0.0)
            monkeypatch.setattr(ItemRow, "earlier_reads", reads_across_item_starts)
        logits, _ = conv(x, y)
    gaps = (logits[y != IGNORE_INDEX] - expected_logits).abs().amax(-1)  # n
    assert gaps.max() > LARGE_GAP


@pytest.mark.parametrize("block_size", [4, 8])
def test_control_the_pair_table_path_before_items(make_random_tree, block_size, monkeypatch):
    """Broken on purpose: level 1 on level 0's pair table reads another node than the all-dot one before each
    item (the pair ('.', 'a') for ('.', '.')): wrong at exactly the first block_size - 1 positions."""
    tree = make_random_tree(small_config(block_size), seed=49)
    words = random_words(block_size, seed=49)
    assert_equivalent(tree, ConvWaveNet.from_tree(tree), words)
    monkeypatch.setattr(packing, "ALL_DOT_PAIR", 1)
    gaps, positions = logit_gaps(tree, ConvWaveNet.from_tree(tree), words)
    assert gaps[positions < block_size - 1].max() > LARGE_GAP
    assert gaps[positions >= block_size - 1].max() < TOLERANCE[torch.float64]


def test_packed_training_wants_right_padding_only(make_random_tree):
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(4), seed=47)).train()
    x, y = pad_items(encode_items(["abc", "de"], VOCAB))
    y[0, 1] = IGNORE_INDEX  # a hole inside an item
    with pytest.raises(ValueError, match="right padding"):
        conv(x, y)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_items_must_start_with_the_dot(make_random_tree, training):
    """Every item's position 0 is its all-dot node, which the row shares: an item without its '.' is refused."""
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(4), seed=47)).train(training)
    x, y = pad_items(encode_items(["abc", "de"], VOCAB))
    x[1, 0] = VOCAB.stoi["d"]
    with pytest.raises(ValueError, match="start with '.'"):
        conv(x, y)
    with pytest.raises(ValueError, match="start with '.'"):
        conv(x)


def test_training_on_a_single_prediction_says_why_it_cannot(make_random_tree):
    """One valid position has no unbiased variance: a clear error, not NaN weights after the step."""
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(4), seed=48)).train()
    x, y = pad_items(encode_items([""], VOCAB))  # the empty item: one prediction, its end
    with pytest.raises(ValueError, match="at least 2 positions"):
        conv(x, y)


def test_training_mode_statistics_are_over_valid_nodes(make_random_tree):
    tree = make_random_tree(small_config(8), seed=23)
    words = random_words(8, seed=23)
    x, y = pad_items(encode_items(words, VOCAB))
    conv = ConvWaveNet.from_tree(tree).train()
    before = [(level.bn.running_mean.clone(), level.bn.running_var.clone()) for level in conv.levels]
    with torch.no_grad():
        expected_logits, expected_loss, statistics = reference_training_forward(conv, x, y)
        logits, loss = conv(x, y)
    assert_close(logits[y != IGNORE_INDEX], expected_logits, atol=1e-12, rtol=1e-12)
    assert_close(loss, expected_loss, atol=1e-12, rtol=1e-12)
    for level, (mean0, var0), (mean, var) in zip(conv.levels, before, statistics, strict=True):
        momentum = level.bn.momentum
        assert_close(level.bn.running_mean, (1 - momentum) * mean0 + momentum * mean, atol=1e-12, rtol=1e-12)
        assert_close(level.bn.running_var, (1 - momentum) * var0 + momentum * var, atol=1e-12, rtol=1e-12)


def test_training_is_blind_to_extra_right_padding(make_random_tree, torch_device):
    tree = make_random_tree(small_config(8), seed=17, device=torch_device)
    words = random_words(8, seed=17)  # mixed lengths: the batch already carries some right padding
    x, y = (t.to(torch_device) for t in pad_items(encode_items(words, VOCAB)))
    x_more, y_more = F.pad(x, (0, 5), value=0), F.pad(y, (0, 5), value=IGNORE_INDEX)  # 5 more padded steps
    conv = ConvWaveNet.from_tree(tree).train()

    loss, grads, buffers, logits = train_step(copy.deepcopy(conv), x, y)
    loss_more, grads_more, buffers_more, logits_more = train_step(copy.deepcopy(conv), x_more, y_more)
    assert_close(loss_more, loss, atol=1e-12, rtol=1e-12)
    assert_close(logits_more, logits, atol=1e-12, rtol=1e-12)
    assert set(grads) == set(grads_more)
    for name in grads:
        assert_close(grads_more[name], grads[name], atol=1e-12, rtol=1e-12, msg=lambda m: f"{name}: {m}")
    for name in buffers:  # running mean and variance (and the batch count) move identically
        assert_close(buffers_more[name], buffers[name], atol=1e-12, rtol=1e-12, msg=lambda m: f"{name}: {m}")
    assert any((buffers[name] - buf).abs().max() > 1e-6  # the step did move the statistics
               for name, buf in conv.named_buffers() if name.endswith("running_mean"))

    # negative control: batch norm over every position, padding included, depends on the padding
    plain_loss, _, plain_buffers, _ = train_step(copy.deepcopy(conv), x, y, targets_for_bn=False)
    plain_loss_more, _, plain_buffers_more, _ = train_step(copy.deepcopy(conv), x_more, y_more, targets_for_bn=False)
    assert (plain_loss_more - plain_loss).abs() > 1e-4
    assert max((plain_buffers_more[name] - plain_buffers[name]).abs().max().item()
               for name in plain_buffers if name.endswith("running_mean")) > 1e-3


# ---- the folded inference form ----

@pytest.mark.parametrize("block_size", [2, 8, 32])
def test_folded_equals_eval_conv(make_random_tree, torch_device, block_size):
    conv = ConvWaveNet.from_tree(make_random_tree(small_config(block_size), seed=19, device=torch_device))
    x, _ = pad_items(encode_items(random_words(block_size, seed=19), VOCAB))
    x = x.to(torch_device)
    folded = FoldedConvWaveNet(conv)
    with torch.no_grad():
        expected = conv(x)[0]
    assert_close(folded(x), expected, atol=1e-10, rtol=1e-10)
    # and on a batch that is all context: longer than any window
    long = torch.randint(0, len(VOCAB), (2, 3 * block_size), generator=torch.Generator().manual_seed(19))
    long[:, 0] = 0  # items start with '.'
    with torch.no_grad():
        assert_close(folded(long.to(torch_device)), conv(long.to(torch_device))[0], atol=1e-10, rtol=1e-10)
