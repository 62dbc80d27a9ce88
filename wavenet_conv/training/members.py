"""A mixture of models (models/ensemble.py) trained as members: each an ordinary single run of its own.

Member k trains in WORK_DIR/member-k with seed seed + k, its output in its own train.log, its own model.pt,
last.pt, summary.json, samples.txt. The members run in worker processes (a ProcessPoolExecutor of spawned
processes), several at once: by default one per core that no other process is using, at most one per member,
each with those cores shared among the workers (1 thread each when the members outnumber the free cores);
small models train faster as several one-thread processes than as one process of several threads. Then the
work dir gets model.pt (the mixture of the members' kept models), summary.json (the mixture's losses, and
each member's) and samples.txt, as a single run writes them.

--resume resumes each member that has a last.pt, starts the others, and does not run again a member whose
run is complete. Ctrl-C or SIGTERM stops every running member at a step boundary (each saves its last.pt)
and starts no other. A worker dies with the command that started it, however the command dies.
"""
import contextlib
import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import replace

import torch

from wavenet_conv.inference.evaluation import SPLIT_NAMES
from wavenet_conv.models.checkpoint import load, load_checkpoint, save_checkpoint
from wavenet_conv.models.ensemble import EnsembleWaveNet
from wavenet_conv.training.plan import RunData
from wavenet_conv.training.report import final_losses, losses_line, run_facts, sample_the_run, write_summary
from wavenet_conv.training.single import RunStopped, train_single
from wavenet_conv.training.trainer import StopRequests, count_parameters
from wavenet_conv.training.workdir import CHECKPOINT_NAME, RESUME_NAME, member_dir, read_summary
from wavenet_conv.utils.device import hardware_name, resolve_device
from wavenet_conv.utils.errors import UserError
from wavenet_conv.utils.processes import choose_threads, die_with_parent

MEMBERS_STOPPED = None  # in a worker process: the event the command sets when it is asked to stop


def train_mixture(plan, data, device, started):
    """Train plan.recipe.members single runs, member k in WORK_DIR/member-k with seed seed + k, in worker
    processes; then report, save and sample their mixture as a single run reports, saves and samples its model."""
    recipe, work_dir = plan.recipe, plan.work_dir
    workers, threads = plan_workers(plan, recipe.members)
    dirs = [member_dir(work_dir, k) for k in range(recipe.members)]
    print(f"recipe {recipe.name}: a mixture of {recipe.members} {recipe.model} models, {recipe.arch} arch, "
          f"{workers} training at once in processes of {threads} threads, on {hardware_name(device, threads=False)}")
    summaries, jobs = {}, {}
    for k, directory in enumerate(dirs):
        member_plan = replace(plan, recipe=replace(recipe, members=1), seed=plan.seed + k, work_dir=directory,
                              threads=str(threads), resume=plan.resume and (directory / RESUME_NAME).is_file())
        summary = finished_member(member_plan)
        if summary is not None:
            summaries[k] = summary
            print(member_line(k, summary, "trained before"))
            continue
        if member_plan.resume:
            print(f"member {k}: resuming from step {load_checkpoint(directory / RESUME_NAME)['step']:,}")
        jobs[k] = (member_plan, directory / "train.log")
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
        raise RunStopped(stopped_by, f"{signal.Signals(stopped_by).name}: stopped the members, each saved in its "
                                     f"{str(work_dir / 'member-k' / RESUME_NAME)!r}; continue with --resume")
    if failed:
        k = min(failed)
        raise UserError(f"member {k} failed (exit status {failed[k]}): {last_line(dirs[k] / 'train.log')} "
                        f"(its log: {str(dirs[k] / 'train.log')!r})")
    seconds = time.monotonic() - started

    members = [load(directory / CHECKPOINT_NAME, device)[0] for directory in dirs]
    model = EnsembleWaveNet(members).eval()
    losses = final_losses(model, data.splits, data.vocab)
    steps = sum(summaries[k]["steps"] for k in range(recipe.members))
    print(losses_line(losses, f"mixture of {recipe.members} members") + f"; {steps:,} steps in {seconds:.1f} s")
    save_checkpoint(work_dir / CHECKPOINT_NAME, model, data.vocab, recipe=recipe.to_dict(), seed=plan.seed)
    sample_the_run(plan, model, data)
    summary = {
        "train_loss": losses["train"], "val_loss": losses["val"], "test_loss": losses["test"],
        "params": count_parameters(model), "steps": steps,  # over all members
        "seconds": seconds,  # from this command's start until every member was trained
        "seconds_to_target": None, "target_loss": None,
        "seconds_total": time.monotonic() - started,  # also the mixture's evaluation and samples
        **run_facts(plan, device, members[0].config),
        "workers": workers, "threads": threads,
        "members": [{"work_dir": dirs[k].name, "seed": summaries[k]["seed"],
                     **{key: summaries[k][key] for key in ("train_loss", "val_loss", "test_loss", "steps")},
                     "seconds": summaries[k]["seconds_total"]} for k in range(recipe.members)],
    }
    write_summary(work_dir, summary)
    return summary


def plan_workers(plan, members):
    """(worker processes, threads of each). auto workers: one per core that no other process is using (as auto
    --threads counts them), at most one per member; auto threads share those cores among the workers. Small
    models train faster as several one-thread processes than as one process of several threads."""
    free_cores = choose_threads("auto")
    workers = min(members, free_cores if plan.workers == "auto" else int(plan.workers))
    threads = max(1, free_cores // workers) if plan.threads == "auto" else int(plan.threads)
    return workers, threads


def finished_member(plan):
    """On a --resume, the summary of a member whose run is complete at the plan's length (it is not run again);
    None for a member to train or resume."""
    summary = read_summary(plan.work_dir) if plan.resume else None
    if summary is None:  # none yet, or unreadable: the resumed run writes it again
        return None
    settings = summary.get("settings", {})
    if any(settings.get(name) != getattr(plan.recipe, name) for name in ("max_steps", "epochs")):
        return None  # asked to train to another length
    if load_checkpoint(plan.work_dir / RESUME_NAME)["step"] != summary.get("steps"):
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
    """Run the member jobs {k: (plan, log)} in `workers` spawned processes (fresh interpreters: no forked threads
    or locks); yields (k, exit status, summary) as each ends. On Ctrl-C or SIGTERM no member starts any more and
    the running ones are asked to stop: each saves its last.pt, and its status is 128 + the signal's number."""
    context = multiprocessing.get_context("spawn")
    stop_event = context.Event()
    with StopMembers(stop_event) as stop, ProcessPoolExecutor(
            workers, mp_context=context, initializer=start_worker, initargs=(stop_event, os.getpid())) as pool:
        futures = {pool.submit(train_member, plan, log): k for k, (plan, log) in jobs.items()}
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


def start_worker(stop_event, parent_pid):
    """A worker process dies with the command, and ignores Ctrl-C but while a member trains (its run then stops
    at a step, saving last.pt)."""
    global MEMBERS_STOPPED
    die_with_parent(parent_pid)
    MEMBERS_STOPPED = stop_event
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_member(plan, log):
    """One member's single run, in a worker process, its output appended to the member's train.log.
    (exit status, summary); (None, None) when the command was asked to stop before the member started."""
    if MEMBERS_STOPPED is not None and MEMBERS_STOPPED.is_set():
        return None, None
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", buffering=1) as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            torch.set_num_threads(int(plan.threads))
            return 0, train_single(plan, RunData.read(plan.input_file), resolve_device(plan.device), started)
        except RunStopped as e:
            print(e)
            return 128 + e.signum, None
        except UserError as e:
            print(f"error: {e}")
            return 2, None
