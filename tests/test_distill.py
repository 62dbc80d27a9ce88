"""Distillation: the teacher's targets line up with the student's positions, the loss is the one documented, and
the train command's --distill trains (or loads) a teacher, end to end on tiny models."""
import json

import pytest
import torch
import torch.nn.functional as F
from test_ensemble import TRAIN_FLAGS, VOCAB, WORDS
from test_train import assert_user_error, run

from wavenet_conv import sweep
from wavenet_conv.data.words import IGNORE_INDEX, encode_items, pad_items
from wavenet_conv.models.checkpoint import load_checkpoint
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.conv import ConvWaveNet
from wavenet_conv.training.distill import TeacherTargets
from wavenet_conv.training.recipes import get_recipe

CONFIG = ModelConfig(vocab_size=len(VOCAB), block_size=4, n_embd=4, n_hidden=8)


@pytest.fixture
def teacher_and_student(make_random_tree):
    teacher = ConvWaveNet.from_tree(make_random_tree(CONFIG, seed=1)).eval()
    student = ConvWaveNet.from_tree(make_random_tree(CONFIG, seed=2)).train()
    return teacher, student


def test_targets_are_the_teachers_probabilities_at_each_items_positions(teacher_and_student):
    """Computed over length-sorted batches, stored items back to back in the items' order, and looked up for any
    batch in the order of that batch's valid positions."""
    teacher, _ = teacher_and_student
    items = encode_items(WORDS, VOCAB)
    targets = TeacherTargets(teacher, items, len(VOCAB), weight=0.5)
    indices = [7, 0, 19, 3, 3]  # any order, repeats too
    x, y = pad_items([items[i] for i in indices])
    with torch.no_grad():
        expected = F.softmax(teacher(x, y)[0][y != IGNORE_INDEX], dim=-1)  # n v
    torch.testing.assert_close(targets.probabilities[targets.positions_of(torch.tensor(indices))], expected)
    # negative control: one item's rows in place of another's are a different target
    wrong = targets.probabilities[targets.positions_of(torch.tensor([8, 0, 19, 3, 3]))]
    assert wrong.shape != expected.shape or not torch.allclose(wrong, expected)


@pytest.mark.parametrize("weight", [0.3, 1.0])
def test_loss_mixes_the_datas_and_the_teachers_cross_entropy(teacher_and_student, weight):
    teacher, student = teacher_and_student
    items = encode_items(WORDS, VOCAB)
    targets = TeacherTargets(teacher, items, len(VOCAB), weight=weight)
    indices = [2, 11, 5]
    x, y = pad_items([items[i] for i in indices])
    logits, data_loss = student(x, y)
    valid = y != IGNORE_INDEX
    with torch.no_grad():
        teacher_probs = F.softmax(teacher(x, y)[0][valid], dim=-1)  # n v
    by_hand = (1 - weight) * data_loss - weight * (teacher_probs * F.log_softmax(logits[valid], -1)).sum(-1).mean()
    torch.testing.assert_close(targets.loss(logits, targets=y, data_loss=data_loss, indices=indices), by_hand)
    # the teacher's term is not the data's: a student matching the teacher has no gradient from it alone
    assert not torch.allclose(targets.loss(logits, y, data_loss, indices), data_loss)


def test_bad_weight_is_a_user_error(teacher_and_student):
    teacher, _ = teacher_and_student
    with pytest.raises(Exception, match="weight"):
        TeacherTargets(teacher, encode_items(WORDS, VOCAB), len(VOCAB), weight=0)


def test_distilling_run_trains_its_teacher_first_then_the_student(tmp_path, small_words_file, capsys):
    work_dir = tmp_path / "run"
    args = ["-i", small_words_file, "-o", work_dir, "--max-steps", 3, "--distill", 0.5, "--teacher-members", 2,
            "--teacher-n-hidden", 6, *TRAIN_FLAGS]
    code, out, err = run(args, capsys)
    assert code == 0, err
    assert "distilling from a teacher trained first" in out and "weight 0.5 on the teacher's probabilities" in out
    teacher_summary = json.loads((work_dir / "teacher" / "summary.json").read_text())
    assert teacher_summary["settings"]["members"] == 2 and teacher_summary["config"]["n_hidden"] == 6
    assert teacher_summary["settings"]["distill"] == 0.0  # the teacher learns from the data alone
    assert (work_dir / "teacher" / "member-1" / "model.pt").is_file()
    summary = json.loads((work_dir / "summary.json").read_text())
    assert summary["config"]["n_hidden"] == 8 and summary["settings"]["distill"] == 0.5
    assert summary["teacher"]["val_loss"] == teacher_summary["val_loss"]
    assert summary["teacher"]["params"] == teacher_summary["params"]
    assert summary["seconds_total"] > teacher_summary["seconds_total"]  # the command's time includes the teacher's
    # --resume after completion trains neither again
    before = load_checkpoint(work_dir / "teacher" / "member-0" / "last.pt")["step"]
    code, out, err = run(["-i", small_words_file, "-o", work_dir, "--resume", "--threads", 1], capsys)
    assert code == 0, err
    assert "distilling from the teacher trained before" in out and "resuming" in out
    assert load_checkpoint(work_dir / "teacher" / "member-0" / "last.pt")["step"] == before
    # a trained model as the teacher: nothing trained first
    code, out, err = run([*args[:4], "-o", tmp_path / "from-path", "--max-steps", 2, "--distill", 1,
                          "--teacher", work_dir, *TRAIN_FLAGS], capsys)
    assert code == 0, err
    assert not (tmp_path / "from-path" / "teacher").exists()
    assert json.loads((tmp_path / "from-path" / "summary.json").read_text())["teacher"] == {"path": str(work_dir)}


def test_distilling_the_data_alone_is_a_plain_run(tmp_path, small_words_file, capsys):
    """weight 0 (the default) trains exactly as before: the same weights."""
    args = ["-i", small_words_file, "--max-steps", 3, *TRAIN_FLAGS]
    assert run([*args, "-o", tmp_path / "plain"], capsys)[0] == 0
    assert run([*args, "-o", tmp_path / "zero", "--distill", 0, "--teacher-members", 3], capsys)[0] == 0
    plain, zero = (load_checkpoint(tmp_path / d / "model.pt")["model"] for d in ("plain", "zero"))
    assert all(torch.equal(plain[k], zero[k]) for k in plain)
    assert not (tmp_path / "zero" / "teacher").exists()


def test_bad_distillation_input(tmp_path, small_words_file, capsys):
    base = ["-i", small_words_file, "-o", tmp_path / "run", "--max-steps", 2, *TRAIN_FLAGS]
    code, out, err = run([*base, "--distill", 1.5], capsys)  # argparse's usage line, then the error
    assert code == 2 and err.strip().endswith("--distill must be in [0, 1], got 1.5") and "Traceback" not in err
    assert_user_error(run([*base, "--distill", 0.5, "--model", "tree"], capsys), "tree")
    assert_user_error(run([*base, "--distill", 0.5, "--teacher", tmp_path / "missing"], capsys), "missing")
    other = tmp_path / "other.txt"
    other.write_text("\n".join(["zzz", "qqq", "xyz"] * 20) + "\n")
    assert run(["-i", other, "-o", tmp_path / "other", "--max-steps", 2, *TRAIN_FLAGS], capsys)[0] == 0
    assert_user_error(run([*base, "--distill", 0.5, "--teacher", tmp_path / "other"], capsys), "vocabulary")


def test_sweep_trials_train_without_a_teacher():
    assert get_recipe("quality").distill > 0
    flags = sweep.base_flags(sweep.parse_args(["--recipe", "quality"]))
    assert flags[flags.index("--distill") + 1] == "0"
