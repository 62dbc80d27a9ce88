"""Where a training step of a recipe spends its time: torch.profiler over the real trainer's steps.

    python benchmarks/profile_step.py                            # the default recipe on the CPU
    python benchmarks/profile_step.py --device cuda --json benchmarks/results/profile_step_cuda.json

It builds the recipe's Trainer (the batches, the model, AdamW) and times `Trainer.train_step` (making the batch,
forward, loss, backward, optimizer step) after warm-up steps, first plainly (the wall time of a step), then
under the profiler: the operations by their own time and, on a GPU, the share of the step the GPU spends in
kernels, and the host's waits for it (synchronize calls and copies to the host).
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from benchmarks.common import (REPO, command_line, environment, markdown_table, report_header, write_json,  # noqa: E402
                               write_text)

# host calls that wait for the GPU: explicit synchronization, and copies whose result the host reads
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy ", "cudaMemcpy2D")


def parse_args(argv=None):
    from wavenet_conv.training.recipes import DEFAULT_RECIPE, RECIPES

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", default=DEFAULT_RECIPE, choices=tuple(RECIPES), help="the recipe whose step runs")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where it runs (default: cpu)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    parser.add_argument("--warmup", type=int, default=30, help="steps before any timing (default: 30)")
    parser.add_argument("--steps", type=int, default=50, help="steps timed, then as many profiled (default: 50)")
    parser.add_argument("--rows", type=int, default=25, help="operations listed (default: 25)")
    parser.add_argument("--json", default=None, help="write the results here (and a .md beside it)")
    args = parser.parse_args(argv)
    if min(args.warmup, args.steps, args.rows) < 1:
        parser.error("--warmup, --steps and --rows must be at least 1")
    return args


def make_trainer(recipe_name, device, work_dir):
    from wavenet_conv.data.words import DEFAULT_INPUT
    from wavenet_conv.training.plan import RunData
    from wavenet_conv.training.recipes import get_recipe
    from wavenet_conv.training.trainer import Trainer

    data = RunData.read(os.path.join(REPO, DEFAULT_INPUT))
    return Trainer(get_recipe(recipe_name), data.vocab, data.splits, device, 42, work_dir, time.monotonic())


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(trainer, steps):
    """Wall milliseconds of each of `steps` steps, the device waited for after each."""
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        trainer.train_step()
        synchronize(trainer.device)
        times.append(1000 * (time.perf_counter() - start))
    trainer.read_losses()
    return times


def profiled_steps(trainer, steps, rows):
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    synchronize(trainer.device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            trainer.train_step()
        synchronize(trainer.device)
    wall_ms = 1000 * (time.perf_counter() - start) / steps
    trainer.read_losses()
    events = prof.key_averages()
    on_gpu = trainer.device.type == "cuda"
    device_us = lambda e: getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))  # noqa: E731
    table = sorted(events, key=lambda e: device_us(e) if on_gpu else e.self_cpu_time_total, reverse=True)
    operations = [{"operation": e.key, "calls_per_step": e.count / steps,
                   "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / steps,
                   "self_gpu_ms_per_step": device_us(e) / 1000 / steps if on_gpu else None}
                  for e in table[:rows]]
    result = {"profiled_wall_ms_per_step": wall_ms, "operations": operations}
    if on_gpu:
        kernels_ms = sum(device_us(e) for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / 1000
        result["gpu_busy_share"] = kernels_ms / steps / wall_ms
        result["host_waits_per_step"] = {e.key: e.count / steps for e in events
                                         if any(e.key.startswith(w.strip()) for w in WAITS) and e.count}
    return result


COLUMNS = [("operation", "operation", "`{}`"), ("calls_per_step", "calls a step", "{:.1f}"),
           ("self_cpu_ms_per_step", "own CPU ms a step", "{:.3f}"), ("self_gpu_ms_per_step", "own GPU ms a step",
                                                                     "{:.3f}")]


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory(prefix="profile_step-") as work_dir:
        trainer = make_trainer(args.recipe, device, work_dir)
        timed_steps(trainer, args.warmup)
        times = timed_steps(trainer, args.steps)
        profiled = profiled_steps(trainer, args.steps, args.rows)
    summary = {"recipe": args.recipe, "batch_size": trainer.recipe.batch_size, "steps": args.steps,
               "median_ms_per_step": statistics.median(times), "min_ms_per_step": min(times),
               "max_ms_per_step": max(times), **profiled}
    env = environment(device, command_line(__file__, argv))
    lines = [f"recipe {args.recipe}, {summary['batch_size']} names a step: median {summary['median_ms_per_step']:.2f} "
             f"ms a step ({summary['min_ms_per_step']:.2f}-{summary['max_ms_per_step']:.2f}) over {args.steps} steps "
             f"after {args.warmup}; under the profiler {summary['profiled_wall_ms_per_step']:.2f} ms"]
    if "gpu_busy_share" in summary:
        lines.append(f"GPU busy {100 * summary['gpu_busy_share']:.0f}% of a step; host waits a step: "
                     + (", ".join(f"{k} {v:g}" for k, v in summary["host_waits_per_step"].items()) or "none"))
    text = "\n".join(lines) + "\n\n" + markdown_table(summary["operations"], COLUMNS) + "\n"
    if args.json:
        write_json({"environment": env, **summary}, args.json, echo=False)
        write_text(report_header("A training step, profiled", env) + "\n\n" + text,
                   os.path.splitext(args.json)[0] + ".md")
    print(text)


if __name__ == "__main__":
    main()
