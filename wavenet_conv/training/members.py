"""Training an ensemble (ensemble.py) from the train command: its members are ordinary runs of that command.

    python -m wavenet_conv.train --recipe quality --members 4 -o runs/ensemble

Member k trains in WORK_DIR/member-k with seed seed + k, its output in its own train.log, its own model.pt,
last.pt, summary.json, samples.txt. The members run in worker processes (a ProcessPoolExecutor of spawned
processes), several at once: by default one per core that no other process is using, at most one per member,
each with those cores shared among the workers (1 thread each when the members outnumber the free cores);
small models train faster as several one-thread processes than as one process of several threads. Then the
work dir gets model.pt (the ensemble: the mixture of the members' kept models), summary.json (the mixture's
losses, and each member's) and samples.txt, as a single run writes them.

ensemble.json (written by train.write_plan before any member starts) holds the recipe and the seed: --resume
reads it, resumes each member that has a last.pt, starts the others from the plan, and does not run again a
member whose run is complete. Ctrl-C or SIGTERM stops every running member at a step boundary (each saves its
last.pt) and starts no other.
"""
import contextlib
import json
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from wavenet_conv.inference.evaluation import SPLIT_NAMES
from wavenet_conv.models.checkpoint import CHECKPOINT_NAME, load, load_checkpoint, save_checkpoint
from wavenet_conv.models.ensemble import EnsembleWaveNet
from wavenet_conv.train import (ENSEMBLE_PLAN, choose_threads, final_losses, hardware_name, losses_line, main,
                                recipe_overrides, run_facts, write_plan, write_samples)
from wavenet_conv.training.trainer import RESUME_NAME, StopRequests, count_parameters
from wavenet_conv.utils.errors import UserError

MEMBERS_STOPPED = None  # in a worker process: the event the command sets when it is asked to stop


def train_ensemble(args, argv, started, device, recipe, seed, vocab, splits, on_validation=None):
    """Train recipe.members runs of this command, member k in WORK_DIR/member-k with seed seed + k, in worker
    processes; then report, save and sample their mixture as a single run reports, saves and samples its model."""
    if on_validation is not None:
        raise UserError("--members trains each member in a worker process, which cannot report its validations here")
    if args.target_loss is not None:
        raise UserError("--target-loss stops one run at a validation loss; with --members each member would stop "
                        "there, not their mixture: train the members to a length instead")
    work_dir = Path(args.work_dir)
    write_plan(work_dir / ENSEMBLE_PLAN, recipe, seed, vocab)
    workers, threads = plan_workers(args, recipe.members)
    member_dirs = [work_dir / f"member-{k}" for k in range(recipe.members)]
    print(f"recipe {recipe.name}: an ensemble of {recipe.members} {recipe.model} models, {recipe.arch} arch, "
          f"{workers} training at once in processes of {threads} threads, on {hardware_name(device, threads=False)}")
    summaries = {k: summary for k, member_dir in enumerate(member_dirs)
                 if (summary := finished_member(member_dir, args)) is not None}
    for k, summary in summaries.items():
        print(member_line(k, summary, "trained before"))
    jobs = {k: (member_argv(args, recipe, seed + k, threads, member_dir), member_dir / "train.log")
            for k, member_dir in enumerate(member_dirs) if k not in summaries}
    failed, stopped_by = {}, None
    for k, code, summary in train_members(jobs, workers):
        if code == 0:
            summaries[k] = summary
            print(member_line(k, summary))
        elif code > 128:
            stopped_by = code - 128
        else:
            failed[k] = code
    if stopped_by is not None:
        print(f"{signal.Signals(stopped_by).name}: stopped the members, each saved in its "
              f"{str(work_dir / 'member-k' / RESUME_NAME)!r}; continue with --resume")
        raise SystemExit(128 + stopped_by)
    if failed:
        k = min(failed)
        raise UserError(f"member {k} failed (exit status {failed[k]}): {last_line(member_dirs[k] / 'train.log')} "
                        f"(its log: {str(member_dirs[k] / 'train.log')!r})")
    seconds = time.monotonic() - started

    members = [load(member_dir / CHECKPOINT_NAME, device)[0] for member_dir in member_dirs]
    model = EnsembleWaveNet(members).eval()
    losses = final_losses(model, splits, vocab)
    steps = sum(summaries[k]["steps"] for k in range(recipe.members))
    print(losses_line(losses, f"mixture of {recipe.members} members") + f"; {steps} steps in {seconds:.1f} s")
    save_checkpoint(work_dir / CHECKPOINT_NAME, model, vocab, recipe=recipe.to_dict(), seed=seed)
    for line in write_samples(model, vocab, splits["train"], work_dir / "samples.txt", args.num_samples, seed):
        print(line)
    summary = {
        "train_loss": losses["train"], "val_loss": losses["val"], "test_loss": losses["test"],
        "params": count_parameters(model), "steps": steps,  # over all members
        "seconds": seconds,  # from this command's start until every member was trained
        "seconds_to_target": None, "target_loss": None,
        "seconds_total": time.monotonic() - started,  # also the ensemble's evaluation and samples
        **run_facts(args, argv, device, recipe, members[0].config, seed),
        "workers": workers, "threads": threads,
        "members": [{"work_dir": member_dirs[k].name, "seed": summaries[k]["seed"],
                     **{key: summaries[k][key] for key in ("train_loss", "val_loss", "test_loss", "steps")},
                     "seconds": summaries[k]["seconds_total"]} for k in range(recipe.members)],
    }
    (work_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def plan_workers(args, members):
    """(worker processes, threads of each). auto workers: one per core that no other process is using (as auto
    --threads counts them), at most one per member; auto threads share those cores among the workers. Small
    models train faster as several one-thread processes than as one process of several threads."""
    free_cores = choose_threads("auto")
    workers = min(members, free_cores if args.workers == "auto" else int(args.workers))
    threads = max(1, free_cores // workers) if args.threads == "auto" else int(args.threads)
    return workers, threads


def member_argv(args, recipe, seed, threads, member_dir):
    """The command line of one member: the ensemble's recipe, every field that has a flag spelled out (a member
    that never started on a --resume has only the plan to go by), and --resume once it has a checkpoint."""
    argv = ["--input-file", args.input_file, "--work-dir", member_dir, "--recipe", recipe.name, "--seed", seed,
            "--device", args.device, "--threads", threads, "--num-samples", args.num_samples]
    for name in recipe_overrides(args):
        value = 1 if name == "members" else getattr(recipe, name)
        if value is not None:
            argv += [f"--{name.replace('_', '-')}", value]
    if (member_dir / RESUME_NAME).is_file() and args.resume:
        argv.append("--resume")
    return [str(a) for a in argv]


def finished_member(member_dir, args):
    """On a --resume that changes no run length, the summary of a member whose run is complete (it is not run
    again); None for a member to train or resume."""
    path, last = member_dir / "summary.json", member_dir / RESUME_NAME
    if not args.resume or args.max_steps is not None or args.epochs is not None or not path.is_file() \
            or not last.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):  # torn by a kill while it was written: the resumed run writes it again
        return None
    if load_checkpoint(last)["step"] != summary.get("steps"):
        return None  # its last.pt went on after this summary (a longer --resume, interrupted)
    return summary


def member_line(k, summary, note=None):
    losses = {name: summary[f"{name}_loss"] for name in SPLIT_NAMES}
    return (f"member {k} (seed {summary['seed']}): " + losses_line(losses, f"model of step {summary['kept_step']}")
            + f"; {summary['steps']} steps in {summary['seconds']:.1f} s" + (f" ({note})" if note else ""))


def last_line(path):
    lines = path.read_text().strip().splitlines() if path.is_file() else []
    return lines[-1].removeprefix("error: ") if lines else "no output"


def train_members(jobs, workers):
    """Run the member jobs {k: (argv, log)} in `workers` spawned processes (fresh interpreters: no forked threads
    or locks); yields (k, exit status, summary) as each ends. On Ctrl-C or SIGTERM no member starts any more and
    the running ones are asked to stop: each saves its last.pt, and its status is 128 + the signal's number."""
    context = multiprocessing.get_context("spawn")
    stop_event = context.Event()
    with StopMembers(stop_event) as stop, ProcessPoolExecutor(
            workers, mp_context=context, initializer=start_worker, initargs=(stop_event,)) as pool:
        futures = {pool.submit(train_member, argv, log): k for k, (argv, log) in jobs.items()}
        for future in as_completed(futures):
            try:
                code, summary = future.result()
            except BaseException as e:  # a worker killed, or stopped before its run could handle the signal
                if stop.signal is None:
                    raise UserError(f"the worker process of member {futures[future]} died ({type(e).__name__}); "
                                    f"continue with --resume") from None
                code, summary = None, None
            if stop.signal is not None and code != 0:
                code = 128 + stop.signal
            yield futures[future], code, summary


class StopMembers(StopRequests):
    """Ctrl-C or SIGTERM while the members train: no member starts any more, and each running one gets SIGTERM,
    which a run takes as it takes Ctrl-C: it saves last.pt and stops. (Ctrl-C in a terminal reaches it too.)"""

    def __init__(self, stop_event):
        super().__init__()
        self.stop_event = stop_event

    def handle(self, signum, frame):
        super().handle(signum, frame)
        self.stop_event.set()
        for worker in multiprocessing.active_children():
            os.kill(worker.pid, signal.SIGTERM)


def start_worker(stop_event):
    """A worker process ignores Ctrl-C but while a member trains (its run then stops at a step, saving last.pt)."""
    global MEMBERS_STOPPED
    MEMBERS_STOPPED = stop_event
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_member(argv, log):
    """One member's run, in a worker process: this command, its output appended to the member's train.log.
    (exit status, summary); (None, None) when the command was asked to stop before the member started."""
    if MEMBERS_STOPPED is not None and MEMBERS_STOPPED.is_set():
        return None, None
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            return 0, main(argv)
        except SystemExit as e:
            return (e.code if isinstance(e.code, int) else 1), None
