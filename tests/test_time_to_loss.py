"""benchmarks/time_to_loss.py reads the seconds, steps and losses of real training runs."""
import json
import subprocess

import pytest

from benchmarks import time_to_loss
from benchmarks.common import REPO


def test_a_short_run_reports_when_it_reached_the_loss(tmp_path, capsys):
    out = tmp_path / "ttl.json"
    variant = "--threads 1 --max-steps 20 --eval-interval 10 --batch-size 64"
    time_to_loss.main(["--runs", "1", "--target-loss", "3.2", f"--variant={variant}", "--json", str(out)])
    result = json.loads(out.read_text())
    (row,) = result["results"]
    (run,) = row["runs"]
    assert row["reached"] == "1 of 1" and run["steps_to_target"] in (10, 20)
    assert run["val_at_target"] <= 3.2 and 0 < run["first_step_done_s"] <= run["seconds_to_target"]
    assert row["median_s"] == run["seconds_to_target"]
    assert f"`{variant}`" in (tmp_path / "ttl.md").read_text()


def test_an_unreached_loss_is_reported_as_such(tmp_path):
    out = tmp_path / "ttl.json"
    time_to_loss.main(["--runs", "1", "--target-loss", "0.5", "--variant=--threads 1 --max-steps 10",
                       "--json", str(out)])
    (row,) = json.loads(out.read_text())["results"]
    assert row["reached"] == "0 of 1" and row["median_s"] is None and row["runs"][0]["steps_to_target"] is None


def test_a_revision_runs_from_its_own_checkout_and_rows_give_the_paired_ratio(tmp_path):
    out = tmp_path / "ttl.json"
    flags = "--threads 1 --max-steps 10 --eval-interval 10 --batch-size 64"
    time_to_loss.main(["--runs", "1", "--target-loss", "3.3", f"--variant={flags}", f"--variant=@HEAD {flags}",
                       "--json", str(out)])
    here, at_head = json.loads(out.read_text())["results"]
    assert here["vs_first"] == 1.0 and at_head["reached"] == "1 of 1"
    ratio = at_head["runs"][0]["seconds_to_target"] / here["runs"][0]["seconds_to_target"]
    assert at_head["vs_first"] == pytest.approx(ratio)
    assert subprocess.run(["git", "worktree", "list"], cwd=REPO, capture_output=True, text=True).stdout.count(
        "time_to_loss-") == 0  # the temporary checkout is gone


def test_an_unknown_revision_is_a_one_line_error():
    with pytest.raises(SystemExit, match="cannot check out 'no-such-revision'"):
        time_to_loss.main(["--runs", "1", "--variant=@no-such-revision"])
