"""A private PostgreSQL server for tests that must stop or restart one.

The shared test server (``tests/postgres_support.py``) must never be restarted:
other test runs use it. :func:`private_cluster` makes a throw-away cluster in a
temporary folder with ``initdb`` and runs it on a free port, as the ``postgres``
user when the tests run as root, and removes it afterwards. When that is
impossible (no PostgreSQL binaries, not root and not ``postgres``) it skips the
test with the reason.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from typing import Iterator

import pytest

__all__ = ["PrivateCluster", "private_cluster"]


def _bin_dir() -> str | None:
    for candidate in [os.environ.get("ATOLL_TEST_PG_BIN", "")] + sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), reverse=True
    ):
        if candidate and os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateCluster:
    """A running private PostgreSQL cluster; ``dsn`` reaches its ``postgres`` database."""

    def __init__(self, bin_dir: str, folder: str, as_postgres: bool) -> None:
        self.bin_dir = bin_dir
        self.folder = folder
        self.data = os.path.join(folder, "data")
        self.log = os.path.join(folder, "server.log")
        self.port = _free_port()
        self.as_postgres = as_postgres
        self.dsn = f"host=127.0.0.1 port={self.port} dbname=postgres user=postgres connect_timeout=5"

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [os.path.join(self.bin_dir, args[0]), *args[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {result.stderr.strip() or result.stdout.strip()}")

    def init(self) -> None:
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        settings = {
            "port": self.port,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": self.folder,
            "max_prepared_transactions": 20,
            "max_connections": 50,
            "shared_buffers": "16MB",
            "fsync": "off",  # a test server: restarts are clean, power never fails
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as f:
            for key, value in settings.items():
                f.write(f"{key} = '{value}'\n")

    def start(self) -> None:
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "start")

    def restart(self) -> None:
        """Stop the server (fast: every session is ended) and start it again."""
        self._run("pg_ctl", "-D", self.data, "-l", self.log, "-w", "-t", "60", "-m", "fast", "restart")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._run("pg_ctl", "-D", self.data, "-w", "-t", "60", "-m", "immediate", "stop")


@contextlib.contextmanager
def private_cluster() -> Iterator[PrivateCluster]:
    """A private cluster for one test (see the module docstring)."""
    bin_dir = _bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries (initdb) found under /usr/lib/postgresql/*/bin")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    uid = os.geteuid()
    as_postgres = uid == 0
    if as_postgres and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start a private PostgreSQL as user postgres")
    folder = tempfile.mkdtemp(prefix="atoll-pg-")
    cluster = PrivateCluster(bin_dir, folder, as_postgres)
    try:
        if as_postgres:
            try:
                import pwd

                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres user to run a private server as")
            os.chown(folder, user.pw_uid, user.pw_gid)
        try:
            cluster.init()
            cluster.start()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
            pytest.skip(f"cannot start a private PostgreSQL server: {e}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)
