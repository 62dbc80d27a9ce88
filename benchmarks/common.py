"""What every benchmark here shares: the environment record, timing with median and spread, output.

Conventions: a markdown table for people, a PNG plot, and as the last line of stdout one JSON object.
"""
import ctypes
import ctypes.util
import json
import os
import platform
import sys

import torch
import torch.utils.benchmark as tbench

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # run from a checkout


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


def environment(device):
    """Device, torch version and thread count: what a reader needs to compare two result files."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = cpu_model_name() or platform.processor() or platform.machine()
    return {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "allocator": ALLOCATOR["setting"],
    }


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


def write_json(obj, path=None):
    """Write the result file (if asked) and print the object as the last line of stdout."""
    text = json.dumps(obj, sort_keys=True)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    print(text, flush=True)


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
