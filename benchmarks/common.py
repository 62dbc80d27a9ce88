"""What every benchmark here shares: the environment record, timing with median and spread, output.

Conventions: a markdown report for people, headed by when, from which commit, on which machine and by which
command it was made (`report_header`); a PNG plot; and a JSON object with the same record in its environment.
"""
import ctypes
import ctypes.util
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys

import torch
import torch.utils.benchmark as tbench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout


def cpu_model_name():
    """'AMD EPYC (family 25, model 1), 2 cores': what /proc/cpuinfo tells (a virtual machine may hide more)."""
    try:
        with open("/proc/cpuinfo") as f:
            fields = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    except OSError:
        return None
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    if "model name" not in fields:
        return None
    return (f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')}), "
            f"{os.cpu_count()} cores")


# glibc's mallopt parameters (malloc.h) and the size below which freed memory is kept for reuse
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_FREED_BYTES = 1 << 30
ALLOCATOR = {"setting": "default"}  # what keep_freed_memory did, for the environment record


def keep_freed_memory():
    """Have glibc's malloc keep freed memory for reuse, so that timings do not depend on the allocator's history.

    By default glibc hands blocks above a moving threshold (128 KiB at first) to mmap and returns them to the
    OS on free, so the next tensor of that size faults in every page again. The tree's many large elementwise
    temporaries met that: at block 8, batch 1024, one eval call over 500 validation names took ~7,700 minor
    page faults and ran at 105-112K predictions/s, against ~50 faults and 164-170K with this setting (three
    runs each, one thread, AMD EPYC family 25 model 17); whether a run paid them depended on the threshold's
    history, that is on the order of the runs. The conv's tensors are small and never faulted. Returns whether
    the setting took (False off glibc, where nothing changes).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    took = bool(mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
    if took:
        ALLOCATOR["setting"] = f"glibc mmap and trim thresholds {KEEP_FREED_BYTES >> 20} MiB (freed memory reused)"
    return took


def git_commit():
    """The checkout's short commit, with ' + uncommitted changes' when the code (wavenet_conv/, benchmarks/*.py)
    differs from it; None outside a git checkout."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--short", "HEAD")
        if head.returncode:
            return None
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "wavenet_conv", "benchmarks/*.py")
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + (" + uncommitted changes" if changed.stdout.strip() else "")


def command_line(script, argv=None):
    """The command that reproduces a run from the repository's root: `python benchmarks/x.py <arguments>`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    path = os.path.relpath(os.path.abspath(script), REPO)
    return shlex.join(["python", path if not path.startswith("..") else script, *map(str, argv)])


def environment(device, command=None):
    """When, from which commit, by which command, on which device, torch version and thread count: what a
    reader needs to reproduce a result file or compare two of them."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_model_name() or platform.processor() or platform.machine()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "command": command,
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "allocator": ALLOCATOR["setting"],
    }


def report_header(title, env):
    """The head of a markdown result file: its title, then date, commit, machine, torch and the command."""
    threads = f"{env['threads']} thread{'s' if env['threads'] != 1 else ''}"
    torch_line = env["torch"] + (f", CUDA {env['cuda']}" if env.get("cuda") else "") + f", Python {env['python']}"
    return "\n".join([
        f"# {title}", "",
        f"- date: {env.get('date') or 'not recorded'}",
        f"- commit: {env.get('commit') or 'not recorded'}",
        f"- machine: {env['device_name']} ({env['device']}), {threads}",
        f"- torch: {torch_line}",
        f"- command: `{env.get('command') or 'not recorded'}`",
    ])


def measure(fn, min_run_time=1.0, label=""):
    """Median and spread of fn's run time in seconds (warm-up and CUDA synchronisation by torch's Timer)."""
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), label=label)
    fn()  # warm-up outside the measurement (allocations, lazy init, autotuning)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    times = sorted(m.times)
    return {"median_s": m.median, "iqr_s": m.iqr, "min_s": times[0], "max_s": times[-1], "runs": len(times)}


def markdown_table(rows, columns):
    """rows: dicts; columns: (key, header, format) triples."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[k]) if row.get(k) is not None else "-" for k, _, fmt in columns) + " |")
    return "\n".join(lines)


def write_json(obj, path=None, echo=True):
    """Write the result file (if asked); with echo, also print the object as the last line of stdout."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    if echo:
        print(json.dumps(obj, sort_keys=True), flush=True)


def write_text(text, path):
    """Write a report file, making its folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def available_devices(choice):
    """'all' means CPU plus CUDA when a GPU really answers."""
    from wavenet_conv.utils.device import cuda_works, resolve_device

    if choice == "all":
        devices = ["cpu"] + (["cuda"] if cuda_works() else [])
    elif choice == "cuda" and not cuda_works():
        raise SystemExit("error: --device cuda was asked for, but no working CUDA GPU is available")
    else:
        devices = [choice]
    for device in devices:
        resolve_device(device)  # the same device settings as training (exact float32 convolutions on CUDA)
    return devices
