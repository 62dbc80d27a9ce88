"""benchmarks/profile_step.py times and profiles the real trainer's steps."""
import json

from benchmarks import profile_step


def test_a_profile_of_the_default_recipes_steps(tmp_path, capsys):
    out = tmp_path / "profile.json"
    profile_step.main(["--warmup", "1", "--steps", "2", "--rows", "5", "--threads", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["recipe"] == "fast" and 0 < result["min_ms_per_step"] <= result["median_ms_per_step"]
    names = [row["operation"] for row in result["operations"]]
    assert len(names) == 5 and any("convolution" in name for name in names)  # the Conv1d levels ran
    assert all(row["self_gpu_ms_per_step"] is None for row in result["operations"])  # on the CPU
    assert "gpu_busy_share" not in result
    assert "| `aten::" in (tmp_path / "profile.md").read_text()
