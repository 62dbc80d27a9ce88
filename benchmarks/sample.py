"""Names per second of the three samplers (naive, full, cached) over batch sizes and block sizes.

    python benchmarks/sample.py                          # CPU (and CUDA when present: --device all)
    python benchmarks/sample.py --checkpoint out/run     # a trained model: its block size only
    python benchmarks/sample.py --quick                  # a smoke run of a few seconds

Names end where the model says, so names per second depends on the weights. Without --checkpoint the
model is a seeded random one whose '.' bias is set so that names average about as many characters as
names.txt's (6.1); characters per second (each name's characters plus its end) are reported beside it.
`naive` samples one name at a time, so it has no batch size: its row is at batch size 1.

Output: a markdown table (stdout and sample_<device>.md, headed by date, commit, machine, torch version and
command), a plot (sample_<device>.png), and as the last line of stdout one JSON object (also written to --json).
"""
import argparse
import math
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import torch  # noqa: E402

from benchmarks.common import (available_devices, command_line, environment, keep_freed_memory,  # noqa: E402
                               markdown_table, measure, report_header, write_json, write_text)
from wavenet_conv.data.words import Vocab  # noqa: E402
from wavenet_conv.inference.sampling import METHODS, sample  # noqa: E402
from wavenet_conv.models.checkpoint import load  # noqa: E402
from wavenet_conv.models.config import ModelConfig  # noqa: E402
from wavenet_conv.models.conv import ConvWaveNet  # noqa: E402
from wavenet_conv.training.plot import pyplot  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
NAMES_MEAN_LENGTH = 6.1  # names.txt: 32033 names, 196113 characters
LETTERS = "abcdefghijklmnopqrstuvwxyz"


def random_model(block_size, seed=0):
    """A seeded random ConvWaveNet (names.txt's vocabulary) whose names average about 6 characters.

    With the other logits near 0, p('.') = e^b / (e^b + 26) ends a name after 1 / p steps on average.
    """
    vocab = Vocab.from_words([LETTERS])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ConvWaveNet(ModelConfig(vocab_size=len(vocab), block_size=block_size))
    with torch.no_grad():
        model.head.bias[0] = math.log((len(vocab) - 1) / NAMES_MEAN_LENGTH)
    return model.eval(), vocab


def run(model, vocab, method, batch_size, min_run_time):
    """Time sample() on one batch: median and spread, names and characters per second."""
    device = next(model.parameters()).device

    def draw():  # uniforms drawn where the model is: on a GPU, drawing them on the CPU would dominate
        return sample(model, vocab, batch_size, method=method, generator=torch.Generator(device).manual_seed(0))

    started = time.perf_counter()
    names = draw()
    first_call_s = time.perf_counter() - started
    timing = measure(draw, min_run_time=min_run_time)
    chars = sum(len(name) + 1 for name in names)  # the end marker is a sampled character too
    return {
        **timing, "first_call_s": first_call_s, "names": batch_size, "chars": chars,
        "names_per_s": batch_size / timing["median_s"], "chars_per_s": chars / timing["median_s"],
        "us_per_char": 1e6 * timing["median_s"] / chars,
    }


def bench_device(device, args):
    rows = []
    threads = torch.get_num_threads()
    block_sizes = args.block_sizes
    trained = None
    if args.checkpoint:
        trained = load(args.checkpoint, device)
        block_sizes = [trained[0].config.block_size]
    for block_size in block_sizes:
        model, vocab = trained if trained else random_model(block_size)
        model = model.to(device)
        for method in args.methods:
            # naive samples one name at a time: batching does not apply, its batch is the name count timed.
            # Its ops are tiny, so extra threads can only slow it down: it runs on 1 thread too and keeps the faster.
            batch_sizes = args.batch_sizes + (args.cuda_extra_batch_sizes if device == "cuda" else [])
            configs = ([(args.naive_names, n) for n in sorted({1, threads})] if method == "naive"
                       else [(b, threads) for b in batch_sizes])
            for batch_size, n_threads in configs:
                torch.set_num_threads(n_threads)
                try:
                    result = run(model, vocab, method, batch_size, args.min_run_time)
                except torch.cuda.OutOfMemoryError:
                    print(f"{device} block {block_size} {method} batch {batch_size}: out of memory", file=sys.stderr)
                    torch.cuda.empty_cache()
                    break
                finally:
                    torch.set_num_threads(threads)
                row = {"device": device, "block_size": block_size, "method": method,
                       "batch_size": 1 if method == "naive" else batch_size, "threads": n_threads, **result}
                rows.append(row)
                print(f"{device} block {block_size:3d} {method:6s} batch {row['batch_size']:5d} "
                      f"threads {n_threads}: {row['names_per_s']:12.1f} names/s {row['us_per_char']:9.2f} us/char",
                      file=sys.stderr)
                if method != "naive" and result["median_s"] > args.max_call_s:
                    break  # larger batches would only take longer per call
    return rows


def summarize(rows, reference_batch):
    """Per block size: each method's best batch size, cached against naive and full, and µs per character at one
    batch."""
    summary = []
    for block_size in sorted({r["block_size"] for r in rows}):
        here = [r for r in rows if r["block_size"] == block_size]
        best = {m: max((r for r in here if r["method"] == m), key=lambda r: r["names_per_s"], default=None)
                for m in METHODS}
        at = {}  # (method, batch size): the fastest row there (naive has one per thread count)
        for r in sorted(here, key=lambda r: r["names_per_s"]):
            at[(r["method"], r["batch_size"])] = r
        entry = {"block_size": block_size, "levels": int(math.log2(block_size))}  # cached: one node per level
        for m, r in best.items():
            if r:
                entry[f"{m}_best_names_per_s"] = r["names_per_s"]
                entry[f"{m}_best_batch_size"] = r["batch_size"]
        cached = best["cached"]
        if cached and best["naive"]:
            entry["cached_over_naive"] = cached["names_per_s"] / best["naive"]["names_per_s"]
            # the naive loop times fewer names, whose mean length differs a little: characters compare exactly
            entry["cached_over_naive_chars"] = cached["chars_per_s"] / best["naive"]["chars_per_s"]
        full_there = cached and at.get(("full", cached["batch_size"]))
        if full_there:
            entry["cached_over_full_same_batch"] = cached["names_per_s"] / full_there["names_per_s"]
        if cached and best["full"]:  # a lower bound of the same-batch ratio, there when full stopped short of it
            entry["cached_over_full_best"] = cached["names_per_s"] / best["full"]["names_per_s"]
        # the cost per character at one batch size, to see how each method grows with block_size
        for m, batch in (("naive", 1), ("full", reference_batch), ("cached", reference_batch)):
            if (m, batch) in at:
                entry[f"{m}_us_per_char_at_ref"] = at[(m, batch)]["us_per_char"]
        summary.append(entry)
    return summary


def plot(rows, summary, path):
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {"naive": "tab:gray", "full": "tab:orange", "cached": "tab:blue"}
    block_sizes = sorted({r["block_size"] for r in rows})
    markers = dict(zip(block_sizes, "osD^v<>"))
    for block_size in block_sizes:
        for method in METHODS:
            points = sorted((r["batch_size"], r["names_per_s"]) for r in rows
                            if r["block_size"] == block_size and r["method"] == method)
            if points:
                xs, ys = zip(*points)
                left.plot(xs, ys, color=colors[method], marker=markers[block_size],
                          alpha=1 - 0.5 * block_sizes.index(block_size) / len(block_sizes),
                          label=f"{method}, block {block_size}")
    left.set(xscale="log", yscale="log", xlabel="batch size (names sampled together)",
             ylabel="names per second (median)", title=f"Sampling throughput on {rows[0]['device']}")
    left.set_xscale("log", base=2)
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7, ncol=2)
    for method in METHODS:
        points = [(s["block_size"], s[f"{method}_us_per_char_at_ref"]) for s in summary
                  if f"{method}_us_per_char_at_ref" in s]
        if points:
            xs, ys = zip(*points)
            right.plot(xs, ys, color=colors[method], marker="o", label=method)
    right.set(xscale="log", yscale="log", xlabel="block size", ylabel="µs per character (median)",
              title="Cost per character as block_size grows")
    right.set_xscale("log", base=2)
    right.grid(True, which="both", alpha=0.3)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def int_list(text):
    return [int(x) for x in text.split(",")]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Benchmark the naive, full and cached samplers.")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "all"), help="where to run")
    parser.add_argument("--checkpoint", default=None, help="work dir or model.pt of a trained model (else random)")
    parser.add_argument("--batch-sizes", type=int_list, default=[1, 4, 16, 64, 256, 1024, 4096, 16384],
                        help="comma-separated batch sizes for full and cached")
    parser.add_argument("--cuda-extra-batch-sizes", type=int_list, default=[65536, 262144],
                        help="larger batches tried on a GPU only")
    parser.add_argument("--block-sizes", type=int_list, default=[8, 16, 32, 64],
                        help="comma-separated block sizes of the random models")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS), help="comma-separated")
    parser.add_argument("--reference-batch", type=int, default=1024,
                        help="batch size at which the cost per character is compared across block sizes")
    parser.add_argument("--naive-names", type=int, default=64, help="names the naive loop samples per timed call")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of timing per measurement")
    parser.add_argument("--max-call-s", type=float, default=3.0,
                        help="stop growing a method's batch size once one call takes longer than this")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="a few seconds: small sizes, short timings")
    parser.add_argument("--json", default=None, help="also write the JSON result here")
    parser.add_argument("--out-dir", default=None,
                        help=f"where sample_<device>.md and .png go (default {RESULTS_DIR}; none with --quick)")
    args = parser.parse_args(argv)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
    keep_freed_memory()  # timings independent of the allocator's history
    if args.quick:
        args.batch_sizes, args.block_sizes, args.naive_names = [1, 64], [8, 16], 4
        args.cuda_extra_batch_sizes, args.reference_batch = [4096], 64
        args.min_run_time, args.max_call_s = 0.02, 0.5
    if args.threads:
        torch.set_num_threads(args.threads)
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        parser.error(f"unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")

    columns = [("block_size", "block", "{}"), ("method", "method", "{}"), ("batch_size", "batch", "{}"),
               ("threads", "threads", "{}"), ("names_per_s", "names/s", "{:,.0f}"),
               ("chars_per_s", "chars/s", "{:,.0f}"),
               ("us_per_char", "µs/char", "{:.2f}"), ("iqr_s", "IQR s", "{:.2g}"), ("runs", "runs", "{}")]
    summary_columns = [("block_size", "block", "{}"), ("levels", "levels", "{}"),
                       ("naive_best_names_per_s", "naive names/s", "{:,.0f}"),
                       ("full_best_names_per_s", "full best names/s", "{:,.0f}"),
                       ("full_best_batch_size", "at batch", "{}"),
                       ("cached_best_names_per_s", "cached best names/s", "{:,.0f}"),
                       ("cached_best_batch_size", "at batch", "{}"),
                       ("cached_over_naive", "cached / naive", "{:,.0f}×"),
                       ("cached_over_naive_chars", "(in chars/s)", "{:,.0f}×"),
                       ("cached_over_full_same_batch", "cached / full (same batch)", "{:.1f}×"),
                       ("cached_over_full_best", "cached / full (each at its best)", "{:.1f}×"),
                       ("naive_us_per_char_at_ref", "naive µs/char", "{:.1f}"),
                       ("full_us_per_char_at_ref", f"full µs/char (batch {args.reference_batch})", "{:.2f}"),
                       ("cached_us_per_char_at_ref", f"cached µs/char (batch {args.reference_batch})", "{:.2f}")]
    result = {"benchmark": "sample", "model": args.checkpoint or "seeded random, mean name length ~6.1",
              "environment": {}, "results": [], "summary": []}
    for device in available_devices(args.device):
        env = environment(device, command)
        rows = bench_device(device, args)
        summary = summarize(rows, args.reference_batch)
        table = markdown_table(rows, columns)
        summary_table = markdown_table(summary, summary_columns)
        header = report_header("Sampling: names per second of the naive, full and cached samplers", env)
        text = (f"{header}\n\nModel: {result['model']}. Each method at its best batch size, then every "
                f"measurement (median of the timed calls).\n\n{summary_table}\n\n{table}\n")
        print(text)
        out_dir = args.out_dir or (None if args.quick else RESULTS_DIR)
        if out_dir:
            write_text(text, os.path.join(out_dir, f"sample_{device}.md"))
            plot(rows, summary, os.path.join(out_dir, f"sample_{device}.png"))
        result["environment"][device] = env
        result["results"] += rows
        result["summary"] += [{"device": device, **s} for s in summary]
    # top level for a quick look: the environment of the first device
    result.update(environment(available_devices(args.device)[0], command))
    write_json(result, args.json)


if __name__ == "__main__":
    main()
