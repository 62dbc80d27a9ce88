"""One conv level's arithmetic three ways, side by side: how fast the convolution kernel itself is on this machine.

    python benchmarks/conv_kernel.py [--device cpu] [--positions 4096] [--rounds 7]

A kernel-2 dilated level of the lecture's width (128 -> 128 channels) over a packed row of n positions:
- the `nn.Conv1d` module on (1, c, d + n), what ConvWaveNet runs;
- the same Conv1d on a batch of short rows (b, c, L): names of one length, no padding, no item-start waste;
- the same multiply-adds as one matmul: both taps stacked, h (k c) @ (k c) n, which is what the tree's Linear
  layers run.
Each is timed over interleaved rounds; the rate is the fastest run (other tenants only slow a run), the
median beside it. The JSON's last line also holds GFLOP/s and the measured matmul rate for comparison.
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import torch  # noqa: E402
from einops import rearrange  # noqa: E402

from benchmarks.common import environment, keep_freed_memory, markdown_table, measure, write_json  # noqa: E402


def cases(positions, channels, dilation, item_length, device):
    """name -> (callable, outputs it computes); every input is built before timing."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv1d(channels, channels, 2, dilation=dilation).to(device).requires_grad_(False)
    row = torch.randn(1, channels, dilation + positions, generator=g).to(device)  # left-padded, as causal_conv
    items = positions // item_length
    batch = torch.randn(items, channels, item_length, generator=g).to(device)  # b c t: no padding, no crossing
    taps = rearrange(conv.weight, "h c k -> h (k c)")  # h (k c): the tree's Linear weight, transposed
    stacked = torch.randn(2 * channels, positions, generator=g).to(device)  # (k c) n
    return {
        "Conv1d over the row (1, c, d + n)": (lambda: conv(row), positions),
        f"Conv1d over a batch of rows ({items}, c, {item_length})": (lambda: conv(batch), items * (item_length - dilation)),
        "matmul of the stacked taps, h (k c) @ (k c) n": (lambda: torch.addmm(conv.bias[:, None], taps, stacked), positions),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description="A conv level as Conv1d over a row, over a batch, and as a matmul.")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--positions", type=int, default=4096, help="positions of the packed row")
    parser.add_argument("--channels", type=int, default=128, help="channels in and out (the lecture's 128)")
    parser.add_argument("--dilation", type=int, default=4, help="the level's dilation (block 8's top level: 4)")
    parser.add_argument("--item-length", type=int, default=7, help="positions of each row of the batch case")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved measurements of each case")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the JSON object here")
    args = parser.parse_args(argv)
    keep_freed_memory()  # timings independent of the allocator's history
    if min(args.positions, args.channels, args.dilation, args.rounds, args.threads) < 1 or \
            args.item_length <= args.dilation:
        raise SystemExit("error: sizes must be positive and --item-length longer than --dilation")
    torch.set_num_threads(args.threads)
    flops_per_output = 2 * 2 * args.channels * args.channels
    timed = cases(args.positions, args.channels, args.dilation, args.item_length, args.device)
    runs = {name: [] for name in timed}
    with torch.no_grad():
        for _ in range(args.rounds):
            for name, (fn, _) in timed.items():
                runs[name].append(measure(fn, min_run_time=0.2))
    rows = []
    for name, (_, outputs) in timed.items():
        fastest = min(t["min_s"] for t in runs[name])
        median = statistics.median(t["median_s"] for t in runs[name])
        rows.append({"case": name, "outputs": outputs, "ms": 1e3 * fastest, "median_ms": 1e3 * median,
                     "us_per_output": 1e6 * fastest / outputs, "gflops": flops_per_output * outputs / fastest / 1e9})
    env = environment(args.device)
    print(f"# one conv level on {env['device_name']}, torch {env['torch']}, {env['threads']} threads\n")
    print(markdown_table(rows, [("case", "case", "{}"), ("outputs", "outputs", "{:,}"), ("ms", "ms (fastest)", "{:.2f}"),
                                ("median_ms", "median ms", "{:.2f}"), ("us_per_output", "µs/output", "{:.3f}"),
                                ("gflops", "GFLOP/s", "{:.1f}")]))
    write_json({"environment": env, "settings": vars(args), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
