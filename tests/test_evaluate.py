"""Full-split evaluation: the conv over whole items and the tree over windows give one number."""
import random

import pytest
import torch
import torch.nn.functional as F

from wavenet_conv.data.words import Vocab, build_windows, count_predictions, encode_items
from wavenet_conv.evaluate import main
from wavenet_conv.inference.evaluation import SplitEvaluator, item_batches, split_loss
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.conv import ConvWaveNet


def random_words(n, seed, alphabet="abcdefg'. "):
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 14))) for _ in range(n)]


def test_conv_over_items_equals_tree_over_windows(make_random_tree):
    words = random_words(300, seed=1)
    vocab = Vocab.from_words(words)
    tree = make_random_tree(ModelConfig(len(vocab), 8, 6, 10), seed=3)
    conv = ConvWaveNet.from_tree(tree)
    # the tree's number, straight from the lecture's recipe: every window, eval mode, mean cross-entropy
    X, Y = build_windows(words, vocab, 8)
    with torch.no_grad():
        expected = F.cross_entropy(tree(X)[0], Y).item()
    torch.testing.assert_close(split_loss(tree, words, vocab), expected)
    torch.testing.assert_close(SplitEvaluator(words, vocab).loss(conv), expected)


def test_evaluation_is_in_eval_mode_and_restores_the_mode(make_random_tree):
    words = random_words(50, seed=2)
    vocab = Vocab.from_words(words)
    conv = ConvWaveNet.from_tree(make_random_tree(ModelConfig(len(vocab), 4, 5, 7), seed=4)).train()
    running = [level.bn.running_mean.clone() for level in conv.levels]
    evaluator = SplitEvaluator(words, vocab)
    first = evaluator.loss(conv)
    assert conv.training
    assert all(torch.equal(a, level.bn.running_mean) for a, level in zip(running, conv.levels))
    assert evaluator.loss(conv) == first  # the cached batches give the same number again


def test_item_batches_cover_every_prediction_once():
    items = encode_items(random_words(500, seed=5), Vocab.from_words(random_words(500, seed=5)))
    batches = item_batches(items, max_positions=300)
    assert all(x.numel() <= 300 for x, _ in batches)
    assert sum(int((y != -1).sum()) for _, y in batches) == count_predictions(items)
    targets = sorted(tuple(row[row != -1].tolist()) for _, y in batches for row in y)
    assert targets == sorted(tuple(it + [0]) for it in items)


def test_cli_bad_checkpoint_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["-o", str(tmp_path / "nothing")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
