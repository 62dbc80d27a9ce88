"""benchmarks/compare.py: the --quick run's JSON and report, and an agreement check that catches a wrong form."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import compare
from benchmarks import compare_workloads as cw
from wavenet_conv.data.words import build_windows
from wavenet_conv.models import packing
from wavenet_conv.models.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]


def test_quick_run_writes_the_json_contract(names_path, tmp_path):
    out = subprocess.run(
        # one thread: on a shared 2-core machine, two OpenMP threads make every tiny op of the loop form stall
        [sys.executable, str(REPO / "benchmarks" / "compare.py"), "--quick", "--threads", "1", "-i", str(names_path),
         "--json", str(tmp_path / "compare.json"), "--out-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert not out.stdout.strip().splitlines()[-1].startswith("{")  # the JSON goes to --json only
    result = json.loads((tmp_path / "compare.json").read_text())
    assert {"device", "torch", "threads", "results", "ratios", "environments"} <= set(result)
    assert "targets" not in result
    assert result["device"] == "cpu"
    env = result["environments"]["cpu"]
    assert {"date", "commit", "command", "device_name", "torch", "threads"} <= set(env)
    assert env["command"].startswith("python benchmarks/compare.py --quick --threads 1")
    rows = result["results"]
    for row in rows:
        assert {"form", "mode", "device", "block_size", "predictions_per_s", "gflops"} <= set(row)
        assert row["predictions_per_s"] > 0
    best = {(r["form"], r["mode"]): r["predictions_per_s"] for r in rows if r["best"] and r["block_size"] == 8}
    assert set(best) == {("loop", "eval"), ("tree", "eval"), ("conv", "eval"), ("conv_folded", "eval"),
                         ("tree", "train"), ("conv", "train")}
    ratios = result["ratios"]["cpu"]
    assert ratios["eval_conv_over_tree"] == pytest.approx(best[("conv", "eval")] / best[("tree", "eval")])
    assert ratios["train_conv_over_tree"] == pytest.approx(best[("conv", "train")] / best[("tree", "train")])
    assert ratios["eval_conv_over_loop"] == pytest.approx(best[("conv", "eval")] / best[("loop", "eval")])
    fastest = max(cw.CONV_FORMS, key=lambda f: best[(f, "eval")])
    assert ratios["eval_best_conv_form"] == fastest
    assert ratios["eval_best_conv_over_tree"] == pytest.approx(best[(fastest, "eval")] / best[("tree", "eval")])
    assert (tmp_path / "compare_cpu.png").stat().st_size > 0
    rounds = ratios["eval_conv_over_tree_rounds"]
    assert len(rounds) == result["settings"]["cpu"]["rounds"] and min(rounds) <= ratios["eval_conv_over_tree"] <= max(rounds)
    report = (tmp_path / "compare_cpu.md").read_text()
    assert "| 8 | eval | conv_folded |" in report
    head = report.splitlines()[:8]
    assert head[0].startswith("# ") and f"- command: `{env['command']}`" in head
    assert any(line.startswith(f"- commit: {env['commit']}") for line in head)
    assert "target" not in report.lower()
    assert report.strip() in out.stdout  # the same report on stdout


def test_quick_help_names_its_settings():
    """--help describes what --quick runs, from the settings themselves."""
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare.py"), "--help"], capture_output=True,
                         text=True, timeout=60, cwd=REPO)
    text = " ".join(out.stdout.split())
    sizes = " and ".join(map(str, compare.QUICK["eval_batch_sizes"]))
    assert f"batch sizes {sizes}" in text and compare.QUICK["eval_batch_sizes"] == compare.QUICK["train_batch_sizes"]


def test_bad_block_size_is_a_one_line_error(names_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare.py"), "--quick", "-i", str(names_path),
                          "--block-sizes", "6"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: --block-sizes must be powers of two >= 2, got 6"]


@pytest.fixture
def small_setup(words, vocab):
    """The benchmark's own model and data at a small width, over a slice of the validation split."""
    args = compare.parse_args(["--quick", "--train-predictions", "256", "--loop-windows", "16"])
    config = ModelConfig(len(vocab), 8, 6, 16)
    data = compare.prepare_data(words, vocab, config, "cpu", args)
    data["words"], data["items"] = data["words"][:60], data["items"][:60]
    tree = compare.seeded_tree(config, 0, build_windows(data["train_words"], vocab, 8))
    return config, data, tree


def test_agreement_checks_pass_on_the_same_weights(small_setup):
    config, data, tree = small_setup
    compare.check_eval_agreement(cw.build_models(tree), config, data, cw.FORMS)
    compare.check_train_agreement(tree, config, data, cw.FORMS)


@pytest.mark.parametrize("form", ["loop", "conv", "conv_folded"])
def test_eval_check_catches_a_corrupted_form(small_setup, form):
    config, data, tree = small_setup
    models = cw.build_models(tree)
    if form == "loop":
        models["loop"] = compare.seeded_tree(config, 1, build_windows(data["train_words"], data["vocab"], 8))
    elif form == "conv_folded":
        with torch.no_grad():
            models["conv_folded"].levels[-1].weight[0, 0, 0] += 1e-3  # levels 0 and 1 are tables, built once
    else:
        models[form] = cw.ConvWaveNet.from_tree(tree).eval()
        with torch.no_grad():
            models[form].levels[1].conv.weight[0, 0, 0] += 1e-3
    with pytest.raises(compare.AgreementError, match=f"{form} vs tree"):
        compare.check_eval_agreement(models, config, data, cw.FORMS)


@pytest.mark.parametrize("form", ["conv", "tree"])
def test_train_check_catches_a_corrupted_form(small_setup, form):
    config, data, tree = small_setup

    def corrupted(tree, which):
        model = cw.train_model(tree, which)
        if which == form:
            with torch.no_grad():
                next(model.parameters()).view(-1)[0] += 1e-3
        return model

    with pytest.raises(compare.AgreementError, match="conv vs tree"):
        compare.check_train_agreement(tree, config, data, cw.FORMS, make_train_model=corrupted)


@pytest.mark.parametrize("length_runs", [False, True], ids=["row", "length-runs"])
@pytest.mark.parametrize("block_size", [8, 32])
def test_analytic_macs_match_a_flop_counter(words, vocab, block_size, length_runs, monkeypatch):
    """The multiply-adds the report divides by are the ones the matmuls really do (in-place addmm_ and mv
    counted too, which torch's counter leaves out by default), in eval and in training; in eval on the packed
    row, and over length runs (conv.length_runs_conv: every run counts as long here)."""
    if length_runs:
        monkeypatch.setattr(packing, "LENGTH_RUN_POSITIONS", 1)
    aten = torch.ops.aten
    mapping = {aten.addmm_: lambda c, a, b, *args, out_shape=None, **kw: 2 * a[0] * a[1] * b[1],
               aten.mv: lambda a, b, *args, out_shape=None, **kw: 2 * a[0] * a[1]}
    args = compare.settings_for(compare.parse_args(["--quick", "--train-predictions", "512"]), "cpu")
    config = ModelConfig(len(vocab), block_size, 6, 16)
    data = compare.prepare_data(words, vocab, config, "cpu", args)
    data["words"], data["items"] = data["words"][:80], data["items"][:80]
    tree = compare.seeded_tree(config, 0, build_windows(data["train_words"], vocab, block_size))
    models = cw.build_models(tree)
    chunks, _ = cw.item_chunks(data["items"], 256, torch.device("cpu"), torch.Generator().manual_seed(0))
    runs = [packing.ItemRow.of(x, y).in_long_length_runs for x, y in chunks]
    assert all(runs) if length_runs else not any(runs)  # the benchmark's batches are sorted by length
    for form in cw.FORMS:
        workload = cw.eval_workload(form, models[form], config, data, 256)
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            workload.run()
        assert counter.get_total_flops() == 2 * workload.macs, form
    for form in cw.TRAINABLE:
        workload = cw.train_workload(form, cw.train_model(tree, form), config, data, 256)
        with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            workload.run()
        assert counter.get_total_flops() == 2 * workload.macs, form


FAULTS_PER_TREE_CALL = """
import resource, sys, torch
from benchmarks.common import keep_freed_memory
if sys.argv[1] == "keep":
    took = keep_freed_memory()
else:  # glibc's starting thresholds, held fixed: its dynamic threshold sometimes stops the faults on its own
    import ctypes, ctypes.util
    mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    took = bool(mallopt(-3, 128 * 1024)) and bool(mallopt(-1, 128 * 1024))
from wavenet_conv.models.config import ModelConfig
from wavenet_conv.models.tree import TreeWaveNet
torch.set_num_threads(1)
tree = TreeWaveNet(ModelConfig(27, 8, 24, 128)).eval()
x = torch.randint(0, 27, (1024, 8), generator=torch.Generator().manual_seed(0))
faults = []
with torch.no_grad():
    for _ in range(3):
        tree(x)
    for _ in range(9):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tree(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(took, sorted(faults)[len(faults) // 2])  # the median call: one stray page-in of the process is not the allocator
"""


def faults_per_tree_call(setting):
    out = subprocess.run([sys.executable, "-c", FAULTS_PER_TREE_CALL, setting], capture_output=True, text=True,
                         timeout=60, cwd=REPO, check=True)
    took, faults = out.stdout.split()
    return took == "True", float(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and minor page faults: Linux")
def test_kept_freed_memory_stops_the_trees_page_faults():
    """The tree's eval at batch 1024 faults in hundreds of fresh pages a call when glibc hands freed blocks back
    to the OS, as its defaults do at their starting 128 KiB threshold (the negative control, held fixed here:
    the default threshold moves, and some runs stop faulting on their own, which is what made the tree's
    timings depend on the order of runs), and at least ten times fewer once freed memory is kept (the median
    call of nine: one stray page-in of the process once reached 102 faults a call in a mean of five)."""
    took, kept = faults_per_tree_call("keep")
    if not took:
        pytest.skip("not glibc: mallopt is not there")
    _, returned = faults_per_tree_call("return")
    assert returned > 100
    assert kept * 10 < returned
