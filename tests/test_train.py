"""The training CLI, in-process on tiny models: learning, outputs, exact resume, the lecture's first loss, bad input."""
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import wavenet_conv
from wavenet_conv import train
from wavenet_conv.data.words import Vocab
from wavenet_conv.models.checkpoint import link_checkpoint, load_checkpoint, save_checkpoint
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.tree import TreeWaveNet
from wavenet_conv.training import trainer as trainer_module
from wavenet_conv.training.optimization import learning_rate_multiplier, make_optimizer, make_scheduler
from wavenet_conv.training.plan import RunData
from wavenet_conv.training.recipes import get_recipe
from wavenet_conv.training.trainer import Trainer, count_parameters

REPO = Path(__file__).resolve().parents[1]
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


def assert_same(a, b, where="checkpoint"):
    """Nested dicts, lists and tensors equal exactly."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif torch.is_tensor(a):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


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
    from wavenet_conv.data.words import read_words, split_words
    from wavenet_conv.inference.evaluation import split_loss

    val_words = split_words(read_words(words_file))[1]
    torch.testing.assert_close(split_loss(model, val_words, vocab), summary["val_loss"])

    state = load_checkpoint(work_dir / "model.pt")
    assert {"optimizer", "rng", "step", "recipe"} <= state.keys()
    assert {"torch", "python", "batches"} <= state["rng"].keys()

    train_words = set(split_words(read_words(words_file))[0])
    *samples, count = (work_dir / "samples.txt").read_text().splitlines()  # the sample command's lines
    assert len(samples) == 6 and count.endswith("are new")
    for line in samples:
        mark = "in train" if line.endswith("in train") else "new"
        assert line[:-len(mark)].rstrip() in train_words if mark == "in train" else line.endswith(" new")
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
    assert len((tmp_path / "run" / "samples.txt").read_text().splitlines()) == 6 + 1  # and the count of new ones


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
    monkeypatch.setattr(Trainer, "after_step", interrupt_at(17, signum))
    code, out, _ = run([*args, "-o", parts], capsys)
    assert code == 128 + signum
    assert "--resume" in out
    assert load_checkpoint(parts / "last.pt")["step"] == 17
    monkeypatch.undo()
    assert run([*args, "-o", parts, "--resume"], capsys)[0] == 0

    for name in ("last.pt", "model.pt"):
        a, b = load_checkpoint(whole / name), load_checkpoint(parts / name)
        for key in ("step", "model", "optimizer", "scheduler", "rng", "train_losses", "val_points"):
            assert_same(a[key], b[key], f"{name}[{key!r}]")
    strip = lambda path: [{k: v for k, v in json.loads(line).items() if k != "elapsed"}  # noqa: E731
                          for line in path.read_text().splitlines()]
    assert strip(whole / "metrics.jsonl") == strip(parts / "metrics.jsonl")
    summary_a = json.loads((whole / "summary.json").read_text())
    summary_b = json.loads((parts / "summary.json").read_text())
    for key in ("train_loss", "val_loss", "test_loss", "steps"):
        assert summary_a[key] == summary_b[key]


def test_checkpoints_after_the_first_step_at_each_best_and_on_time(tmp_path, words_file, monkeypatch, capsys):
    """last.pt after step 1, at every new best validation and every SAVE_EVERY_S seconds; model.pt at every best."""
    def after_step(self):
        model_pt = self.work_dir / "model.pt"
        seen.append((load_checkpoint(self.work_dir / "last.pt")["step"],
                     load_checkpoint(model_pt)["step"] if model_pt.exists() else None, self.best_step))

    monkeypatch.setattr(Trainer, "after_step", after_step)
    for every_s in (1e9, 0):
        seen = []
        monkeypatch.setattr(trainer_module, "SAVE_EVERY_S", every_s)
        assert run(["-i", words_file, "-o", tmp_path / str(every_s), "--max-steps", 25, *TINY], capsys)[0] == 0
        if every_s:
            assert [last for last, _, _ in seen] == [best or 1 for _, _, best in seen]
        else:
            assert [last for last, _, _ in seen] == list(range(1, 26))
        assert [model_pt for _, model_pt, _ in seen] == [best for _, _, best in seen]
        assert seen[9][2] == 10  # the first validation is a best


@pytest.mark.parametrize("links", [True, False])
def test_link_checkpoint_names_the_same_checkpoint(tmp_path, monkeypatch, links):
    """A hard link where the file system allows one, else a copy; the old file under the name is replaced whole."""
    def refuse(*args):
        raise OSError("no hard links on this file system")

    if not links:
        monkeypatch.setattr(os, "link", refuse)
    tree = TreeWaveNet(ModelConfig(vocab_size=5, block_size=2, n_embd=2, n_hidden=3))
    vocab = Vocab((".", "a", "b", "c", "d"))
    source = save_checkpoint(tmp_path / "last.pt", tree, vocab, step=7)
    (tmp_path / "model.pt").write_bytes(b"an older checkpoint")
    link_checkpoint(source, tmp_path / "model.pt")
    assert (tmp_path / "model.pt").read_bytes() == source.read_bytes()
    assert os.path.samefile(source, tmp_path / "model.pt") == links
    assert load_checkpoint(tmp_path / "model.pt")["step"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "model.pt"]


def test_on_validation_hook(tmp_path, words_file, monkeypatch, capsys):
    """Called after every full validation; what it raises comes out of main as is, with last.pt written."""
    class Pruned(Exception):
        pass

    calls, saves = [], []
    save = Trainer.save

    def recorded_save(self, best=False):
        saves.append((self.step, best))
        save(self, best)

    monkeypatch.setattr(Trainer, "save", recorded_save)

    def on_validation(step, val_loss):
        calls.append((step, val_loss))
        if step == 20:
            raise Pruned

    args = ["-i", words_file, "-o", tmp_path / "run", "--max-steps", 45, *TINY]
    with pytest.raises(Pruned):
        train.main([str(a) for a in args], on_validation=on_validation)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert calls == [(m["step"], m["loss"]) for m in metrics if m["split"] == "val"]
    assert [step for step, _ in calls] == [10, 20]
    assert saves[-1] == (20, False)  # the save after the hook raised
    assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 20
    monkeypatch.undo()
    assert run([*args, "--resume"], capsys)[0] == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["steps"] == 45


def test_kill_9_leaves_a_checkpoint_that_resumes(tmp_path, words_file, capsys):
    """SIGKILL the command as soon as its first checkpoint exists: last.pt loads (weights_only) and --resume goes on."""
    work_dir = tmp_path / "run"
    args = ["-i", words_file, "-o", work_dir, *TINY]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = subprocess.Popen([sys.executable, "-m", "wavenet_conv.train", *map(str, args), "--max-steps", "1000000"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (work_dir / "last.pt").exists():
            assert command.poll() is None, command.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint after 120 s"
            time.sleep(0.01)
    finally:
        command.kill()
        command.wait()
    assert command.returncode == -signal.SIGKILL
    state = load_checkpoint(work_dir / "last.pt")  # weights_only=True
    assert state["step"] >= 1 and "scheduler" in state
    steps = state["step"] + 12
    assert run([*args, "--resume", "--max-steps", steps], capsys)[0] == 0
    assert json.loads((work_dir / "summary.json").read_text())["steps"] == steps
    assert not list(work_dir.glob(".*.tmp"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, words_file, monkeypatch, capsys):
    def poison(self):
        if self.step == 15:
            with torch.no_grad():
                self.model.head.weight.fill_(float("nan"))

    monkeypatch.setattr(Trainer, "after_step", poison)
    code, _, err = run(["-i", words_file, "-o", tmp_path / "run", "--max-steps", 40, *TINY], capsys)
    assert code == 2
    assert err.startswith("error: ") and "nan" in err and "Traceback" not in err
    kept = load_checkpoint(tmp_path / "run" / "model.pt")
    assert kept["step"] == 10
    assert all(torch.isfinite(t).all() for t in kept["model"].values())


def test_a_step_leaves_its_loss_on_the_device_until_a_group_is_read(tmp_path, words_file):
    """The steps issue no syncing op of their own (torch.optim's CPU step counters apart): their losses are read
    LOSS_READ_EVERY at a time, or before anything is logged, evaluated or saved."""
    from benchmarks.count_syncs import SyncingOps, on_the_host

    data = RunData.read(words_file)
    recipe = get_recipe("fast", n_embd=4, n_hidden=12, block_size=4, batch_size=16)
    trainer = Trainer(recipe, data.vocab, data.splits, torch.device("cpu"), 0, tmp_path, started=0.0)
    trainer.batches.next = on_the_host(trainer.batches.next)
    trainer.train_step()  # one-time work (tanh's choice of form) outside the count
    with SyncingOps(where=True) as mode:
        for _ in range(trainer_module.LOSS_READ_EVERY - 2):
            trainer.train_step()
    assert not [where for _, where in mode.calls if not where.startswith("torch/optim")], dict(mode.calls)
    assert trainer.train_losses == [] and len(trainer.unread_losses) == trainer_module.LOSS_READ_EVERY - 1
    trainer.read_losses()
    assert len(trainer.train_losses) == trainer_module.LOSS_READ_EVERY - 1 and not trainer.unread_losses


@pytest.mark.skipif(not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_trains_as_eager_with_a_graph_for_training_and_one_for_evaluation(tmp_path, words_file, capsys):
    summaries = {}
    for flags in ([], ["--compile"]):
        work_dir = tmp_path / ("compiled" if flags else "eager")
        code, _, err = run(["-i", words_file, "-o", work_dir, "--max-steps", 30, *flags, *TINY], capsys)
        assert code == 0, err
        summaries[bool(flags)] = json.loads((work_dir / "summary.json").read_text())
    compiled, eager = summaries[True], summaries[False]
    assert compiled["compile"] is True and compiled["compilations"] == 2  # 30 steps, 3 validations
    assert compiled["val_loss"] == pytest.approx(eager["val_loss"], abs=1e-3)


# ------------------------------------------------------------------------------------------- lecture


def test_lecture_recipe_first_loss(names_path, tmp_path, capsys):
    """makemore part 5's first logged loss: torch.manual_seed(42), the tree, its first random batch."""
    data = RunData.read(names_path)
    trainer = Trainer(get_recipe("lecture"), data.vocab, data.splits, torch.device("cpu"), 42, tmp_path, started=0.0)
    assert count_parameters(trainer.model) == 76_579
    assert isinstance(trainer.optimizer, torch.optim.SGD)
    loss = trainer.train_step()
    assert f"{loss:.4f}" == "3.3167"
    assert trainer.lr == 0.1


def test_lecture_schedule():
    """`lr = 0.1 if i < 150000 else 0.01`: the scheduler's rate for each step, as the float32 kernels see it."""
    recipe = get_recipe("lecture")
    assert [learning_rate_multiplier(i, recipe, 200_000) for i in (0, 149_999, 150_000, 199_999)] == [1, 1, 0.1, 0.1]
    optimizer = make_optimizer(recipe, torch.nn.Linear(2, 2))
    scheduler = make_scheduler(optimizer, recipe, max_steps=8)  # the drop at int(0.75 * 8) = 6
    rates = []
    for _ in range(8):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    as_float32 = torch.tensor(rates, dtype=torch.float32)
    assert torch.equal(as_float32, torch.tensor([0.1] * 6 + [0.01] * 2, dtype=torch.float32))


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
    empty.write_text("")
    assert_user_error(run(["-i", empty, "-o", tmp_path / "run"], capsys), "no items")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\t\n")
    assert_user_error(run(["-i", blank, "-o", tmp_path / "run"], capsys), "no items")
    binary = tmp_path / "binary.bin"
    binary.write_bytes(bytes(range(256)))
    assert_user_error(run(["-i", binary, "-o", tmp_path / "run"], capsys), "not UTF-8")
    assert_user_error(run(["-i", tmp_path, "-o", tmp_path / "run"], capsys), "is a directory")


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
    assert_user_error(run(["--no-such-flag"], capsys), "--no-such-flag")
    assert_user_error(run(["--max-steps", "0"], capsys), "--max-steps")
    assert_user_error(run(["--block-size", "abc"], capsys), "--block-size")
    assert_user_error(run(["--block-size", "0"], capsys), "--block-size")
    assert_user_error(run(["-i", words_file, "-o", tmp_path / "run", "--block-size", "6"], capsys), "power of two")


def test_small_inputs(tmp_path, words_file, capsys):
    """A batch larger than the training split is clamped, with one line; a file too small to split is refused."""
    code, out, err = run(["-i", words_file, "-o", tmp_path / "run", *TINY, "--batch-size", "100000",
                          "--max-steps", 2], capsys)
    assert code == 0, err
    assert "--batch-size 100000 is more than the 320 training items: batches of 320" in out
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("ab\ncd\nef\n")
    assert_user_error(run(["-i", tiny, "-o", tmp_path / "tiny"], capsys), "too few")
