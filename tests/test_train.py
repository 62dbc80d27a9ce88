"""The training CLI, in-process on tiny models: learning, outputs, exact resume, the lecture's first loss, bad input."""
import json
import math
import os
import random
import signal

import pytest
import torch

import wavenet_conv
from wavenet_conv import train
from wavenet_conv.checkpoint import load_checkpoint

TINY = ["--n-embd", "4", "--n-hidden", "12", "--block-size", "4", "--batch-size", "16", "--eval-interval", "10",
        "--log-interval", "10", "--num-samples", "6", "--threads", "1"]
OUTPUTS = ("model.pt", "last.pt", "metrics.jsonl", "summary.json", "loss.png", "samples.txt")
SUMMARY_KEYS = {"train_loss", "val_loss", "test_loss", "params", "steps", "seconds", "seconds_to_target", "device",
                "model", "recipe"}


def syllable_words(n=400, seed=0):
    """Pseudo-names with some structure to learn, independent of names.txt."""
    rng = random.Random(seed)
    syllables = ["ka", "li", "ma", "ro", "an", "el", "ja", "ne", "so", "ty", "bri", "du"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(n)]


@pytest.fixture
def words_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("\n".join(syllable_words()) + "\n")
    return path


def run(args, capsys=None):
    """main() in-process; returns (exit status, stdout, stderr)."""
    try:
        train.main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


def interrupt_at(step, signum):
    """An after_step hook that sends this process `signum` once `step` steps are done."""

    def after_step(self):
        if self.step == step:
            os.kill(os.getpid(), signum)

    return after_step


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# ------------------------------------------------------------------------------------------- learning


@pytest.mark.parametrize("model", ["conv", "tree"])
def test_loss_falls(tmp_path, words_file, model, capsys):
    code, out, _ = run(["-i", words_file, "-o", tmp_path / "run", "--model", model, "--max-steps", 60,
                        "--learning-rate", "0.01", *TINY], capsys)
    assert code == 0
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [m["loss"] for m in metrics if m["split"] == "val"]
    first_train = next(m["loss"] for m in metrics if m["split"] == "train")
    assert len(val) == 6
    assert val[-1] < val[0] < first_train


def test_every_output_is_written_and_reloads(tmp_path, words_file, capsys):
    work_dir = tmp_path / "run"
    code, out, _ = run(["-i", words_file, "-o", work_dir, "--max-steps", 30, *TINY], capsys)
    assert code == 0
    for name in OUTPUTS:
        assert (work_dir / name).is_file(), name
    summary = json.loads((work_dir / "summary.json").read_text())
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["steps"] == 30 and summary["model"] == "conv" and summary["recipe"] == "fast"
    assert summary["seconds_to_target"] is None

    model, vocab = wavenet_conv.load(work_dir)
    assert not model.training
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    # the summary reports the kept model: re-evaluating it gives its validation loss again
    from wavenet_conv.data import read_words, split_words
    from wavenet_conv.evaluate import split_loss

    val_words = split_words(read_words(words_file))[1]
    torch.testing.assert_close(split_loss(model, val_words, vocab), summary["val_loss"])

    state = load_checkpoint(work_dir / "model.pt")
    assert {"optimizer", "rng", "step", "recipe"} <= state.keys()
    assert {"torch", "python", "batches"} <= state["rng"].keys()

    train_words = set(split_words(read_words(words_file))[0])
    samples = (work_dir / "samples.txt").read_text().splitlines()
    assert len(samples) == 6
    for line in samples:
        name, mark = line.rsplit("\t", 1)
        assert mark == ("in train" if name in train_words else "new")
    assert (work_dir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "\r" not in out  # no progress bar when the output is not a terminal


def test_target_loss_stops_the_run(tmp_path, words_file, capsys):
    code, _, _ = run(["-i", words_file, "-o", tmp_path / "run", "--max-steps", 200, "--target-loss", "100", *TINY],
                     capsys)
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 10  # the first evaluation already meets it
    assert 0 < summary["seconds_to_target"] <= summary["seconds"]


def test_sample_only_reuses_the_model(tmp_path, words_file, capsys):
    work_dir = tmp_path / "run"
    assert run(["-i", words_file, "-o", work_dir, "--max-steps", 10, *TINY], capsys)[0] == 0
    first = (work_dir / "samples.txt").read_text()
    code, out, _ = run(["-i", words_file, "-o", work_dir, "--sample-only", "--num-samples", 6], capsys)
    assert code == 0
    assert (work_dir / "samples.txt").read_text() == first == out


def test_any_line_per_item_file(tmp_path, capsys):
    """Capitals, apostrophes, spaces and '.' inside items are characters like any other."""
    items = ["O'Brien", "McDonald's", "Zoë", "Acme Inc.", "A.B. Dick Co.", "Smith & Sons", "l'Oréal", "3M"] * 20
    path = tmp_path / "companies.txt"
    path.write_text("\n".join(items) + "\n")
    code, _, err = run(["-i", path, "-o", tmp_path / "run", "--max-steps", 12, *TINY], capsys)
    assert code == 0, err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert math.isfinite(summary["test_loss"])
    assert len((tmp_path / "run" / "samples.txt").read_text().splitlines()) == 6


# --------------------------------------------------------------------------------------- interruption


@pytest.mark.parametrize("model, recipe, signum, batching", [
    ("conv", "fast", signal.SIGINT, "random"),
    ("conv", "fast", signal.SIGTERM, "bucketed"),
    ("tree", "lecture", signal.SIGINT, "random"),
])
def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path, words_file, model, recipe, signum, batching,
                                                                 monkeypatch, capsys):
    args = ["-i", words_file, "--model", model, "--recipe", recipe, "--batching", batching, "--max-steps", 45, *TINY]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run([*args, "-o", whole], capsys)[0] == 0

    # step 17: mid-epoch (20 batches of 16 names) and between evaluations
    monkeypatch.setattr(train.Trainer, "after_step", interrupt_at(17, signum))
    code, out, _ = run([*args, "-o", parts], capsys)
    assert code == 128 + signum
    assert "--resume" in out
    assert load_checkpoint(parts / "last.pt")["step"] == 17
    monkeypatch.undo()
    assert run([*args, "-o", parts, "--resume"], capsys)[0] == 0

    for name in ("last.pt", "model.pt"):
        a, b = load_checkpoint(whole / name), load_checkpoint(parts / name)
        assert a["step"] == b["step"]
        assert_same_state(a["model"], b["model"])
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != "elapsed"}  # noqa: E731
                          for line in path.read_text().splitlines()]
    assert strip(whole / "metrics.jsonl") == strip(parts / "metrics.jsonl")
    summary_a = json.loads((whole / "summary.json").read_text())
    summary_b = json.loads((parts / "summary.json").read_text())
    for key in ("train_loss", "val_loss", "test_loss", "steps"):
        assert summary_a[key] == summary_b[key]


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, words_file, monkeypatch, capsys):
    def poison(self):
        if self.step == 15:
            with torch.no_grad():
                self.model.head.weight.fill_(float("nan"))

    monkeypatch.setattr(train.Trainer, "after_step", poison)
    code, _, err = run(["-i", words_file, "-o", tmp_path / "run", "--max-steps", 40, *TINY], capsys)
    assert code == 2
    assert err.startswith("error: ") and "nan" in err and "Traceback" not in err
    kept = load_checkpoint(tmp_path / "run" / "model.pt")
    assert kept["step"] == 10
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


# ------------------------------------------------------------------------------------------- lecture


def test_lecture_recipe_first_loss(names_path, tmp_path, capsys):
    """makemore part 5's first logged loss: torch.manual_seed(42), the tree, its first random batch."""
    trainer = train.Trainer(train.get_recipe("lecture"), *train.load_data(names_path), torch.device("cpu"), 42,
                            tmp_path, started=0.0)
    assert train.count_parameters(trainer.model) == 76_579
    loss, lr = trainer.train_step(0)
    assert f"{loss:.4f}" == "3.3167"
    assert lr == 0.1


def test_lecture_schedule():
    recipe = train.get_recipe("lecture")
    assert [train.learning_rate_at(i, recipe, 200_000) for i in (0, 149_999, 150_000, 199_999)] == [0.1, 0.1, 0.01,
                                                                                                     0.01]


# ------------------------------------------------------------------------------------------ bad input


def assert_user_error(result, *words):
    code, out, err = result
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err + out
    for word in words:
        assert word in err


def test_bad_dataset(tmp_path, capsys):
    assert_user_error(run(["-i", tmp_path / "missing.txt", "-o", tmp_path / "run"], capsys), "does not exist")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    assert_user_error(run(["-i", empty, "-o", tmp_path / "run"], capsys), "no items")


def test_missing_or_corrupt_checkpoint(tmp_path, words_file, capsys):
    work_dir = tmp_path / "run"
    assert_user_error(run(["-i", words_file, "-o", work_dir, "--resume"], capsys), "no checkpoint")
    assert_user_error(run(["-i", words_file, "-o", work_dir, "--sample-only"], capsys), "no checkpoint")
    work_dir.mkdir()
    (work_dir / "last.pt").write_bytes(b"not a checkpoint at all")
    (work_dir / "model.pt").write_bytes(b"\x00" * 64)
    assert_user_error(run(["-i", words_file, "-o", work_dir, "--resume"], capsys), "cannot read checkpoint")
    assert_user_error(run(["-i", words_file, "-o", work_dir, "--sample-only"], capsys), "cannot read checkpoint")


def test_resume_checks_vocabulary_and_settings(tmp_path, words_file, capsys):
    work_dir = tmp_path / "run"
    assert run(["-i", words_file, "-o", work_dir, "--max-steps", 10, *TINY], capsys)[0] == 0
    other = tmp_path / "other.txt"
    other.write_text("\n".join(w.upper() for w in syllable_words()) + "\n")
    assert_user_error(run(["-i", other, "-o", work_dir, "--resume"], capsys), "vocabulary")
    assert_user_error(run(["-i", words_file, "-o", work_dir, "--resume", "--n-hidden", "20"], capsys), "n_hidden")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_cuda_without_gpu(tmp_path, words_file, capsys):
    assert_user_error(run(["-i", words_file, "-o", tmp_path / "run", "--device", "cuda"], capsys), "CUDA")


def test_bad_flags(tmp_path, words_file, capsys):
    assert run(["--no-such-flag"], capsys)[0] == 2
    assert run(["--max-steps", "0"], capsys)[0] == 2
    assert_user_error(run(["-i", words_file, "-o", tmp_path / "run", "--block-size", "6"], capsys), "power of two")
    assert_user_error(run(["-i", words_file, "-o", tmp_path / "run", "--batch-size", "100000"], capsys), "batch")


def test_packed_and_padded_training_agree(tmp_path, words_file, monkeypatch, capsys):
    """The conv trains through its packed form: the same function as the padded batches."""
    args = ["-i", words_file, "--max-steps", 20, *TINY]
    assert run([*args, "-o", tmp_path / "packed"], capsys)[0] == 0
    monkeypatch.setattr(train, "PACKED", False)
    assert run([*args, "-o", tmp_path / "padded"], capsys)[0] == 0
    packed, padded = (load_checkpoint(tmp_path / name / "last.pt")["model"] for name in ("packed", "padded"))
    for key in packed:
        torch.testing.assert_close(packed[key], padded[key], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------- hooks


def test_on_validation_sees_every_evaluation_and_can_stop_the_run(tmp_path, words_file, capsys):
    seen = []
    summary = train.main([str(a) for a in ["-i", words_file, "-o", tmp_path / "all", "--max-steps", 25, *TINY]],
                         on_validation=lambda step, val: seen.append((step, val)))
    metrics = [json.loads(line) for line in (tmp_path / "all" / "metrics.jsonl").read_text().splitlines()]
    assert seen == [(m["step"], m["loss"]) for m in metrics if m["split"] == "val"]
    assert [step for step, _ in seen] == [10, 20, 25] and summary["val_loss"] == min(val for _, val in seen)

    class Stop(Exception):
        pass

    def stop_at_20(step, val):
        if step == 20:
            raise Stop(step)

    with pytest.raises(Stop):  # unchanged: not turned into an exit status
        train.main([str(a) for a in ["-i", words_file, "-o", tmp_path / "stopped", "--max-steps", 40, *TINY]],
                   on_validation=stop_at_20)
    assert load_checkpoint(tmp_path / "stopped" / "last.pt")["step"] == 20
    assert load_checkpoint(tmp_path / "stopped" / "model.pt")["step"] in (10, 20)
