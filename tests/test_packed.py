"""PackedConvWaveNet computes ConvWaveNet's function: eval logits equal the tree's, training losses, gradients
and batch-norm running statistics equal ConvWaveNet's, on items of every length."""
import copy

import pytest
import torch

from wavenet_conv.config import ModelConfig
from wavenet_conv.conv import ConvWaveNet
from wavenet_conv.data import build_windows, encode_items, pad_items
from wavenet_conv.packed import PackedConvWaveNet, PackedItems


def test_layout_of_two_items():
    # items "abc" and "d": row 0 is the all-dot node, then a, b, c, d
    packed = PackedItems.from_items([[1, 2, 3], [4]], block_size=8)
    assert packed.tokens.tolist() == [0, 1, 2, 3, 4]
    assert packed.previous.tolist() == [0, 0, 1, 2, 0]  # each item starts after its '.'
    # dilation 2: only 'c' has a character two steps back (a); dilation 4: none
    assert [e.tolist() for e in packed.earlier] == [[0, 0, 0, 1, 0], [0, 0, 0, 0, 0]]
    # predictions in build_windows order: a from '........', b, c, '.', then d from '........', '.'
    assert packed.window_rows.tolist() == [0, 1, 2, 3, 0, 4]
    assert packed.n_predictions == 6


@pytest.mark.parametrize("block_size", [2, 8, 32])
def test_eval_logits_equal_the_tree(block_size, make_random_tree, lecture_split, vocab, torch_device):
    words = lecture_split[1][:40]
    tree = make_random_tree(ModelConfig(len(vocab), block_size, 6, 16), seed=block_size, device=torch_device)
    x, y = build_windows(words, vocab, block_size)
    expected, expected_loss = tree(x.to(torch_device), y.to(torch_device))
    model = PackedConvWaveNet(ConvWaveNet.from_tree(tree)).eval()
    packed = PackedItems.from_items(encode_items(words, vocab), block_size).to(torch_device)
    logits, loss = model(packed, y.to(torch_device))
    torch.testing.assert_close(logits[packed.window_rows], expected)
    torch.testing.assert_close(loss, expected_loss)


@pytest.mark.parametrize("block_size", [2, 8, 16])
def test_training_step_equals_convwavenet(block_size, make_random_tree, vocab, torch_device):
    # lengths 1 to 12: items shorter and longer than every dilation
    generator = torch.Generator().manual_seed(block_size)
    items = [torch.randint(1, len(vocab), (n,), generator=generator).tolist() for n in [1, 12, 3, 2, 7, 1, 5]]
    words = [vocab.decode(it) for it in items]
    tree = make_random_tree(ModelConfig(len(vocab), block_size, 6, 16), seed=block_size, device=torch_device)
    conv = ConvWaveNet.from_tree(tree).train()
    model = PackedConvWaveNet(copy.deepcopy(conv)).train()
    x, y = pad_items(items)
    _, expected_loss = conv(x.to(torch_device), y.to(torch_device))
    expected_loss.backward()
    _, windows_y = build_windows(words, vocab, block_size)
    _, loss = model(PackedItems.from_items(items, block_size).to(torch_device), windows_y.to(torch_device))
    loss.backward()
    torch.testing.assert_close(loss, expected_loss)
    for (name, expected), (_, got) in zip(conv.named_parameters(), model.conv.named_parameters()):
        torch.testing.assert_close(got.grad, expected.grad, msg=name)
    for (name, expected), (_, got) in zip(conv.named_buffers(), model.conv.named_buffers()):
        torch.testing.assert_close(got, expected, msg=name)


def test_dot_rows_matter_in_training(make_random_tree, vocab):
    """Negative control: ConvWaveNet's statistics count the all-dot positions; leaving them out changes the loss."""
    items = [[1, 2, 3], [4, 5], [6]]
    words = [vocab.decode(it) for it in items]
    tree = make_random_tree(ModelConfig(len(vocab), 8, 6, 16), seed=3)
    model = PackedConvWaveNet(ConvWaveNet.from_tree(tree)).train()
    packed = PackedItems.from_items(items, 8)
    _, windows_y = build_windows(words, vocab, 8)
    _, loss = model(packed, windows_y)
    model.dot_rows = lambda packed, level: 1  # the all-dot node counted once, as if it were one position
    _, miscounted = model(packed, windows_y)
    assert not torch.allclose(loss, miscounted)


@pytest.mark.parametrize("block_size", [4, 16])
def test_time_major_layout_equals_item_major(block_size, make_random_tree, vocab, torch_device):
    """Items of one length, time-major (shifted matmuls), against the same items item after item (gathers):
    eval logits without gradients (the cached folded weights), and a training loss and its gradients."""
    generator = torch.Generator().manual_seed(block_size)
    items = torch.randint(1, len(vocab), (9, 6), generator=generator).tolist()  # 9 items of 6 characters
    words = [vocab.decode(it) for it in items]
    tree = make_random_tree(ModelConfig(len(vocab), block_size, 6, 16), seed=block_size, device=torch_device)
    _, y = build_windows(words, vocab, block_size)
    y = y.to(torch_device)
    runs = []
    for time_major in (False, True):
        packed = PackedItems.from_items(items, block_size, time_major=time_major).to(torch_device)
        model = PackedConvWaveNet(ConvWaveNet.from_tree(tree)).eval()
        with torch.no_grad():
            logits, _ = model(packed, y)
        _, loss = model.train()(packed, y)
        loss.backward()
        runs.append((logits[packed.window_rows], loss, [p.grad for p in model.parameters()]))
    (logits, loss, grads), (tm_logits, tm_loss, tm_grads) = runs
    torch.testing.assert_close(tm_logits, logits)
    torch.testing.assert_close(tm_loss, loss)
    for got, expected in zip(tm_grads, grads):
        torch.testing.assert_close(got, expected)


def test_cached_eval_weights_follow_the_parameters(make_random_tree, vocab):
    tree = make_random_tree(ModelConfig(len(vocab), 8, 6, 16), seed=5)
    model = PackedConvWaveNet(ConvWaveNet.from_tree(tree)).eval()
    packed = PackedItems.from_items([[1, 2, 3, 4]], 8)
    with torch.no_grad():
        before, _ = model(packed)
        model.conv.levels[2].bn.running_mean += 0.5  # an in-place change: the cache must notice
        after, _ = model(packed)
        uncached, _ = PackedConvWaveNet(model.conv).eval()(packed)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, uncached)


def test_time_major_needs_one_length():
    with pytest.raises(ValueError, match="one length"):
        PackedItems.from_items([[1, 2], [3]], 8, time_major=True)
