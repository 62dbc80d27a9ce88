"""Writing a file atomically: checkpoints, the downloaded dataset, and the sweep's tables and plots (which workers
may write together)."""
import os
from pathlib import Path


def write_atomically(path, write):
    """write(temporary) beside `path`, flush it to disk, rename it over `path` and sync the directory.

    A kill at any moment leaves the previous file or the new one, never a torn one; after a power loss the name
    points at the new file; a failed write leaves no temporary behind. The temporary is `.NAME.PID.tmp`, so
    processes that write the same file together never share one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    sync_directory(path.parent)
    return path


def sync_directory(path):
    """fsync a directory, making a rename inside it durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)
