"""Running a child process until it is killed: what the crash tests share."""

from __future__ import annotations

import os
import random
import select
import signal
import time
from typing import Callable


def run_until_killed(child: Callable[[int], None], rng: random.Random, longest: float) -> list[bytes]:
    """Fork a child that runs ``child(write_fd)``, writing one line per report to the
    pipe, SIGKILL it after a random delay of up to ``longest`` seconds, and return the
    lines it reported. The child must not stop by itself: that fails the test.

    The delay counts from the child's first report, not from the fork: on a loaded
    machine a child may need longer than ``longest`` just to open its databases, and
    kills that all land before the first commit would test nothing."""
    pid, read_end = _fork(child)
    first = _first_report(read_end, pid, timeout=60.0)
    time.sleep(rng.uniform(0.0, longest))
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as reports:
        lines = [line for line in (first + reports.read()).split(b"\n") if line]
    assert os.WIFSIGNALED(status), "the child stopped by itself (see its traceback above)"
    return lines


def _first_report(fd: int, pid: int, timeout: float) -> bytes:
    """Read from ``fd`` until a whole line arrives (or the child ends, or ``timeout``)."""
    received = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in received and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break  # the child closed the pipe: it stopped
            received += chunk
    return received


def run_until_it_dies(child: Callable[[int], None], timeout: float) -> list[bytes]:
    """Fork a child that runs ``child(write_fd)`` and kills itself with SIGKILL at a
    moment it chooses; return the lines it reported. A child still alive after
    ``timeout`` seconds is killed and fails the test, as does one that exits."""
    pid, read_end = _fork(child)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"the child did not die by itself within {timeout:g} s")
        time.sleep(0.01)
    with os.fdopen(read_end, "rb") as reports:
        lines = [line for line in reports.read().split(b"\n") if line]
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, "the child stopped by itself (see its traceback above)"
    return lines


def _fork(child: Callable[[int], None]) -> tuple[int, int]:
    """Fork a child that runs ``child(write_fd)`` and never returns; the parent gets
    the child's pid and the read end of its pipe."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            child(write_end)
        finally:
            os._exit(1)
    os.close(write_end)
    return pid, read_end
