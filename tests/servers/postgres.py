"""A real PostgreSQL server on a loopback port in a temporary directory.

The server binaries come from Debian's ``postgresql`` package (scripts/test installs it). PostgreSQL
refuses to run as root, so as root the server runs as the ``postgres`` user the package created.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from tests.servers import Missing, free_port


def bindir() -> Path:
    """The bin folder of the newest PostgreSQL server installed; ``Missing`` when there is none."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
    if not found:
        raise Missing("PostgreSQL server binaries not found under /usr/lib/postgresql "
                      "(scripts/test installs Debian's postgresql)")
    return found[-1].parent


class PostgresServer:
    """One PostgreSQL cluster: ``url()`` for a fresh database, ``stop()``/``start()`` for outages."""

    user = "flopwatch"

    def __init__(self, bindir: Path, root: Path, durable: bool = False) -> None:
        self.bindir = bindir
        # Tests trade durability for speed; a benchmark measures the settings a server runs with.
        self.settings = ("" if durable else
                         " -c fsync=off -c full_page_writes=off -c synchronous_commit=off")
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self._names = itertools.count()
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(root, owner.pw_uid, owner.pw_gid)
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", self.user, "-A", "trust", "--no-sync",
                  "-E", "UTF8", "--locale", "C")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as_owner, str(self.bindir / tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.root)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1{self.settings}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w",
                  "-t", "60", "-o", options, "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self) -> str:
        """A new, empty database on this server."""
        import psycopg

        name = f"flopwatch_{next(self._names)}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{name}"


@contextlib.contextmanager
def started(bindir: Path, prefix: str = "flopwatch-pg-", durable: bool = False) -> Iterator[PostgresServer]:
    """A server in a new temporary folder, stopped and removed at the end."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    server = PostgresServer(bindir, root, durable=durable)
    server.start()
    try:
        yield server
    finally:
        try:
            server.stop()
        except subprocess.CalledProcessError:
            pass  # already stopped by a test that failed mid-outage
        shutil.rmtree(root, ignore_errors=True)
