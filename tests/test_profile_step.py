"""benchmarks/profile_step.py times and profiles the real trainer's steps."""
import json

from benchmarks import profile_step


def test_a_profile_of_the_default_recipes_steps(tmp_path, capsys):
    out = tmp_path / "profile.json"
    profile_step.main(["--warmup", "1", "--steps", "2", "--rows", "5", "--threads", "1", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["recipe"] == "fast" and 0 < result["min_ms_per_step"] <= result["median_ms_per_step"]
    names = [row["operation"] for row in result["operations"]]
    # the levels' products ran: on names at block 8, level 1 on level 0's pair table and level 2's taps as matmuls
    assert len(names) == 5 and any(name in ("aten::mm", "aten::addmm") or "convolution" in name for name in names)
    assert all(row["self_gpu_ms_per_step"] is None for row in result["operations"])  # on the CPU
    assert "gpu_busy_share" not in result
    assert "| `aten::" in (tmp_path / "profile.md").read_text()
