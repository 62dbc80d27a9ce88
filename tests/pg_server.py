"""A throwaway PostgreSQL server for tests: initdb into a temporary folder, started on a free loopback port, stopped
and deleted afterwards. No mock: the real server binaries, found on PATH or under /usr/lib/postgresql/*/bin.

    with PostgresServer.start_or_skip() as server:
        url = server.create_database("sweep")   # postgresql://postgres@127.0.0.1:PORT/sweep

The test that uses it is skipped, with the reason, where the binaries or psycopg (the postgres extra) are missing,
or where it runs as root and no unprivileged user can run the server (PostgreSQL refuses to run as root).
"""
import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

SERVER_PROGRAMS = ("initdb", "pg_ctl", "postgres")
UNPRIVILEGED_USER = "nobody"
# no durability: the data is thrown away
FAST_SETTINGS = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off")


def find_bin_dir():
    """The folder with initdb, pg_ctl and postgres: PATH's, else the newest /usr/lib/postgresql/N/bin; None."""
    on_path = [shutil.which(name) for name in SERVER_PROGRAMS]
    if all(on_path):
        folders = {Path(os.path.realpath(p)).parent for p in on_path}
        if len(folders) == 1:
            return folders.pop()

    def version(folder):
        return [int(n) for n in re.findall(r"\d+", Path(folder).parent.name)] or [0]

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        if all(os.access(Path(folder) / name, os.X_OK) for name in SERVER_PROGRAMS):
            return Path(folder)
    return None


def as_user_prefix():
    """(command prefix that runs a program as a user PostgreSQL accepts, that user's uid) or a skip reason."""
    if os.geteuid() != 0:
        return [], os.geteuid()
    try:
        uid = pwd.getpwnam(UNPRIVILEGED_USER).pw_uid
    except KeyError:
        return f"running as root, and there is no user {UNPRIVILEGED_USER!r} to run PostgreSQL as", None
    if shutil.which("runuser"):
        return ["runuser", "-u", UNPRIVILEGED_USER, "--"], uid
    if shutil.which("su"):
        return ["su", "-s", "/bin/sh", UNPRIVILEGED_USER, "-c"], uid  # the command as one string follows
    return "running as root, and neither runuser nor su is there to run PostgreSQL as another user", None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self, bin_dir, prefix, uid):
        self.bin_dir, self.prefix, self.uid = bin_dir, prefix, uid
        self.root = Path(tempfile.mkdtemp(prefix="wavenet-pg-"))  # not pytest's tmp_path: only root may enter it
        self.data, self.log = self.root / "data", self.root / "server.log"
        self.port = None
        if self.uid != os.geteuid():
            os.chown(self.root, self.uid, -1)

    @classmethod
    @contextlib.contextmanager
    def start_or_skip(cls):
        pytest.importorskip("psycopg", reason='psycopg 3 is not installed: pip install -e ".[postgres]"')
        bin_dir = find_bin_dir()
        if bin_dir is None:
            pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or under "
                        "/usr/lib/postgresql/*/bin: apt-get install postgresql")
        prefix, uid = as_user_prefix()
        if isinstance(prefix, str):
            pytest.skip(prefix)
        server = cls(bin_dir, prefix, uid)
        try:
            server.start()
            yield server
        finally:
            server.stop()

    def run(self, program, *args, check=True):
        command = [str(self.bin_dir / program), *map(str, args)]
        if self.prefix[:1] == ["su"]:
            command = [*self.prefix, shlex.join(command)]
        else:
            command = [*self.prefix, *command]
        result = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} failed ({result.returncode}): {result.stderr.strip() or result.stdout}")
        return result

    def start(self):
        self.run("initdb", "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        for _ in range(3):  # another program may take the free port before the server does
            self.port = free_port()
            options = f"-k {self.root} -p {self.port} -c listen_addresses=127.0.0.1 {FAST_SETTINGS}"
            started = self.run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-o", options, "start",
                               check=False)
            if started.returncode == 0:
                return
            time.sleep(0.2)
        log = self.log.read_text()[-2000:] if self.log.exists() else started.stderr
        raise RuntimeError(f"the PostgreSQL server did not start: {log}")

    def stop(self):
        if self.port is not None and (self.data / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self, name):
        """A new, empty database; its plain postgresql:// URL."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"
