"""benchmarks/conv_kernel.py: its matmul case computes one level's arithmetic, and its JSON contract."""
import json

import torch
from einops import rearrange
from torch.testing import assert_close

from benchmarks import conv_kernel


def test_the_matmul_case_is_the_conv_of_the_row():
    """The matmul of the stacked taps is the Conv1d at every position whose earlier tap is in the row."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv1d(4, 3, 2, dilation=2).double()
    x = torch.randn(1, 4, 9, generator=g, dtype=torch.float64)
    stacked = rearrange(torch.stack([x[0, :, :-2], x[0, :, 2:]]), "k c n -> (k c) n")  # each output's two taps
    taps = rearrange(conv.weight, "h c k -> h (k c)")
    with torch.no_grad():
        assert_close(torch.addmm(conv.bias[:, None], taps, stacked), conv(x)[0])


def test_a_tiny_run_prints_the_json_contract_and_writes_a_headed_report(capsys, tmp_path):
    argv = ["--positions", "64", "--channels", "8", "--dilation", "2", "--item-length", "4", "--rounds", "1",
            "--out-dir", str(tmp_path)]
    conv_kernel.main(argv)
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["rows"]) == 6 and all(r["gflops"] > 0 for r in result["rows"])
    env = result["environment"]
    assert env["threads"] == 1
    assert env["command"] == "python benchmarks/conv_kernel.py " + " ".join(argv)
    report = (tmp_path / "conv_kernel_cpu.md").read_text()
    head = report.splitlines()[:8]
    assert head[0].startswith("# One conv level")
    for field in ("date", "commit", "machine", "torch", "command"):
        assert any(line.startswith(f"- {field}: ") for line in head), field
