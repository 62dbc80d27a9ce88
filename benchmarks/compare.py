"""Tree against conv, side by side: predictions per second at equal work with the same weights.

    python benchmarks/compare.py                     # every device available, block sizes 8 16 32 (~12 min on a CPU)
    python benchmarks/compare.py --quick             # a CPU smoke run of about 20 s: block 8, short timings
    python benchmarks/compare.py --device cpu --profile --json benchmarks/results/compare_cpu.json \
        --out-dir benchmarks/results               # the committed CPU result

A prediction is one next-character target. Every form gets the same weights (a seeded tree, converted with
ConvWaveNet.from_tree), and before anything is timed the forms must agree on the benchmarked data:
eval logits and loss over the whole validation split equal the tree's, and one training step of the conv
equals one of the tree (with running batch-norm statistics: in training mode the tree counts a shared node
once per window that holds it, the conv once per position, so their batch statistics differ by design).
A disagreement raises AgreementError.

Each form and mode runs at every batch size of the sweep; the best is its result (all are in the JSON).
Timed calls are interleaved over --rounds so that other load on the machine hits every form alike. A form's
rate is its fastest timed run (the median is reported beside it): on these shared virtual machines other
tenants only ever slow a run, for seconds at a time and by up to 2x for the many-small-op forms (the loop,
the tree at small batches) while the conv's large kernels hold steady, so the fastest run is what two runs of
the script reproduce; the median moved by up to 2x between runs.
Output: a markdown report on stdout (also compare_<device>.md with --out-dir, headed by date, commit, machine,
torch version and command), a plot (compare_<device>.png with --out-dir) and, with --json, every measurement
as one JSON object in that file.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import torch  # noqa: E402

from benchmarks import compare_workloads as cw  # noqa: E402
from benchmarks.common import (available_devices, command_line, environment, keep_freed_memory,  # noqa: E402
                               markdown_table, measure, report_header, write_json, write_text)
from wavenet_conv.data.words import (DEFAULT_INPUT, IGNORE_INDEX, Vocab, build_windows, encode_items, pad_items,
                                     read_words, split_words)
from wavenet_conv.models.config import ModelConfig  # noqa: E402
from wavenet_conv.models.conv import ConvWaveNet  # noqa: E402
from wavenet_conv.models.tree import TreeWaveNet  # noqa: E402
from wavenet_conv.training.plot import pyplot  # noqa: E402
from wavenet_conv.utils.errors import UserError, exit_on_user_error  # noqa: E402

# FP32 (no tensor cores: torch's float32 matmuls do not use TF32 by default), dense, from NVIDIA's data sheets
CUDA_FP32_PEAK_TFLOPS = [("H100 PCIe", 51.2), ("H100 NVL", 60.0), ("H100", 66.9), ("H200", 66.9), ("A100", 19.5)]


# sweep defaults of a full run and of --quick (flags given explicitly win)
# (the packed conv gains up to 8192-16384 predictions a batch on the CPU, the tree peaks at 512-2048)
FULL = {"block_sizes": [8, 16, 32], "eval_batch_sizes": [256, 512, 1024, 2048, 4096, 8192, 16384],
        "train_batch_sizes": [256, 1024, 2048, 4096, 8192, 16384], "train_predictions": 16384, "loop_windows": 2000,
        "min_run_time": 0.3, "rounds": 5, "peak_size": 2048, "eval_items": 0}
# a GPU needs far larger batches to be busy; its loop form runs fewer windows (one kernel launch per op)
FULL_CUDA = FULL | {"eval_batch_sizes": [4096, 16384, 65536], "train_batch_sizes": [1024, 4096, 16384, 65536],
                    "train_predictions": 262144, "loop_windows": 500, "peak_size": 8192}
# --quick: two batch sizes, so the tree (fastest at ~1,024) and the packed conv (4,096 and up) each run at one that
# suits it, as the full sweep lets them; one size for all (1,024) rated the conv below its full-run ratios
QUICK = {"block_sizes": [8], "eval_batch_sizes": [1024, 4096], "train_batch_sizes": [1024, 4096],
         "train_predictions": 4096, "loop_windows": 256, "min_run_time": 0.2, "rounds": 3, "peak_size": 512,
         "eval_items": 500}


class AgreementError(AssertionError):
    """Two forms that should compute the same function do not: no timing is worth reporting."""


# ---- the model and data --------------------------------------------------------------------------------

def seeded_tree(config, seed, train_windows):
    """The lecture's initialisation from `seed`, random batch-norm gamma and beta (nothing at identity), and
    running statistics from training-mode forward passes over training windows (realistic, no weight update)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tree = TreeWaveNet(config)
    with torch.no_grad():
        for _, bn in tree.levels:
            bn.gamma.copy_(0.5 + torch.rand(bn.gamma.shape, generator=generator))
            bn.beta.copy_(0.2 * torch.randn(bn.beta.shape, generator=generator))
        x, _ = train_windows
        batch = min(len(x), 1024)
        for start in range(0, min(len(x) - batch + 1, 32 * batch), batch):  # full batches only
            tree(x[start : start + batch])
    return tree.eval()


def prepare_data(words, vocab, config, device, args):
    """Everything the workloads read, built once per block size and device."""
    train, val, _ = split_words(words)
    train_items = encode_items(train, vocab)
    n_train, predictions = 0, 0
    while n_train < len(train) and predictions < args.train_predictions:  # a fixed slice of the training split
        predictions += len(train_items[n_train]) + 1
        n_train += 1
    val = val[: args.eval_items or len(val)]
    return {
        "device": torch.device(device), "vocab": vocab, "words": val, "items": encode_items(val, vocab),
        "train_words": train[:n_train], "train_items": train_items[:n_train],
        "generator": torch.Generator().manual_seed(args.seed), "loop_windows": args.loop_windows,
    }


# ---- agreement checks ------------------------------------------------------------------------------------

def assert_agree(name, actual, expected, atol, rtol):
    try:
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)
    except AssertionError as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        raise AgreementError(f"{name}: forms disagree ({'; '.join(lines[:4])})") from None


def window_logits(form, model, config, data, batch_size=1024):
    """A form's logits and loss for every validation window in build_windows order (n v), computed on the
    same kind of batches as its timed workload."""
    words, items, vocab, device = data["words"], data["items"], data["vocab"], data["device"]
    with torch.no_grad():
        if form in ("loop", "tree"):
            x, y = cw.windows_of(words, vocab, config.block_size, device)
            if form == "loop":
                x, y = x[: data["loop_windows"]], y[: data["loop_windows"]]
            step = 1 if form == "loop" else batch_size
            logits = torch.cat([model(x[i : i + step])[0] for i in range(0, len(x), step)])
            return logits, torch.nn.functional.cross_entropy(logits, y)
        chunks, batches = cw.item_chunks(items, batch_size, device, torch.Generator().manual_seed(0))
        first = torch.cumsum(torch.tensor([0] + [len(it) + 1 for it in items]), 0)  # each item's first window
        logits = torch.empty(int(first[-1]), config.vocab_size, device=device)
        targets = torch.empty(int(first[-1]), dtype=torch.long, device=device)
        for (inputs, y), batch in zip(chunks, batches):
            windows = torch.cat([torch.arange(first[i], first[i + 1]) for i in batch]).to(device)
            out = model(inputs) if form == "conv_folded" else model(inputs)[0]  # b t v
            valid = y != IGNORE_INDEX  # b t, row-major: item by item, position by position
            out, target = out[valid], y[valid]
            logits[windows], targets[windows] = out, target
    return logits, torch.nn.functional.cross_entropy(logits, targets)


def check_eval_agreement(models, config, data, forms, atol=1e-5, rtol=1e-5):
    """Every form's validation logits and loss equal the tree's; returns the tree's loss."""
    ref_logits, ref_loss = window_logits("tree", models["tree"], config, data)
    for form in forms:
        if form == "tree":
            continue
        logits, loss = window_logits(form, models[form], config, data)
        assert_agree(f"eval logits of {form} vs tree", logits, ref_logits[: len(logits)], atol, rtol)
        if form != "loop":
            assert_agree(f"eval loss of {form} vs tree", loss, ref_loss, atol, rtol)
    return ref_loss.item()


def one_step(model, inputs, targets):
    optimizer = torch.optim.SGD(model.parameters(), lr=cw.TRAIN_LR)
    _, loss = model(inputs, targets)
    loss.backward()
    optimizer.step()
    return loss.detach()


def check_train_agreement(tree, config, data, forms, make_train_model=cw.train_model, n_items=64,
                          atol=1e-5, rtol=1e-5):
    """One SGD step on the same items: conv == tree with running batch-norm statistics (their training-mode
    statistics differ by design)."""
    words, items, vocab, device = data["train_words"][:n_items], data["train_items"][:n_items], data["vocab"], \
        data["device"]
    if "tree" in forms and "conv" in forms:
        stepped_tree, stepped_conv = make_train_model(tree, "tree").eval(), make_train_model(tree, "conv").eval()
        wx, wy = build_windows(words, vocab, config.block_size)
        tree_loss = one_step(stepped_tree, wx.to(device), wy.to(device))
        x, y = pad_items(items)
        conv_loss = one_step(stepped_conv, x.to(device), y.to(device))
        assert_agree("loss of a step (running statistics), conv vs tree", conv_loss, tree_loss, atol, rtol)
        expected = dict(ConvWaveNet.from_tree(stepped_tree).named_parameters())
        for name, value in stepped_conv.named_parameters():
            assert_agree(f"{name} after a step (running statistics), conv vs tree", value, expected[name], atol, rtol)


# ---- peak and timing -------------------------------------------------------------------------------------

def cpu_theoretical_gflops(threads):
    """threads x FLOP per cycle (AVX-512: 64, AVX2 with FMA: 32, i.e. two FMA units) x the reported clock:
    an estimate (a virtual machine reports its base clock; a measured matmul can beat it)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return None, "no /proc/cpuinfo"
    flags = next((line for line in info.splitlines() if line.startswith("flags")), "").split()
    mhz = [float(line.split(":")[1]) for line in info.splitlines() if line.startswith("cpu MHz")]
    if not mhz:
        return None, "no clock in /proc/cpuinfo"
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= set(flags) else 16
    return threads * per_cycle * mhz[0] / 1e3, (f"{threads} thread{'s' if threads != 1 else ''} x {per_cycle} FLOP/cycle x {mhz[0]:.0f} MHz, "
                                                 "the reported clock: boost clocks run above it")


def peak_gflops(device, size, min_run_time):
    """The measured float32 matmul rate (the practical peak) and the data-sheet or estimated theoretical one."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    timing = measure(lambda: a @ b, min_run_time=min_run_time)
    peak = {"matmul_size": size, "matmul_gflops": 2 * size**3 / timing["min_s"] / 1e9}  # fastest, as every rate
    if torch.device(device).type == "cuda":
        name = torch.cuda.get_device_name(device)
        spec = next((tf for key, tf in CUDA_FP32_PEAK_TFLOPS if key in name), None)
        peak["theoretical_gflops"] = None if spec is None else spec * 1e3
        peak["theoretical_basis"] = f"{name}: FP32 data sheet" if spec else "unknown GPU"
    else:
        peak["theoretical_gflops"], peak["theoretical_basis"] = cpu_theoretical_gflops(torch.get_num_threads())
    return peak


def timed_rounds(workloads, rounds, min_run_time, label=""):
    """Each workload measured once per round, rounds interleaved; its median over rounds, its fastest run, each
    round's median and fastest run, and the spread."""
    per_round = [[] for _ in workloads]
    for r in range(rounds):
        for i, w in enumerate(workloads):
            per_round[i].append(measure(w.run, min_run_time=min_run_time))
            rate = w.n_predictions / per_round[i][-1]["median_s"]
            print(f"{label} round {r + 1}/{rounds}: {w.mode} {w.form} batch {w.batch_size}: {rate:,.0f} predictions/s",
                  file=sys.stderr, flush=True)
    out = []
    for timings in per_round:
        medians = [t["median_s"] for t in timings]
        out.append({
            "median_s": statistics.median(medians), "iqr_s": statistics.median(t["iqr_s"] for t in timings),
            "min_s": min(t["min_s"] for t in timings), "max_s": max(t["max_s"] for t in timings),
            "round_medians_s": medians, "round_min_s": [t["min_s"] for t in timings],
            "runs": sum(t["runs"] for t in timings),
        })
    return out


def result_row(workload, timing, config, device, peak):
    rate = workload.n_predictions / timing["min_s"]  # the fastest run: interference only slows
    flops_per_prediction = 2 * workload.macs / workload.n_predictions
    gflops = rate * flops_per_prediction / 1e9
    theoretical = peak.get("theoretical_gflops")
    return {
        "form": workload.form, "mode": workload.mode, "device": device, "block_size": config.block_size,
        "batch_size": workload.batch_size, "n_batches": workload.n_batches, "n_predictions": workload.n_predictions,
        "predictions_per_s": rate, "predictions_per_s_median": workload.n_predictions / timing["median_s"],
        # spread: the rate at the slowest and fastest single run, and the relative interquartile range
        "predictions_per_s_min": workload.n_predictions / timing["max_s"],
        "predictions_per_s_max": workload.n_predictions / timing["min_s"],
        "iqr_rel": timing["iqr_s"] / timing["median_s"], "median_s": timing["median_s"], "min_s": timing["min_s"],
        "runs": timing["runs"], "round_medians_s": timing["round_medians_s"], "round_min_s": timing["round_min_s"],
        "macs_per_prediction": workload.macs / workload.n_predictions,  # training: forward and backward
        "nominal_macs_per_prediction": cw.nominal_macs_per_prediction(config, workload.form),
        "flops_per_prediction": flops_per_prediction, "gflops": gflops,
        "fraction_of_matmul_peak": gflops / peak["matmul_gflops"],
        "fraction_of_theoretical_peak": None if not theoretical else gflops / theoretical,
    }


def best_rows(rows):
    """The fastest batch size of each (form, mode, device, block_size), marked best."""
    best = {}
    for row in rows:
        key = (row["form"], row["mode"], row["device"], row["block_size"])
        if key not in best or row["predictions_per_s"] > best[key]["predictions_per_s"]:
            best[key] = row
    for row in rows:
        row["best"] = best[(row["form"], row["mode"], row["device"], row["block_size"])] is row
    return [row for row in rows if row["best"]]


def ratios_of(best, device, block_size):
    """conv over tree and over loop, for the plain conv and for the fastest conv form (named), from each form's
    fastest run; `<key>_rounds` holds the same ratio within each round, from each round's fastest run (its
    spread is the run's own noise)."""
    rows = {(r["form"], r["mode"]): r for r in best if r["device"] == device and r["block_size"] == block_size}
    rate = {key: r["predictions_per_s"] for key, r in rows.items()}

    def per_round(form, base, mode):
        a, b = rows[(form, mode)], rows[(base, mode)]
        return [(a["n_predictions"] / ta) / (b["n_predictions"] / tb)
                for ta, tb in zip(a["round_min_s"], b["round_min_s"])]

    out = {}
    for mode, base in (("eval", "tree"), ("train", "tree"), ("eval", "loop")):
        if (base, mode) not in rate:
            continue
        if ("conv", mode) in rate:
            out[f"{mode}_conv_over_{base}"] = rate[("conv", mode)] / rate[(base, mode)]
            out[f"{mode}_conv_over_{base}_rounds"] = per_round("conv", base, mode)
        convs = [f for f in cw.CONV_FORMS if (f, mode) in rate]
        if convs:
            fastest = max(convs, key=lambda f: rate[(f, mode)])
            out[f"{mode}_best_conv_over_{base}"] = rate[(fastest, mode)] / rate[(base, mode)]
            out[f"{mode}_best_conv_over_{base}_rounds"] = per_round(fastest, base, mode)
            out[f"{mode}_best_conv_form"] = fastest
    for mode in ("eval", "train"):
        convs = [f for f in cw.CONV_FORMS if (f, mode) in rate]
        if convs:
            out[f"{mode}_conv_predictions_per_s"] = rate.get(("conv", mode))
            out[f"{mode}_best_conv_predictions_per_s"] = max(rate[(f, mode)] for f in convs)
    return out


# ---- output ------------------------------------------------------------------------------------------------

TABLE_COLUMNS = [
    ("block_size", "block", "{}"), ("mode", "mode", "{}"), ("form", "form", "{}"),
    ("batch_size", "batch (pred.)", "{}"), ("predictions_per_s", "predictions/s (fastest run)", "{:,.0f}"),
    ("predictions_per_s_median", "median", "{:,.0f}"), ("spread", "spread (min-max)", "{}"),
    ("iqr_pct", "IQR", "{:.0f}%"),
    ("vs_tree", "x tree", "{:.2f}"), ("macs_per_prediction", "MACs/pred.", "{:,.0f}"),
    ("gflops", "GFLOP/s", "{:.1f}"), ("peak_pct", "% matmul peak", "{:.1f}"),
]


def table_rows(best):
    rows = []
    tree_rate = {(r["device"], r["block_size"], r["mode"]): r["predictions_per_s"] for r in best if r["form"] == "tree"}
    for r in sorted(best, key=lambda r: (r["device"], r["block_size"], r["mode"], cw.FORMS.index(r["form"]))):
        base = tree_rate.get((r["device"], r["block_size"], r["mode"]))
        rows.append(dict(r, spread=f"{r['predictions_per_s_min']:,.0f}-{r['predictions_per_s_max']:,.0f}",
                         iqr_pct=100 * r["iqr_rel"], vs_tree=None if base is None else r["predictions_per_s"] / base,
                         peak_pct=100 * r["fraction_of_matmul_peak"]))
    return rows


def plot(best, device, path):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    block_sizes = sorted({r["block_size"] for r in best if r["device"] == device})
    for ax, mode in zip(axes, cw.MODES):
        for i, form in enumerate(cw.FORMS):
            points = sorted((r["block_size"], r["predictions_per_s"]) for r in best
                            if r["device"] == device and r["mode"] == mode and r["form"] == form)
            if points:
                ax.plot(*zip(*points), marker="o", color=f"C{i}", label=form)  # one colour per form in both
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(block_sizes, [str(b) for b in block_sizes])
        ax.set_xlabel("block_size")
        ax.set_title(f"{mode} on {device}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    axes[0].set_ylabel("predictions per second (best batch size)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_table(rows):
    """Predictions per second of every batch size measured: the evidence that each form got its best."""
    sizes = sorted({r["batch_size"] for r in rows if r["form"] != "loop"})
    lines = ["| block | mode | form | " + " | ".join(f"batch {b}" for b in sizes) + " |",
             "|---" * (3 + len(sizes)) + "|"]
    keys = sorted({(r["block_size"], cw.MODES.index(r["mode"]), cw.FORMS.index(r["form"])) for r in rows
                   if r["form"] != "loop"})
    for block_size, mode, form in keys:
        rate = {r["batch_size"]: r for r in rows if (r["block_size"], cw.MODES.index(r["mode"]),
                                                      cw.FORMS.index(r["form"])) == (block_size, mode, form)}
        cells = [("**{:,.0f}**" if rate[b]["best"] else "{:,.0f}").format(rate[b]["predictions_per_s"])
                 if b in rate else "-" for b in sizes]
        lines.append(f"| {block_size} | {cw.MODES[mode]} | {cw.FORMS[form]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(best, env, peak, ratios, profile_text, rows=()):
    lines = [report_header("Tree against conv: predictions per second", env), "",
             markdown_table(table_rows(best), TABLE_COLUMNS), "",
             "Each form at its fastest batch size (predictions per batch or training step). MACs/pred.: the "
             "multiply-adds of the matmuls and convolutions per prediction as the form computes them (padding and all-dot nodes "
             "included; training: forward and backward); GFLOP/s = 2 x MACs x predictions/s. predictions/s: the "
             "fastest timed run (other tenants of the machine only slow a run), the ratios and the choice of batch "
             "size use it; median: over all runs. Spread: the rate of the slowest and the fastest single timed run; "
             "IQR relative to the median.", "",
             f"Peak: float32 matmul {peak['matmul_size']}^3 measured at {peak['matmul_gflops']:.1f} GFLOP/s "
             f"(the practical peak, '% matmul peak'); theoretical "
             + (f"{peak['theoretical_gflops']:.0f} GFLOP/s ({peak['theoretical_basis']})."
                if peak.get("theoretical_gflops") else f"unknown ({peak['theoretical_basis']}).")]
    lines += ["", "| block | ratio | conv (range over rounds) | fastest conv (range over rounds, form) |",
              "|---|---|---|---|"]

    def with_range(values, key):
        rounds = values.get(f"{key}_rounds") or [values[key]]
        return f"{values[key]:.2f} ({min(rounds):.2f}-{max(rounds):.2f})"

    for block_size, values in ratios.get("by_block_size", {}).items():
        for key in ("eval_conv_over_tree", "train_conv_over_tree", "eval_conv_over_loop"):
            best_key = key.replace("_conv_", "_best_conv_")
            if best_key in values:
                plain = "-" if key not in values else with_range(values, key)
                lines.append(f"| {block_size} | {key} | {plain} | {with_range(values, best_key)}, "
                             f"{values[key.split('_')[0] + '_best_conv_form']} |")
    if rows:
        lines += ["", "Predictions per second at each batch size (predictions per batch or step; best in bold):", "",
                  sweep_table(rows)]
    if profile_text:
        lines += ["", "## Profiles (top operators by self time, one call each)", "", profile_text]
    return "\n".join(lines) + "\n"


def profile_workload(workload, block_size, rows=8):
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        workload.run()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=36)
    return (f"### block {block_size}: {workload.form} {workload.mode} (batch {workload.batch_size})\n\n"
            f"```\n{table.strip()}\n```\n")


# ---- the run -----------------------------------------------------------------------------------------------

def run_device(device, words, vocab, args):
    command = args.command
    args = settings_for(args, device)
    env = environment(device, command)
    peak = peak_gflops(device, args.peak_size, args.min_run_time)
    rows, profiles, losses = [], [], {}
    for block_size in args.block_sizes:
        config = ModelConfig(len(vocab), block_size, args.n_embd, args.n_hidden)
        data = prepare_data(words, vocab, config, device, args)
        tree = seeded_tree(config, args.seed, build_windows(data["train_words"], vocab, block_size)).to(device)
        models = cw.build_models(tree)
        losses[block_size] = check_eval_agreement(models, config, data, args.forms)
        check_train_agreement(tree, config, data, args.forms)
        workloads = []
        for mode in args.modes:
            for form in args.forms:
                if mode == "train" and form not in cw.TRAINABLE:
                    continue
                sizes = [1] if form == "loop" else args.eval_batch_sizes if mode == "eval" else args.train_batch_sizes
                for batch_size, compiled in ((b, c) for b in sizes for c in cw.compiled_variants(form, args.compile)):
                    if mode == "eval":
                        workloads.append(cw.eval_workload(form, models[form], config, data, batch_size, compiled))
                    else:
                        workloads.append(cw.train_workload(form, cw.train_model(tree, form), config, data, batch_size,
                                                           compiled))
        timings = timed_rounds(workloads, args.rounds, args.min_run_time, f"[{device}] block_size {block_size}")
        block_rows = [result_row(w, t, config, device, peak) for w, t in zip(workloads, timings)]
        best = best_rows(block_rows)
        if args.profile:
            fastest = {(r["form"], r["mode"]): r["batch_size"] for r in best}
            profiles += [profile_workload(w, block_size) for w in workloads
                         if fastest[(w.form, w.mode)] == w.batch_size]
        rows += block_rows
        print(f"[{device}] block_size {block_size}: forms agree (val loss {losses[block_size]:.4f}); "
              f"{len(workloads)} workloads timed", file=sys.stderr)
    settings = {k: v for k, v in vars(args).items() if k in FULL}
    return env, peak, rows, "\n".join(profiles), losses, settings


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Tree vs conv WaveNet: predictions per second, side by side.")
    add = parser.add_argument
    add("--input-file", "-i", default=DEFAULT_INPUT, help="one item per line (names.txt)")
    add("--device", default="all", choices=["cpu", "cuda", "all"],
        help="where to run ('all': CPU plus CUDA when a GPU works)")
    add("--block-sizes", type=int, nargs="+", default=None, help="context lengths (default 8 16 32; --quick: 8)")
    add("--n-embd", type=int, default=24, help="embedding width (the lecture's 24)")
    add("--n-hidden", type=int, default=128, help="hidden width (the lecture's 128)")
    add("--forms", nargs="+", default=list(cw.FORMS), choices=cw.FORMS, help="forms to compare")
    add("--modes", nargs="+", default=list(cw.MODES), choices=cw.MODES, help="eval and/or train")
    add("--eval-batch-sizes", type=int, nargs="+", default=None,
        help="predictions per eval batch to sweep, each form keeps its fastest (CPU default 256 512 1024 2048 "
             "4096 8192 16384; CUDA 4096 16384 65536; --quick: 1024 4096)")
    add("--train-batch-sizes", type=int, nargs="+", default=None,
        help="predictions per training step to sweep, the lecture trains with 32 (CPU default 256 1024 2048 4096 "
             "8192 16384; CUDA 1024 4096 16384 65536; --quick: 1024 4096)")
    add("--train-predictions", type=int, default=None,
        help="predictions per timed training call (CPU default 16384; CUDA 262144; --quick: 4096)")
    add("--eval-items", type=int, default=None,
        help="validation items to evaluate (default 0: the whole validation split; --quick: 500)")
    add("--loop-windows", type=int, default=None,
        help="validation windows the loop form runs (CPU default 2000; CUDA 500; --quick: 256)")
    add("--min-run-time", type=float, default=None, help="seconds per measurement (default 0.3; --quick: 0.2)")
    add("--rounds", type=int, default=None, help="interleaved measurements of each workload (default 5; --quick: 3)")
    add("--peak-size", type=int, default=None, help="square matmul size for the practical peak (CPU default 2048)")
    add("--threads", type=int, default=1,
        help="torch CPU threads (default 1: two OpenMP threads on a 2-core machine stall whenever anything else "
             "runs, and the ratios then swing by 2x between runs; use 2 only on an idle machine)")
    add("--seed", type=int, default=1337, help="weights and batching")
    add("--default-allocator", action="store_true",
        help="leave glibc's malloc at its defaults: freed large blocks go back to the OS, and the tree's timings "
             "then vary with the allocator's history (see benchmarks/common.keep_freed_memory)")
    add("--profile", action="store_true", help="profile each form's fastest workload into the report")
    add("--compile", action="store_true",
        help="also time each conv form through torch.compile (rows conv_compiled, conv_folded_compiled), each "
             "compiled by an untimed first call and checked against the eager form")
    add("--quick", action="store_true",
        help=f"CPU smoke run of about 20 s: block {' '.join(map(str, QUICK['block_sizes']))}, "
             f"{QUICK['eval_items']} validation names, batch sizes "
             f"{' and '.join(map(str, QUICK['eval_batch_sizes']))}, {QUICK['rounds']} rounds of "
             f"{QUICK['min_run_time']} s")
    add("--json", default=None, help="write every measurement here as one JSON object")
    add("--out-dir", default=None, help="write compare_<device>.md and .png here")
    args = parser.parse_args(argv)
    args.command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    if args.compile:
        cw.include_compiled_forms()
    if args.quick and args.device == "all":
        args.device = "cpu"
    for size in args.block_sizes or []:
        if size < 2 or size & (size - 1):
            raise UserError(f"--block-sizes must be powers of two >= 2, got {size}")
    for name in ("n_embd", "n_hidden", "train_predictions", "loop_windows", "rounds", "peak_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.eval_items is not None and args.eval_items < 0:
        raise UserError("--eval-items must be at least 0 (0: the whole validation split)")
    if min((args.eval_batch_sizes or [1]) + (args.train_batch_sizes or [1])) < 1 or (args.min_run_time or 1) <= 0:
        raise UserError("batch sizes and --min-run-time must be positive")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    return args


def settings_for(args, device):
    """The flags with what was not given filled in for this device: --quick's, a GPU's or the CPU's defaults."""
    defaults = QUICK if args.quick else FULL_CUDA if torch.device(device).type == "cuda" else FULL
    return argparse.Namespace(**{k: defaults[k] if v is None and k in defaults else v for k, v in vars(args).items()})


@exit_on_user_error
def main(argv=None):
    args = parse_args(argv)
    if not args.default_allocator:
        keep_freed_memory()
    devices = available_devices(args.device)
    words = read_words(args.input_file)
    vocab = Vocab.from_words(words)
    all_rows, environments, peaks, ratios, losses, settings = [], {}, {}, {}, {}, {}
    for device in devices:
        env, peak, rows, profile_text, device_losses, settings[device] = run_device(device, words, vocab, args)
        best = best_rows(rows)
        environments[device], peaks[device], losses[device] = env, peak, device_losses
        block_sizes = sorted({r["block_size"] for r in rows})
        ratios[device] = {"by_block_size": {str(b): ratios_of(best, device, b) for b in block_sizes}}
        ratios[device].update(ratios[device]["by_block_size"][str(8 if 8 in block_sizes else block_sizes[0])])
        all_rows += rows
        report = markdown_report(best, env, peak, ratios[device], profile_text, rows)
        print(report)
        if args.out_dir:
            write_text(report, os.path.join(args.out_dir, f"compare_{device}.md"))
            plot(best, device, os.path.join(args.out_dir, f"compare_{device}.png"))
    if not args.json:
        return
    write_json({
        "device": "+".join(devices), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "environments": environments, "peak": peaks, "results": all_rows, "ratios": ratios,
        "val_loss": losses, "quick": args.quick, "settings": settings,
        "model": {"n_embd": args.n_embd, "n_hidden": args.n_hidden, "vocab_size": len(vocab)},
        "ratio_forms": "X_conv_over_Y: ConvWaveNet (form 'conv', length-bucketed batches); X_best_conv_over_Y: the "
                       "fastest of conv and conv_folded (named in X_best_conv_form); each form at its "
                       "fastest batch size (batch_size, in predictions per batch or step)",
    }, args.json, echo=False)


if __name__ == "__main__":
    main()
