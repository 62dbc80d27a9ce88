"""Ensembles: the mixture of the members' probabilities, its checkpoint, its evaluation and sampling, and the train
command's --members, end to end on tiny models."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from test_train import assert_user_error, run

import wavenet_conv
from wavenet_conv import evaluate
from wavenet_conv import sample as sample_module
from wavenet_conv.data.words import IGNORE_INDEX, Vocab, build_windows, encode_items, pad_items, read_words, split_words
from wavenet_conv.inference.evaluation import split_loss
from wavenet_conv.inference.sampling import METHODS, SampleError, sample
from wavenet_conv.models.checkpoint import load_checkpoint, save_checkpoint
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.conv import ConvWaveNet
from wavenet_conv.models.ensemble import EnsembleWaveNet
from wavenet_conv.models.gated_conv import GatedConvWaveNet
from wavenet_conv.utils.errors import CheckpointError

WORDS = ["ava", "emma", "liam", "noah", "mia", "ella", "leo", "luna", "ivy", "max", "zoe", "eli", "amelia", "oliver",
         "isla", "theo", "ruby", "jack", "nora", "finn", "lily", "owen", "cora", "hugo", "iris", "jude", "maya", "axel"]
VOCAB = Vocab.from_words(WORDS)
TINY = ModelConfig(vocab_size=len(VOCAB), block_size=4, n_embd=4, n_hidden=8)
TRAIN_FLAGS = ["--n-embd", "4", "--n-hidden", "8", "--block-size", "4", "--batch-size", "8", "--eval-interval", "2",
               "--log-interval", "2", "--num-samples", "2", "--threads", "1"]


@pytest.fixture
def members(make_random_tree):
    """members(k, form): k tiny random models (random batch-norm state too), each from its own seed, in eval mode."""

    def build(k=3, form="conv", dtype=torch.float64, config=TINY):
        trees = [make_random_tree(config, seed=seed, dtype=dtype) for seed in range(1, k + 1)]
        return trees if form == "tree" else [ConvWaveNet.from_tree(tree).eval() for tree in trees]

    return build


def batch(form):
    """The members' inputs: whole names (b t) for convs, every window (n t) for trees; targets -1 on padding."""
    if form == "tree":
        return build_windows(WORDS, VOCAB, TINY.block_size)
    return pad_items(encode_items(WORDS, VOCAB))


def mixture_nll_by_hand(models, x, y):
    """-log of the mean of the members' probabilities of each target, averaged over the valid targets."""
    with torch.no_grad():
        probs = torch.stack([F.softmax(model(x)[0], dim=-1) for model in models]).mean(0)  # b t v
    valid = y != IGNORE_INDEX
    return -probs[valid].gather(1, y[valid][:, None]).log().mean()


# ------------------------------------------------------------------------------------------- the mixture


@pytest.mark.parametrize("form", ["conv", "tree"])
def test_loss_is_the_nll_of_the_mean_probability(form, members):
    models = members(3, form)
    x, y = batch(form)
    with torch.no_grad():
        logits, loss = EnsembleWaveNet(models)(x, y)
        member_losses = torch.stack([model(x, y)[1] for model in models])
    torch.testing.assert_close(loss, mixture_nll_by_hand(models, x, y))
    # Jensen: below the members' mean loss, by a real margin, since random members disagree
    assert loss < member_losses.mean() - 0.05
    valid = y != IGNORE_INDEX
    assert not logits[~valid].any()  # 0 on right padding, as a single model's logits
    assert logits.shape == models[0](x)[0].shape


def test_one_member_is_that_member(members):
    (model,) = members(1)
    x, y = batch("conv")
    with torch.no_grad():
        logits, loss = EnsembleWaveNet([model])(x, y)
        own_logits, own_loss = model(x, y)
    torch.testing.assert_close(loss, own_loss)
    valid = y != IGNORE_INDEX
    torch.testing.assert_close(F.softmax(logits[valid], -1), F.softmax(own_logits[valid], -1))


def test_averaging_logits_is_another_loss(members):
    """Negative control: the mean of the logits (a product of experts) is not the mixture, and the by-hand check
    tells them apart, so an ensemble that averaged logits would fail it."""
    models = members(3)
    x, y = batch("conv")
    with torch.no_grad():
        mean_logits = torch.stack([model(x, y)[0] for model in models]).mean(0)  # b t v
    valid = y != IGNORE_INDEX
    averaged = F.cross_entropy(mean_logits[valid], y[valid])
    with pytest.raises(AssertionError):
        torch.testing.assert_close(averaged, mixture_nll_by_hand(models, x, y))
    assert abs(averaged - mixture_nll_by_hand(models, x, y)) > 1e-3  # far beyond rounding


def test_members_must_fit_together(members):
    convs, trees = members(2), members(2, "tree")
    with pytest.raises(ValueError, match="all conv or all tree"):
        EnsembleWaveNet([convs[0], trees[1]])
    wider = ConvWaveNet(ModelConfig(vocab_size=len(VOCAB), block_size=8, n_embd=4, n_hidden=8))
    with pytest.raises(ValueError, match="block_size"):
        EnsembleWaveNet([convs[0], wider])
    with pytest.raises(ValueError, match="at least one"):
        EnsembleWaveNet([])
    with pytest.raises(ValueError, match="single models"):
        EnsembleWaveNet([EnsembleWaveNet(convs)])


# ------------------------------------------------------------------------------------------- evaluation


def test_evaluation_over_items_and_windows_is_the_mixture(members):
    """The conv ensemble over whole names (each lecture member folded), the tree ensemble over windows, the gated
    arch's conv as it is: each the mixture's NLL over every prediction."""
    trees = members(3, "tree")
    convs = [ConvWaveNet.from_tree(tree).eval() for tree in trees]
    x, y = batch("tree")
    expected = mixture_nll_by_hand(trees, x, y).item()
    torch.testing.assert_close(split_loss(EnsembleWaveNet(trees), WORDS, VOCAB), expected)
    torch.testing.assert_close(split_loss(EnsembleWaveNet(convs), WORDS, VOCAB), expected)
    torch.manual_seed(0)
    gated = GatedConvWaveNet(ModelConfig(len(VOCAB), 4, 4, 8, arch="gated")).double().eval()
    mixed = EnsembleWaveNet([convs[0], gated])
    x, y = batch("conv")
    torch.testing.assert_close(split_loss(mixed, WORDS, VOCAB), mixture_nll_by_hand([convs[0], gated], x, y).item())


# ------------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path, members):
    ensemble = EnsembleWaveNet(members(2, dtype=torch.float32))
    path = save_checkpoint(tmp_path / "model.pt", ensemble, VOCAB, seed=7)
    state = torch.load(path, weights_only=True)  # tensors and plain values only
    assert state["model_type"] == "ensemble" and state["config"] == {"members": 2} and state["seed"] == 7
    assert [member["model_type"] for member in state["model"]] == ["conv", "conv"]
    loaded, vocab = wavenet_conv.load(path)
    assert isinstance(loaded, EnsembleWaveNet) and vocab.itos == VOCAB.itos and not loaded.training
    x, _ = batch("conv")
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[0], ensemble(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("spoil, message", [
    (lambda members: members[1].update(model_type="gru"), "member 1 has an unknown model type"),
    (lambda members: members[1].pop("config"), "member 1 is not a model"),
    (lambda members: members[1]["config"].update(n_hidden=9), "ensemble member 1: checkpoint does not fit"),
    (lambda members: members[1]["config"].update(block_size=8), "ensemble member 1: checkpoint does not fit"),
    (lambda members: members.clear(), "without members"),
])
def test_a_bad_member_is_a_one_line_error(tmp_path, members, spoil, message, capsys):
    path = save_checkpoint(tmp_path / "model.pt", EnsembleWaveNet(members(2, dtype=torch.float32)), VOCAB)
    state = load_checkpoint(path)
    spoil(state["model"])
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=message) as error:
        wavenet_conv.load(path)
    assert "\n" not in str(error.value)
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["-o", str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err


def test_members_that_do_not_fit_together_is_a_one_line_error(tmp_path, members):
    path = save_checkpoint(tmp_path / "model.pt", EnsembleWaveNet(members(2, dtype=torch.float32)), VOCAB)
    state = load_checkpoint(path)
    wider = ConvWaveNet(ModelConfig(vocab_size=len(VOCAB), block_size=8, n_embd=4, n_hidden=8))
    state["model"][1] = {"model_type": "conv", "config": wider.config.to_dict(), "model": wider.state_dict()}
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="do not fit together: the members' block_size"):
        wavenet_conv.load(path)


# ------------------------------------------------------------------------------------------- sampling


@pytest.fixture
def names_members(members):
    """Random members whose '.' bias ends names after about 5 characters, so that names run past the window."""

    def build(k=3, form="conv", dtype=torch.float64):
        trees = members(k, "tree", dtype=dtype)
        with torch.no_grad():
            for seed, tree in enumerate(trees):
                tree.head.bias[0] = math.log((len(VOCAB) - 1) / (4.0 + seed))
        return trees if form == "tree" else [ConvWaveNet.from_tree(tree).eval() for tree in trees]

    return build


def draw_all(model, num_samples, seed=1, methods=METHODS, **kwargs):
    return {m: sample(model, VOCAB, num_samples, method=m, generator=torch.Generator().manual_seed(seed), **kwargs)
            for m in methods}


@pytest.mark.parametrize("form", ["conv", "tree"])
def test_sampling_methods_return_identical_names(form, names_members):
    models = names_members(3, form)
    names = draw_all(EnsembleWaveNet(models), 120, prefix="a")
    assert names["naive"] == names["full"] == names["cached"]
    assert len(set(names["cached"])) > 60 and max(map(len, names["cached"])) > TINY.block_size
    # the mixture, not one member: the same uniforms give other names
    assert names["cached"] != draw_all(models[0], 120, methods=("cached",), prefix="a")["cached"]


def test_sampling_float32_ensemble_of_one(names_members):
    names = draw_all(EnsembleWaveNet(names_members(1, dtype=torch.float32)), 200)
    assert names["naive"] == names["full"] == names["cached"]


def test_sampling_draws_from_the_mixture(names_members):
    """With top_k=1 a name is the argmax chain of the mixture, computed here by hand from the members."""
    models = names_members(3)
    (greedy,) = sample(EnsembleWaveNet(models), VOCAB, 1, top_k=1, generator=torch.Generator().manual_seed(0))
    history = [0]
    with torch.no_grad():
        while len(history) <= 4 * TINY.block_size:
            probs = torch.stack([F.softmax(m(torch.tensor([history]))[0][0, -1], -1) for m in models]).mean(0)
            if int(probs.argmax()) == 0:
                break
            history.append(int(probs.argmax()))
    assert greedy == VOCAB.decode(history[1:])


def test_a_gated_member_samples_with_full(names_members):
    torch.manual_seed(0)
    gated = GatedConvWaveNet(ModelConfig(len(VOCAB), 4, 4, 8, arch="gated")).double().eval()
    ensemble = EnsembleWaveNet([names_members(1)[0], gated])
    names = draw_all(ensemble, 40, methods=("naive", "full"))
    assert names["naive"] == names["full"] == sample(ensemble, VOCAB, 40, generator=torch.Generator().manual_seed(1))
    with pytest.raises(SampleError, match="lecture arch only"):
        sample(ensemble, VOCAB, 1, method="cached")


# ------------------------------------------------------------------------------------------- the train command


def test_members_train_end_to_end_and_resume(tmp_path, small_words_file, capsys):
    work_dir = tmp_path / "ensemble"
    args = ["-i", small_words_file, "-o", work_dir, "--members", 2, "--max-steps", 3, "--seed", 5, *TRAIN_FLAGS]
    code, out, err = run(args, capsys)
    assert code == 0, err
    for k in range(2):
        member = work_dir / f"member-{k}"
        for name in ("model.pt", "last.pt", "summary.json", "metrics.jsonl", "samples.txt", "train.log"):
            assert (member / name).is_file(), (k, name)
        member_summary = json.loads((member / "summary.json").read_text())
        assert member_summary["seed"] == 5 + k and member_summary["steps"] == 3
        assert member_summary["settings"]["members"] == 1
        assert f"member {k} (seed {5 + k}): train " in out
        assert "val" in (member / "train.log").read_text()  # the member's own output
    summary = json.loads((work_dir / "summary.json").read_text())
    assert {"train_loss", "val_loss", "test_loss", "params", "steps", "seconds", "seconds_total", "device",
            "model", "recipe", "config", "settings", "members"} <= summary.keys()
    assert summary["steps"] == 6 and summary["settings"]["members"] == 2 and len(summary["members"]) == 2
    assert [m["seed"] for m in summary["members"]] == [5, 6]
    assert f"val {summary['val_loss']:.4f} | test {summary['test_loss']:.4f} (mixture of 2 members)" in out
    assert len((work_dir / "samples.txt").read_text().splitlines()) == 2 + 1  # and the count of new ones

    # the top-level model.pt is the ensemble; evaluated afresh it gives the summary's losses
    model, vocab = wavenet_conv.load(work_dir)
    assert isinstance(model, EnsembleWaveNet) and len(model.members) == 2
    assert summary["params"] == sum(p.numel() for p in model.parameters())
    val_words = split_words(read_words(small_words_file))[1]
    torch.testing.assert_close(split_loss(model, val_words, vocab), summary["val_loss"])
    evaluate.main(["-o", str(work_dir), "-i", str(small_words_file)])
    assert f"val {summary['val_loss']:.4f}" in capsys.readouterr().out
    sample_module.main(["-o", str(work_dir), "-i", str(small_words_file), "-n", "3"])
    assert "of 3 samples" in capsys.readouterr().out

    # --resume after completion: nothing is trained again
    members_before = {p: p.read_bytes() for p in work_dir.glob("member-*/*")}
    code, out, err = run(["-i", small_words_file, "-o", work_dir, "--resume", "--threads", "1"], capsys)
    assert code == 0, err
    assert out.count("(trained before)") == 2
    assert {p: p.read_bytes() for p in work_dir.glob("member-*/*")} == members_before
    assert json.loads((work_dir / "summary.json").read_text())["val_loss"] == summary["val_loss"]

    # a member without its summary (as if killed at the end of its run) is resumed, the other is not run
    (work_dir / "member-1" / "summary.json").unlink()
    code, out, err = run(["-i", small_words_file, "-o", work_dir, "--resume", "--threads", "1"], capsys)
    assert code == 0, err
    assert out.count("(trained before)") == 1 and "member 1 (seed 6)" in out
    assert (work_dir / "member-0" / "train.log").read_bytes() == members_before[work_dir / "member-0" / "train.log"]
    assert load_checkpoint(work_dir / "member-1" / "last.pt")["step"] == 3  # resumed at its end, not retrained
    assert json.loads((work_dir / "summary.json").read_text())["val_loss"] == summary["val_loss"]


def test_one_member_is_a_plain_run(tmp_path, small_words_file, capsys):
    args = ["-i", small_words_file, "--max-steps", 4, *TRAIN_FLAGS]
    assert run([*args, "-o", tmp_path / "plain"], capsys)[0] == 0
    assert run([*args, "-o", tmp_path / "one", "--members", 1], capsys)[0] == 0
    names = lambda d: sorted(p.name for p in d.iterdir())  # noqa: E731
    assert names(tmp_path / "plain") == names(tmp_path / "one")  # no member dirs, no ensemble.json
    for name in ("model.pt", "last.pt"):
        plain, one = load_checkpoint(tmp_path / "plain" / name), load_checkpoint(tmp_path / "one" / name)
        assert plain.keys() == one.keys() and plain["recipe"] == one["recipe"]
        assert all(torch.equal(plain["model"][k], one["model"][k]) for k in plain["model"])
    plain, one = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("plain", "one"))
    for key in ("train_loss", "val_loss", "test_loss", "params", "steps", "settings", "config"):
        assert plain[key] == one[key], key
    assert (tmp_path / "plain" / "samples.txt").read_text() == (tmp_path / "one" / "samples.txt").read_text()


def test_bad_ensemble_input(tmp_path, small_words_file, capsys):
    work_dir = tmp_path / "run"
    base = ["-i", small_words_file, "-o", work_dir, *TRAIN_FLAGS]
    assert_user_error(run([*base, "--members", 0], capsys), "--members must be positive")
    assert_user_error(run([*base, "--members", 2, "--workers", 0], capsys), "--workers")
    assert_user_error(run([*base, "--members", 2, "--workers", "many"], capsys), "--workers")
    assert_user_error(run([*base, "--members", 2, "--target-loss", 2.5], capsys), "--target-loss")
    assert not work_dir.exists()  # refused before anything was written
    # a member that fails: its error in one line, and where its log is
    assert_user_error(run([*base, "--members", 2, "--workers", 1, "--max-steps", 2, "--learning-rate", 1e20,
                           "--eval-interval", 1], capsys), "member 0 failed", "nan", "train.log")
    # an ensemble's --resume checks the flags against its plan, as a run's against its checkpoint
    assert_user_error(run(["-i", small_words_file, "-o", work_dir, "--resume", "--members", 3], capsys), "members is 2")
