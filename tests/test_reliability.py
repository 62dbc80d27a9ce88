"""Nothing lost, nothing left behind: kill -9 at any stage of a run, workers that outlive their parent, two runs
in one work dir. Each test runs the real command in a subprocess and kills it as a user would."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wavenet_conv import train
from wavenet_conv.models.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = ["--n-embd", "4", "--n-hidden", "8", "--block-size", "4", "--batch-size", "8", "--eval-interval", "5",
        "--log-interval", "1000", "--num-samples", "0", "--threads", "1", "--workers", "1"]


def start(tmp_path, words_file, work_dir, *flags):
    """The train command in its own process; its output goes to WORK_DIR.out (read by `output`)."""
    log = open(tmp_path / f"{Path(work_dir).name}.out", "a")
    return subprocess.Popen([sys.executable, "-m", "wavenet_conv.train", "-i", str(words_file), "-o", str(work_dir),
                             *map(str, flags)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)


def output(tmp_path, work_dir):
    return (tmp_path / f"{Path(work_dir).name}.out").read_text()


def wait_for(condition, timeout=60.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def saved_step(path):
    """The step of a last.pt, or None while there is none (or it is being replaced)."""
    try:
        return load_checkpoint(path)["step"] if path.is_file() else None
    except Exception:  # noqa: BLE001 (a file renamed in place between the check and the read)
        return None


def descendants(pid):
    """Every live process whose ancestry leads to pid (/proc), not counting zombies."""
    children = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill_hard(process):
    process.send_signal(signal.SIGKILL)
    process.wait()


@pytest.fixture
def words_file(small_words_file):
    return small_words_file


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_their_parent(tmp_path, words_file):
    work_dir = tmp_path / "mixture"
    parent = start(tmp_path, words_file, work_dir, "--members", 2, *TINY, "--workers", 2, "--max-steps", 100_000)
    try:
        wait_for(lambda: all(saved_step(work_dir / f"member-{k}" / "last.pt") for k in range(2)),
                 what="both members to save a checkpoint")
        workers = descendants(parent.pid)
        assert len(workers) >= 2
    finally:
        kill_hard(parent)
    wait_for(lambda: not any(alive(pid) for pid in workers), timeout=5.0, what="every worker to die with its parent")


def test_kill_during_the_mixtures_members_resumes_them(tmp_path, words_file):
    """Member 0 finished, member 1 killed mid-run: --resume keeps member 0, continues member 1 from its step."""
    work_dir = tmp_path / "mixture"
    flags = ["--members", 2, *TINY, "--max-steps", 300]
    process = start(tmp_path, words_file, work_dir, *flags)
    try:
        wait_for(lambda: (saved_step(work_dir / "member-1" / "last.pt") or 0) >= 5, what="member 1 to save")
    finally:
        kill_hard(process)
    step = saved_step(work_dir / "member-1" / "last.pt")
    assert 0 < step < 300
    finished = (work_dir / "member-0" / "last.pt").read_bytes()

    resumed = start(tmp_path, words_file, work_dir, "--resume", "--threads", 1)
    wait_for(lambda: "member 1: resuming from step" in output(tmp_path, work_dir), what="the resume line")
    resumed.send_signal(signal.SIGTERM)
    assert resumed.wait(60) == 128 + signal.SIGTERM
    out = output(tmp_path, work_dir)
    assert "member 0 (seed 42)" in out and "(trained before)" in out
    resumed_from = int(out.split("member 1: resuming from step ")[1].split()[0].replace(",", ""))
    assert resumed_from >= step
    assert (work_dir / "member-0" / "last.pt").read_bytes() == finished  # not retrained
    assert saved_step(work_dir / "member-1" / "last.pt") >= resumed_from  # continued, not restarted


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_kill_during_distillation_resumes_the_stage(tmp_path, words_file, stage):
    """kill -9 while the teacher's members train, or while the student trains: --resume continues that stage
    (naming the step) and keeps what the earlier stages finished."""
    work_dir = tmp_path / "distilled"
    flags = ["--distill", 0.5, "--teacher-members", 2, *TINY, "--max-steps", 200 if stage == "student" else 400]
    checkpoint = work_dir / "teacher" / "member-1" / "last.pt" if stage == "teacher" else work_dir / "last.pt"
    process = start(tmp_path, words_file, work_dir, *flags)
    try:
        wait_for(lambda: (saved_step(checkpoint) or 0) >= 5, timeout=120, what=f"the {stage} to save")
    finally:
        kill_hard(process)
    step = saved_step(checkpoint)
    assert not (work_dir / "summary.json").exists()

    resumed = start(tmp_path, words_file, work_dir, "--resume", "--threads", 1)
    line = "member 1: resuming from step" if stage == "teacher" else f"resuming {str(work_dir)!r} from step"
    wait_for(lambda: line in output(tmp_path, work_dir), what="the resume line")
    resumed.send_signal(signal.SIGTERM)
    assert resumed.wait(60) == 128 + signal.SIGTERM
    out = output(tmp_path, work_dir)
    assert int(out.split(line)[1].split()[0].replace(",", "")) >= step
    assert out.count("(trained before)") == 1 if stage == "teacher" else "the teacher trained before" in out


def test_one_run_per_work_dir(tmp_path, words_file, capsys):
    work_dir = tmp_path / "run"
    process = start(tmp_path, words_file, work_dir, *TINY, "--max-steps", 100_000)
    try:
        # last.pt after the first step, model.pt at the first validation: then its files stay the same until its end
        wait_for(lambda: saved_step(work_dir / "model.pt") is not None, what="the run to save")
        run_files = lambda: sorted(p.name for p in work_dir.iterdir() if not p.name.endswith(".tmp"))  # noqa: E731
        before, plan = run_files(), (work_dir / "plan.json").read_bytes()  # (.tmp: the running run's saves)
        with pytest.raises(SystemExit) as exit_status:
            train.main(["-i", str(words_file), "-o", str(work_dir), *TINY, "--max-steps", "2", "--overwrite"])
        err = capsys.readouterr().err
        assert exit_status.value.code == 2
        assert err.count("\n") == 1 and f"in use by another run (pid {process.pid} on host" in err
        assert run_files() == before and (work_dir / "plan.json").read_bytes() == plan  # nothing changed there
    finally:
        kill_hard(process)

    # the killed run's lock is stale: the next run takes it over; a fresh run does not mix with the old one
    with pytest.raises(SystemExit) as exit_status:
        train.main(["-i", str(words_file), "-o", str(work_dir), *TINY, "--max-steps", "2"])
    captured = capsys.readouterr()
    assert exit_status.value.code == 2 and "--resume" in captured.err and "--overwrite" in captured.err
    assert f"taking over the lock of a run that is gone (pid {process.pid} on host" in captured.out
    assert train.main(["-i", str(words_file), "-o", str(work_dir), *TINY, "--max-steps", "2", "--overwrite"])["steps"] == 2
    assert "removed the earlier run" in capsys.readouterr().out
    assert os.path.getsize(work_dir / ".lock") == 0  # released at the end
