"""The commands import without the cyclic garbage collector and turn it back on before their work begins."""
import json
import subprocess
import sys

import pytest

# runs a command's module as `python -m` does, its --help ending it right after start-up; reports the collector
# as end_start_up found and left it
PROBE = """
import gc, json, runpy, sys
import wavenet_conv.utils.processes as processes

seen = {}
end_start_up = processes.end_start_up

def spy():
    seen["off_during_imports"] = not gc.isenabled()
    seen["torch_imported"] = "torch" in sys.modules
    end_start_up()
    seen["on_after"] = gc.isenabled()
    seen["frozen"] = gc.get_freeze_count()

processes.end_start_up = spy
sys.argv = [sys.argv[1], "--help"]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print(json.dumps(seen))
"""


@pytest.mark.parametrize("command", ["wavenet_conv.train", "wavenet_conv.sample", "wavenet_conv.evaluate",
                                     "wavenet_conv.sweep"])
def test_a_command_imports_with_the_collector_off_then_turns_it_on(command):
    result = subprocess.run([sys.executable, "-c", PROBE, command], capture_output=True, text=True, check=True)
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["off_during_imports"] and seen["torch_imported"]
    assert seen["on_after"] and seen["frozen"] > 100_000  # torch's objects, kept out of later collections


def test_imported_as_a_library_the_collector_stays_on():
    """Negative control: only a command's own start-up turns it off; importing its module leaves it alone."""
    probe = "import gc, wavenet_conv.train, wavenet_conv.sample; print(gc.isenabled(), gc.get_freeze_count())"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["True", "0"]
