"""benchmarks/time_to_loss.py reads the seconds, steps and losses of real training runs."""
import json

from benchmarks import time_to_loss


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
