"""Seconds from a training command's start to a validation loss: the default recipe to the lecture's 1.9937.

    python benchmarks/time_to_loss.py                                      # 3 runs of the default command
    python benchmarks/time_to_loss.py --runs 2 --variant= --variant="--precision bf16" --variant=--compile
    python benchmarks/time_to_loss.py --runs 5 --variant= --variant=@7a84608  # this checkout against a commit

Each run is the whole command, `python -m wavenet_conv.train --target-loss 1.9937 <variant>`, in a fresh
process, so start-up (importing torch, reading the data) counts as a user waits for it. A variant that starts
with `@REV` runs the command of that git revision instead (from a temporary worktree of it), with the flags
after it. The variants run in turn, A B C A B C ..., so that a machine whose speed drifts slows each alike.
Per variant: the median, fastest and slowest seconds to the target (the trainer's own clock, from the process's
start), each run's in turn, the median over rounds of its time over the first variant's in the same round, the
steps, when the first step was done, the validation loss at the target, and how many runs reached it.
"""
import argparse
import contextlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout

from benchmarks.common import (REPO, command_line, environment, markdown_table, report_header,  # noqa: E402
                               write_json, write_text)

LECTURE_LOSS = 1.9937  # makemore part 5's validation loss


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each variant (default: 3)")
    parser.add_argument("--variant", action="append", default=None,
                        help="extra `python -m wavenet_conv.train` flags of one variant, as one string after '=' "
                             "(--variant=\"--precision bf16\"), led by @REV to run a git revision's command "
                             "(--variant=\"@7a84608 --threads 1\"); repeat for more (default: one variant, the "
                             "default command)")
    parser.add_argument("--target-loss", type=float, default=LECTURE_LOSS,
                        help=f"validation loss to reach (default: {LECTURE_LOSS}, the lecture's)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="where every run trains (default: cpu)")
    parser.add_argument("--json", default=None, help="write the results here (and a .md beside it)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    args.variant = args.variant or [""]
    return args


def revision_and_flags(variant):
    """'@REV flags' -> (REV, flags); 'flags' -> (None, flags): this checkout."""
    words = shlex.split(variant)
    if words and words[0].startswith("@"):
        return words[0][1:], words[1:]
    return None, words


@contextlib.contextmanager
def checkouts(revisions, directory):
    """{revision: a detached git worktree of it under directory}, removed afterwards; None: this checkout."""
    made = {None: REPO}
    try:
        for revision in revisions:
            if revision not in made:
                path = os.path.join(directory, f"at-{len(made)}")
                done = subprocess.run(["git", "worktree", "add", "--detach", path, revision], cwd=REPO,
                                      capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"cannot check out {revision!r} of {REPO}: {done.stderr.strip()}")
                made[revision] = path
        yield made
    finally:
        for revision, path in made.items():
            if revision is not None:
                subprocess.run(["git", "worktree", "remove", "--force", path], cwd=REPO, capture_output=True)


def train_command(flags, target_loss, device, work_dir):
    return [sys.executable, "-m", "wavenet_conv.train", "--target-loss", str(target_loss), "--device", device,
            "-o", work_dir, "--overwrite", "--num-samples", "0", *flags]


def one_run(variant, flags, checkout, target_loss, device, work_dir):
    """The run's figures from its summary.json and metrics.jsonl; flags: the variant's train flags, checkout: the
    code it runs (its directory)."""
    command = train_command(flags, target_loss, device, work_dir)
    done = subprocess.run(command, cwd=checkout, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the run {variant or '(default)'!r} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    with open(os.path.join(work_dir, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(work_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    first_step = next(r["elapsed"] for r in records if r["split"] == "train")
    reached = [r for r in records if r["split"] == "val" and r["loss"] <= target_loss]
    return {
        "seconds_to_target": summary["seconds_to_target"],
        "steps_to_target": reached[0]["step"] if reached else None,
        "val_at_target": reached[0]["loss"] if reached else None,
        "first_step_done_s": first_step,
        "final_val": summary["val_loss"],
        "hardware": summary["hardware"],  # the trainer's device: a CPU with its threads, or the GPU
    }


def summarize(variant, runs, first_runs):
    """A variant's row; first_runs: the first variant's runs, round by round, for the paired ratio."""
    seconds = [r["seconds_to_target"] for r in runs if r["seconds_to_target"] is not None]
    steps = [r["steps_to_target"] for r in runs if r["steps_to_target"] is not None]
    ratios = [r["seconds_to_target"] / f["seconds_to_target"] for r, f in zip(runs, first_runs)
              if r["seconds_to_target"] is not None and f["seconds_to_target"] is not None]
    return {
        "variant": variant or "(default)",
        "reached": f"{len(seconds)} of {len(runs)}",
        "median_s": statistics.median(seconds) if seconds else None,
        "vs_first": statistics.median(ratios) if ratios else None,
        "min_s": min(seconds) if seconds else None,
        "max_s": max(seconds) if seconds else None,
        # in the order they ran: "twice in a row" is read here
        "each_s": ", ".join("-" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}" for r in runs),
        "steps": statistics.median(steps) if steps else None,
        "first_step_s": statistics.median(r["first_step_done_s"] for r in runs),
        "val_at_target": statistics.median(r["val_at_target"] for r in runs if r["val_at_target"] is not None)
        if steps else None,
        "hardware": runs[0]["hardware"],
        "runs": runs,
    }


COLUMNS = [("variant", "flags", "`{}`"), ("reached", "reached", "{}"), ("median_s", "median s", "{:.1f}"),
           ("min_s", "fastest s", "{:.1f}"), ("max_s", "slowest s", "{:.1f}"), ("each_s", "each run, s", "{}"),
           ("vs_first", "× the first row", "{:.2f}"), ("steps", "steps", "{:.0f}"),
           ("first_step_s", "first step done, s", "{:.2f}"), ("val_at_target", "val at target", "{:.4f}"),
           ("hardware", "trainer's device", "{}")]


def main(argv=None):
    args = parse_args(argv)
    runs = {variant: [] for variant in args.variant}
    parsed = [revision_and_flags(variant) for variant in args.variant]  # (revision, flags) of each
    with tempfile.TemporaryDirectory(prefix="time_to_loss-") as tmp, \
            checkouts([revision for revision, _ in parsed], tmp) as checkout:
        for round_ in range(args.runs):
            for k, (variant, (revision, flags)) in enumerate(zip(args.variant, parsed)):
                result = one_run(variant, flags, checkout[revision], args.target_loss, args.device,
                                 os.path.join(tmp, f"v{k}"))
                runs[variant].append(result)
                print(f"round {round_ + 1}/{args.runs} {variant or '(default)'}: "
                      f"{result['seconds_to_target'] or float('nan'):.1f} s to {args.target_loss}, "
                      f"step {result['steps_to_target']}", flush=True)
    rows = [summarize(variant, runs[variant], runs[args.variant[0]]) for variant in args.variant]
    env = environment(args.device, command_line(__file__, argv))
    env["note"] = "each run is its own process, with the trainer's own choice of threads (its row says which)"
    result = {"environment": env, "target_loss": args.target_loss, "results": rows}
    if args.json:
        write_json(result, args.json, echo=False)
        write_text(report_header(f"Seconds to validation loss {args.target_loss}", env) + "\n\n"
                   + markdown_table(rows, COLUMNS) + f"\n\n{env['note']}; the machine line gives this script's.\n",
                   os.path.splitext(args.json)[0] + ".md")
    print(markdown_table(rows, COLUMNS))


if __name__ == "__main__":
    main()
