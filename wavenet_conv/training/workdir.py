"""A run's work dir: the files it holds, its plan (what --resume continues), and the lock that keeps one run in it.

    WORK_DIR/
        plan.json        the recipe, seed and vocabulary, written before the first step: --resume reads it
        .lock            the pid and host of the run training here now
        last.pt          the latest state of a single model (what its --resume continues)
        model.pt         the kept model: best validation, or the last weights; a mixture's members together
        metrics.jsonl, summary.json, loss.png, samples.txt
        member-k/        member k of a mixture: a single run's work dir of its own (and its train.log)
        teacher/         a distilling run's teacher: a mixture's or a single run's work dir
"""
import fcntl
import json
import os
import shutil
import socket
from pathlib import Path

from wavenet_conv.models.checkpoint import CHECKPOINT_NAME, checkpoint_path, load_checkpoint
from wavenet_conv.utils.errors import CheckpointError, UserError
from wavenet_conv.utils.files import write_atomically

RESUME_NAME = "last.pt"
PLAN_NAME = "plan.json"
SUMMARY_NAME = "summary.json"
LOCK_NAME = ".lock"
LEGACY_PLAN_NAME = "ensemble.json"  # a mixture's plan before plan.json named every run's
TEACHER_DIR = "teacher"
RUN_FILES = (PLAN_NAME, LEGACY_PLAN_NAME, RESUME_NAME, CHECKPOINT_NAME, "metrics.jsonl", SUMMARY_NAME, "loss.png",
             "samples.txt", "train.log")


def member_dir(work_dir, k):
    return Path(work_dir) / f"member-{k}"


def run_files(work_dir):
    """The files and folders of a run (finished or interrupted) in work_dir."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return []
    found = [work_dir / name for name in RUN_FILES if (work_dir / name).exists()]
    found += sorted(work_dir.glob("member-*")) + ([work_dir / TEACHER_DIR] if (work_dir / TEACHER_DIR).exists() else [])
    return found


def read_summary(work_dir):
    """The summary.json of the run in work_dir, or None where there is none it can read (a run still training)."""
    try:
        return json.loads((Path(work_dir) / SUMMARY_NAME).read_text())
    except (OSError, ValueError):
        return None


def trained_input_file(path):
    """The input file the run at `path` (its work dir, or a model.pt in it) trained on, as its summary.json
    records it; None where there is none (a run still training, a model.pt on its own)."""
    summary = read_summary(checkpoint_path(path).parent)
    return summary.get("input_file") if isinstance(summary, dict) else None


def prepare_fresh(work_dir, overwrite):
    """A new run never mixes with an old one: refuse a work dir that holds a run, or with overwrite remove it."""
    old = run_files(work_dir)
    if not [path for path in old if path.name != PLAN_NAME]:  # a plan alone: a run that stopped before training
        return
    if not overwrite:
        raise UserError(f"{str(work_dir)!r} holds a run already: continue it with --resume, or start over with "
                        f"--overwrite (which deletes it), or pick another --work-dir")
    for path in old:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    print(f"--overwrite: removed the earlier run in {str(work_dir)!r}")


def write_plan(work_dir, recipe, seed, vocab):
    """plan.json: what --resume needs to continue the run at any stage (a teacher, members, the model)."""
    plan = {"recipe": recipe.to_dict(), "seed": seed, "vocab": list(vocab.itos)}
    write_atomically(Path(work_dir) / PLAN_NAME, lambda tmp: tmp.write_text(json.dumps(plan, indent=2) + "\n"))


def read_plan(work_dir):
    """The run's plan: plan.json, a mixture's ensemble.json, or a single run's last.pt (runs that predate
    plan.json); a dict with recipe, seed and vocab."""
    work_dir = Path(work_dir)
    for name in (PLAN_NAME, LEGACY_PLAN_NAME):
        path = work_dir / name
        if path.is_file():
            try:
                plan = json.loads(path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise CheckpointError(f"cannot read the run's plan {str(path)!r}: {e}") from None
            if not isinstance(plan, dict) or not {"recipe", "seed", "vocab"} <= plan.keys() \
                    or not isinstance(plan["recipe"], dict):
                raise CheckpointError(f"{str(path)!r} is not a run's plan")
            return plan
    if not (work_dir / RESUME_NAME).is_file():
        raise CheckpointError(f"no checkpoint to resume in {str(work_dir)!r} (no {PLAN_NAME} or {RESUME_NAME})")
    state = load_checkpoint(work_dir / RESUME_NAME)
    if "recipe" not in state:
        raise CheckpointError(f"{str(work_dir / RESUME_NAME)!r} is not a training checkpoint (no recipe)")
    return state


class WorkDirLock:
    """One run per work dir: an exclusive flock on WORK_DIR/.lock, which holds the pid and host of the run.

    The kernel drops a flock when its process dies, however it dies, so a lock left by a killed run is stale by
    construction: the next run takes it over and says so. A second run while the first lives exits with one line.
    """

    def __init__(self, work_dir):
        self.path = Path(work_dir) / LOCK_NAME
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        holder = os.read(fd, 200).decode(errors="replace").strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{str(self.path.parent)!r} is in use by another run ({describe(holder)}); wait for "
                            f"it, stop it, or pick another --work-dir") from None
        if holder:
            print(f"taking over the lock of a run that is gone ({describe(holder)})")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} host {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc):
        os.ftruncate(self.fd, 0)
        os.close(self.fd)  # closing drops the flock


def describe(holder):
    """'pid N on host H' from a lock file's 'pid N host H'."""
    words = holder.split()
    if len(words) == 4 and words[0] == "pid" and words[2] == "host":
        return f"pid {words[1]} on host {words[3]}"
    return holder or "unknown"
