"""One conv level's arithmetic several ways, side by side: how fast the convolution kernel itself is here.

    python benchmarks/conv_kernel.py [--device cpu] [--positions 4096] [--rounds 7]
    python benchmarks/conv_kernel.py --json benchmarks/results/conv_kernel_cpu.json --out-dir benchmarks/results

A kernel-2 dilated level of the lecture's width (128 -> 128 channels) over a packed row of n positions, and
over a batch of b rows of L positions (names of one length: no padding, no item-start waste), in the two
layouts of the activations:
- rows, (n, c) channels last, what ConvWaveNet holds: `ChannelsLastConv1d` on their (1, c, d + n) view, and on
  the (b, c, L) view of a run of b equally long items, both convolved as they lie (NHWC);
- (1, c, n), the layout the conv used before rows: the plain `nn.Conv1d` on the row, and on the strided
  (b, c, L) view of a run taken from it (which Conv1d first copies to contiguous memory);
- a contiguous (b, c, L) batch (the textbook layout; no copy);
- the same multiply-adds as one matmul: both taps stacked, h (k c) @ (k c) n, which is what the tree's Linear
  layers run.
Each is timed over interleaved rounds; the rate is the fastest run (other tenants only slow a run), the
median beside it. Output: a markdown table on stdout (also conv_kernel_<device>.md with --out-dir, headed by
date, commit, machine, torch version and command) and, as the last line of stdout, one JSON object (also
written to --json).
"""
import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import torch  # noqa: E402
from einops import rearrange  # noqa: E402

from benchmarks.common import (command_line, environment, keep_freed_memory, markdown_table, measure,  # noqa: E402
                               report_header, write_json, write_text)
from wavenet_conv.models.channels_last import ChannelsLastConv1d, as_time  # noqa: E402


def cases(positions, channels, dilation, item_length, device):
    """name -> (callable, outputs it computes); every input is built before timing."""
    g = torch.Generator().manual_seed(0)
    conv = ChannelsLastConv1d(channels, channels, 2, dilation=dilation).to(device).requires_grad_(False)
    items = positions // item_length
    rows = torch.randn(dilation + positions, channels, generator=g).to(device)  # (d + n) c, left-padded
    run_rows = rearrange(rows[: items * item_length], "(b t) c -> b c t", t=item_length)  # a channels-last view
    row = torch.randn(1, channels, dilation + positions, generator=g).to(device)  # (1, c, n), left-padded
    run_of_row = rearrange(row[0, :, : items * item_length], "c (b t) -> b c t", t=item_length)  # strided view
    batch = torch.randn(items, channels, item_length, generator=g).to(device)  # b c t, contiguous
    taps = rearrange(conv.weight, "h c k -> h (k c)")  # h (k c): the tree's Linear weight, transposed
    stacked = torch.randn(2 * channels, positions, generator=g).to(device)  # (k c) n
    run_outputs = items * (item_length - dilation)
    return {
        "rows: ChannelsLastConv1d over the row's (1, c, d + n) view": (lambda: conv(as_time(rows)), positions),
        f"rows: ChannelsLastConv1d over a run's ({items}, c, {item_length}) view": (lambda: conv(run_rows), run_outputs),
        "(1, c, n): Conv1d over the row": (lambda: conv(row), positions),
        f"(1, c, n): Conv1d over a run's ({items}, c, {item_length}) view, copied first": (lambda: conv(run_of_row),
                                                                                            run_outputs),
        f"Conv1d over a contiguous batch ({items}, c, {item_length})": (lambda: conv(batch), run_outputs),
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
    parser.add_argument("--out-dir", default=None, help="write conv_kernel_<device>.md here")
    args = parser.parse_args(argv)
    command = command_line(__file__, sys.argv[1:] if argv is None else argv)
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
    env = environment(args.device, command)
    title = (f"One conv level: {args.channels} -> {args.channels} channels, dilation {args.dilation}, "
             f"{args.positions:,} positions")
    report = "\n".join([
        report_header(title, env), "",
        markdown_table(rows, [("case", "case", "{}"), ("outputs", "outputs", "{:,}"), ("ms", "ms (fastest)", "{:.2f}"),
                              ("median_ms", "median ms", "{:.2f}"), ("us_per_output", "µs/output", "{:.3f}"),
                              ("gflops", "GFLOP/s", "{:.1f}")]), "",
        f"ms: the fastest of {args.rounds} interleaved rounds; GFLOP/s = 2 x multiply-adds / that time.", ""])
    print(report)
    if args.out_dir:
        write_text(report, os.path.join(args.out_dir, f"conv_kernel_{torch.device(args.device).type}.md"))
    write_json({"environment": env, "settings": vars(args), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
