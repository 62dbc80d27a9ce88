"""Sampling: the naive, full and cached samplers return the same names; the cache is the model, exactly."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wavenet_conv.data.words import Vocab, split_words
from wavenet_conv.inference.sampling import METHODS, SampleError, decode_names, next_tokens, sample
from wavenet_conv.models.checkpoint import save_checkpoint
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.conv import ConvWaveNet
from wavenet_conv.models.folded import FoldedConvWaveNet
from wavenet_conv.models.incremental import IncrementalWaveNet
from wavenet_conv.sample import main
from wavenet_conv.utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = Vocab.from_words([LETTERS])


@pytest.fixture
def names_model(make_random_tree):
    """names_model(block_size, ...): a random model (random batch-norm state too) whose '.' bias ends names
    after about mean_length characters, as a TreeWaveNet or its ConvWaveNet."""

    def build(block_size=8, seed=0, dtype=torch.float64, device="cpu", mean_length=5.0, form="conv"):
        config = ModelConfig(vocab_size=len(VOCAB), block_size=block_size)
        tree = make_random_tree(config, seed=seed, dtype=dtype, device=device)
        with torch.no_grad():
            tree.head.bias[0] = math.log((len(VOCAB) - 1) / mean_length)
        return tree if form == "tree" else ConvWaveNet.from_tree(tree).eval()

    return build


def draw_all(model, num_samples, seed=1, methods=METHODS, **kwargs):
    return {m: sample(model, VOCAB, num_samples, method=m, generator=torch.Generator().manual_seed(seed), **kwargs)
            for m in methods}


@pytest.mark.parametrize("form", ["tree", "conv"])
@pytest.mark.parametrize("block_size", [2, 8, 16])
def test_methods_return_identical_names_float64(form, block_size, names_model):
    model = names_model(block_size, form=form)
    names = draw_all(model, 150)
    assert names["naive"] == names["full"] == names["cached"]
    assert len(set(names["cached"])) > 100  # really sampled, not one name repeated
    assert max(map(len, names["cached"])) > block_size  # names run past the first window


def test_zero_samples_is_an_empty_list(names_model):
    """`--num-samples 0` skips sampling (the cache once failed on a batch of no names)."""
    names = draw_all(names_model(8), 0)
    assert names == {m: [] for m in METHODS}


def test_methods_return_identical_names_float32_for_thousands_of_names(names_model):
    model = names_model(8, dtype=torch.float32)
    fast = draw_all(model, 4000, methods=("full", "cached"))
    assert fast["full"] == fast["cached"]
    naive = draw_all(model, 1000, methods=("naive",))["naive"]
    assert naive == fast["cached"][:1000]  # the uniforms are per (name, position): a prefix of the batch
    assert sum(len(n) + 1 for n in fast["cached"]) > 20_000  # over 20 thousand characters drawn and matched


def test_a_name_depends_only_on_the_seed_and_its_row(names_model):
    """The uniforms fill [num_samples, max_len] row by row: a smaller batch is the start of a larger one."""
    model = names_model(8, dtype=torch.float32)
    whole = sample(model, VOCAB, 300, generator=torch.Generator().manual_seed(3), max_len=20)
    part = sample(model, VOCAB, 40, method="full", generator=torch.Generator().manual_seed(3), max_len=20)
    assert whole[:40] == part


def step_through(model, idx, init="boundary", drop_every=None):
    """Logits of the incremental generator fed idx one column at a time (b t v), optionally dropping names."""
    cache = IncrementalWaveNet(FoldedConvWaveNet(model), idx.shape[0], init=init)
    rows = None if drop_every is None else torch.arange(idx.shape[0], device=idx.device)
    logits = torch.full((*idx.shape, model.config.vocab_size), math.nan, dtype=model.head.weight.dtype,
                        device=idx.device)
    for t in range(idx.shape[1]):
        if rows is None:
            logits[:, t] = cache.step(idx[:, t])
        else:
            logits[rows, t] = cache.step(idx[rows, t], rows)
            if t % drop_every == drop_every - 1 and len(rows) > 1:
                rows = rows[1::2]  # drop every other name, as finished ones are
    return logits, rows


@pytest.mark.parametrize("block_size", [2, 4, 8, 16])  # 2: level 0 only; 4: the tabled level 1 on top
def test_cached_step_logits_equal_full_forward(block_size, torch_device, names_model):
    model = names_model(block_size, dtype=torch.float32, device=torch_device)
    idx = torch.randint(0, len(VOCAB), (16, 3 * block_size + 5), generator=torch.Generator().manual_seed(0))
    idx[:, 0] = 0  # every name starts with '.'
    idx = idx.to(torch_device)
    expected, _ = model(idx)  # b t v
    got, _ = step_through(model, idx)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # dropping finished names from the batch keeps the rest exact
    got, rows = step_through(model, idx, drop_every=5)
    assert len(rows) < len(idx)  # some names were dropped on the way
    torch.testing.assert_close(got[rows], expected[rows], atol=1e-5, rtol=1e-5)


def test_zero_initialised_cache_fails_the_check(names_model):
    """Negative control: zeros are not what the model computes before the start, and the check sees it."""
    block_size = 16
    model = names_model(block_size, dtype=torch.float32)
    idx = torch.randint(1, len(VOCAB), (16, 2 * block_size), generator=torch.Generator().manual_seed(0))
    idx[:, 0] = 0
    expected, _ = model(idx)
    got, _ = step_through(model, idx, init="zeros")
    gap = (got - expected).abs().amax(dim=(0, 2))  # t
    # levels 0 and 1 are tables of the tokens, so the zeros sit in the level >= 2 buffers: every node that
    # reads one is wrong, and through the levels above every window ending before block_size - 4, by far
    assert gap[: block_size - 4].min() > 1e-2
    # once the window has left those buffers behind the wrong start is forgotten: the check fails for that only
    torch.testing.assert_close(got[:, block_size - 4 :], expected[:, block_size - 4 :], atol=1e-5, rtol=1e-5)


def test_prefix_starts_every_name_and_methods_agree(names_model):
    model = names_model(8)
    names = draw_all(model, 60, prefix="ja")
    assert names["naive"] == names["full"] == names["cached"]
    assert all(n.startswith("ja") for n in names["cached"])
    assert len({n[2:3] for n in names["cached"]}) > 5  # the character after the prefix is sampled


def test_prefix_conditions_the_model(names_model):
    """With top_k=1 (greedy) a name is the model's argmax chain from the prefix, computed here by hand."""
    model = names_model(8)
    (greedy,) = sample(model, VOCAB, 1, top_k=1, prefix="ka", generator=torch.Generator().manual_seed(0))
    history = [0] + VOCAB.encode("ka")
    while len(history) <= 4 * 8 + 2:
        logits, _ = model(torch.tensor([history]))
        ix = int(logits[0, -1].argmax())
        if ix == 0:
            break
        history.append(ix)
    assert greedy == VOCAB.decode(history[1:])


def test_max_len_bounds_runaway_names(names_model):
    model = names_model(8)
    with torch.no_grad():
        model.head.bias[0] = -50.0  # the model never ends a name
    names = draw_all(model, 20, max_len=12, prefix="z")
    assert names["naive"] == names["full"] == names["cached"]
    assert all(len(n) == 12 and n.startswith("z") for n in names["cached"])
    default = sample(model, VOCAB, 3, generator=torch.Generator().manual_seed(0))
    assert all(len(n) == 4 * 8 for n in default)  # the documented default: 4 * block_size past the prefix


def test_inverse_cdf_picks_quantiles_of_the_distribution():
    probs = torch.tensor([[0.2, 0.3, 0.5]])
    logits = probs.log()
    u = torch.tensor([0.0, 0.1999, 0.2001, 0.4999, 0.5001, 0.9999])
    got = next_tokens(logits.expand(len(u), -1), u)
    assert got.tolist() == [0, 0, 1, 1, 2, 2]
    # a grid of uniforms gives each token its probability's share of the grid
    grid = (torch.arange(1000) + 0.5) / 1000
    counts = torch.bincount(next_tokens(logits.expand(1000, -1), grid), minlength=3)
    assert counts.tolist() == [200, 300, 500]
    top2 = torch.bincount(next_tokens(logits.expand(1000, -1), grid, top_k=2), minlength=3)
    assert top2.tolist() == [0, 375, 625]  # 0.3 and 0.5 renormalised
    cold = next_tokens(logits.expand(1000, -1), grid, temperature=0.01)
    assert cold.eq(2).all()


def test_decode_names_cuts_at_the_end_and_keeps_unicode():
    vocab = Vocab.from_words(["abé"])  # '.', a, b, é
    tokens = torch.tensor([[1, 2, 0, 0], [0, 0, 0, 0], [3, 3, 3, 3], [2, 0, 0, 0]])
    assert decode_names(tokens, vocab) == ["ab", "", "éééé", "b"]
    assert decode_names(tokens[:0], vocab) == []


def test_temperature_and_top_k_reach_every_method(names_model):
    model = names_model(8)
    names = draw_all(model, 80, temperature=0.7, top_k=5)
    assert names["naive"] == names["full"] == names["cached"]
    assert names["cached"] != draw_all(model, 80, methods=("cached",))["cached"]


@pytest.mark.parametrize("kwargs, message", [
    ({"prefix": "j@"}, "'@'"),
    ({"prefix": "a.b"}, "'.'"),
    ({"prefix": "A"}, "'A'"),
    ({"temperature": 0}, "temperature"),
    ({"temperature": -1.0}, "temperature"),
    ({"temperature": math.nan}, "temperature"),
    ({"top_k": 0}, "top_k"),
    ({"top_k": 2.5}, "top_k"),
    ({"method": "fast"}, "method"),
    ({"max_len": 2, "prefix": "ab"}, "max_len"),
])
def test_bad_arguments_raise_one_line_errors(kwargs, message, names_model):
    model = names_model(8)
    with pytest.raises(SampleError, match=message) as info:
        sample(model, VOCAB, 3, **kwargs)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_not_a_model_is_a_type_error():
    with pytest.raises(TypeError):
        sample(torch.nn.Linear(2, 2), VOCAB, 3)


def test_sampling_restores_training_mode(names_model):
    model = names_model(8).train()
    sample(model, VOCAB, 3, generator=torch.Generator().manual_seed(0))
    assert model.training


# ---- the CLI ----

TRAIN_LETTERS = "abc"
TRAIN_WORDS = [a + b for a in TRAIN_LETTERS for b in TRAIN_LETTERS] + list(TRAIN_LETTERS) + ["abcabc", "cabbage"[:3]]


@pytest.fixture
def work_dir(tmp_path, make_random_tree):
    """A small trained-looking work dir: a random ConvWaveNet over the words' vocabulary, and the words file."""
    vocab = Vocab.from_words(TRAIN_WORDS)
    config = ModelConfig(vocab_size=len(vocab), block_size=8, n_embd=8, n_hidden=16)
    tree = make_random_tree(config, dtype=torch.float32)
    with torch.no_grad():
        tree.head.bias[0] = 1.0  # short names, many of them in the training words
    save_checkpoint(tmp_path / "run" / "model.pt", ConvWaveNet.from_tree(tree), vocab)
    (tmp_path / "words.txt").write_text("\n".join(TRAIN_WORDS) + "\n")
    return tmp_path


def run_cli(work_dir, *flags):
    return main(["-o", str(work_dir / "run"), "--input-file", str(work_dir / "words.txt"), *flags])


def test_cli_prints_names_marks_new_ones_and_reports_the_share(work_dir, capsys):
    run_cli(work_dir, "-n", "40", "--seed", "7")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 41
    train = set(split_words(TRAIN_WORDS)[0])
    tags = []
    for line in lines[:40]:
        name, tag = (line[: -len(" new")], "new") if line.endswith(" new") else (line[: -len(" in train")], "in train")
        assert line.endswith((" new", " in train"))
        tags.append(tag)
        assert tag == ("in train" if name.strip() in train else "new")
    assert "in train" in tags and "new" in tags  # both kinds occur, so both branches are checked
    in_train = tags.count("in train")
    assert lines[-1].startswith(f"{in_train} of 40 samples ({in_train / 40:.1%}) occur in the training data")


def test_cli_methods_print_the_same_names(work_dir, capsys):
    outputs = []
    for method in METHODS:
        run_cli(work_dir, "-n", "15", "--method", method, "--prefix", "b", "--temperature", "0.9", "--top-k", "3")
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1] == outputs[2]
    assert all(line.startswith("b") for line in outputs[0].splitlines()[:15])


@pytest.mark.parametrize("flags", [
    ["--prefix", "xy"], ["--temperature", "0"], ["--top-k", "0"], ["-n", "-1"], ["--max-len", "1", "--prefix", "a"],
])
def test_cli_bad_input_exits_2(work_dir, capsys, flags):
    with pytest.raises(SystemExit) as info:
        run_cli(work_dir, *flags)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_cli_rejects_missing_checkpoint_and_foreign_data(work_dir, capsys):
    with pytest.raises(SystemExit) as info:
        main(["-o", str(work_dir / "nowhere")])
    assert info.value.code == 2
    (work_dir / "other.txt").write_text("zebra\n")
    with pytest.raises(SystemExit) as info:
        main(["-o", str(work_dir / "run"), "--input-file", str(work_dir / "other.txt")])
    assert info.value.code == 2 and "never saw" in capsys.readouterr().err


def test_cli_as_a_module_without_traceback(work_dir):
    command = [sys.executable, "-m", "wavenet_conv.sample", "-o", str(work_dir / "run"),
               "--input-file", str(work_dir / "words.txt")]
    ok = subprocess.run(command + ["-n", "3"], capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr
    assert len(ok.stdout.splitlines()) == 4
    bad = subprocess.run(command + ["--prefix", "Q"], capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


# ---- the benchmark ----

def test_benchmark_quick_ends_with_one_json_line(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/sample.py", "--quick", "--device", "cpu", "--threads", "1",
                           "--json", str(tmp_path / "r.json")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == json.loads((tmp_path / "r.json").read_text())
    assert {"device", "torch", "threads", "results"} <= result.keys()
    methods = {r["method"] for r in result["results"]}
    assert methods == set(METHODS)
    for r in result["results"]:
        assert r["names_per_s"] > 0 and r["chars_per_s"] >= r["names_per_s"]
        assert {"device", "batch_size", "block_size"} <= r.keys()


# ---- CUDA: the same names on the GPU ----

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_samples_the_cpu_names(names_model):
    cpu = names_model(8, dtype=torch.float64)
    gpu = names_model(8, dtype=torch.float64, device="cuda")
    for method in METHODS:
        got = sample(gpu, VOCAB, 100, method=method, generator=torch.Generator().manual_seed(5))
        assert got == sample(cpu, VOCAB, 100, method=method, generator=torch.Generator().manual_seed(5))
