"""This process and the ones it starts: its start time and start-up, the cores it may use, and workers that die
with it."""
import ctypes
import gc
import os
import signal
import time

PR_SET_PDEATHSIG = 1  # linux/prctl.h


def command_start_time():
    """time.monotonic() at the moment this process started (Linux), so timings include start-up and imports."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.monotonic() - (uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def end_start_up():
    """A command's imports are done: freeze the objects they made, which live as long as the process, so that no
    later collection walks them again, and turn the cyclic garbage collector back on.

    Each command turns the collector off before its imports (`if __name__ == "__main__": gc.disable()` at the
    top of its module): with it on, its full collections walk the growing heap over and over while torch is
    imported. `python -m wavenet_conv.sample` then starts in 0.88 s instead of 1.24 s, and training's first
    step is done at 1.6-1.8 s instead of 2.0-2.6 s (AMD EPYC, 2 cores).
    """
    gc.freeze()
    gc.enable()


def choose_threads(threads):
    """auto: one thread per core that no other process is using right now, at least one.

    Threads that share a core with another busy process wait for each other at every parallel region: on a
    2-core machine with one other busy process, two threads train several times slower than one.
    """
    if threads != "auto":
        return int(threads)
    return max(1, (os.cpu_count() or 1) - other_running_processes())


def other_running_processes(samples=5, interval=0.005):
    """Runnable tasks besides this one (/proc/loadavg, counted as it is read), the median of a few samples 5 ms
    apart (20 ms of a command's start-up); the load average elsewhere."""
    counts = []
    try:
        for _ in range(samples):
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]) - 1)  # "running/total"; we are one of them
            time.sleep(interval)
    except (OSError, ValueError, IndexError):
        try:
            return round(os.getloadavg()[0])
        except OSError:
            return 0
    return sorted(counts)[len(counts) // 2]


def die_with_parent(parent_pid):
    """Make this worker process get SIGKILL when its parent dies, however it dies (kill -9, out of memory): no
    worker trains on for a run nobody watches. Linux's PR_SET_PDEATHSIG; elsewhere nothing. A parent that died
    before this call is caught by the check after it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os._exit(128 + signal.SIGKILL)
