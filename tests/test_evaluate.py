"""Full-split evaluation: the conv over whole items and the tree over windows give one number."""
import json
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


def test_cli_evaluates_on_the_runs_own_input_with_its_report_sample(tmp_path, small_words_file, monkeypatch, capsys):
    """Without --input-file the run's recorded input is evaluated, as training reads it: the summary's losses,
    also where the report samples a big split (here every split over 20 items); a recorded file that is gone is
    a one-line error that names it. Names.txt, the default before, would not even fit this model's vocabulary."""
    from wavenet_conv import sample as sample_command
    from wavenet_conv import train
    from wavenet_conv.training import report

    monkeypatch.setattr(report, "FINAL_SAMPLE_ITEMS", 20)
    work_dir = tmp_path / "run"
    train.main(["-i", str(small_words_file), "-o", str(work_dir), "--max-steps", "5", "--batch-size", "16",
                "--threads", "1", "--num-samples", "0"])
    summary = json.loads((work_dir / "summary.json").read_text())
    out = capsys.readouterr().out
    assert "the final train loss is over a fixed sample of 20 of its 96 items" in out
    for where in (work_dir, work_dir / "model.pt"):
        main(["-o", str(where)])
        *notes, losses = capsys.readouterr().out.strip().splitlines()
        assert notes == ["the final train loss is over a fixed sample of 20 of its 96 items"]
        assert losses == f"train {summary['train_loss']:.4f} val {summary['val_loss']:.4f} test {summary['test_loss']:.4f}"
    sample_command.main(["-o", str(work_dir), "-n", "2"])
    assert "of 2 samples" in capsys.readouterr().out  # new names told from the run's own training items
    small_words_file.rename(tmp_path / "moved.txt")
    with pytest.raises(SystemExit) as exit_info:
        main(["-o", str(work_dir)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1
    assert str(small_words_file) in err and "--input-file" in err
    with pytest.raises(SystemExit):
        main(["-o", str(work_dir), "-i", "data/names.txt"])  # another vocabulary: refused, as before
    assert "not trained on" in capsys.readouterr().err
