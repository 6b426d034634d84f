"""The collector is off while a commit serializes, writes and finishes, and comes back
as the application left it."""

from __future__ import annotations

import gc
import threading

import pytest
import transaction
from persistent import Persistent

import atoll
from atoll import gcpause


class Probe(Persistent):
    """Records whether the collector was on whenever it is pickled."""

    seen: list[bool] = []

    def __getstate__(self) -> dict:
        Probe.seen.append(gc.isenabled())
        return super().__getstate__()


@pytest.fixture(autouse=True)
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_paused_turns_the_collector_off_and_back_on():
    with gcpause.paused():
        assert not gc.isenabled()
        with gcpause.paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still runs
    assert gc.isenabled()


def test_paused_leaves_a_collector_the_application_turned_off_off():
    gc.disable()
    with gcpause.paused():
        pass
    assert not gc.isenabled()


def test_paused_restores_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with gcpause.paused():
            1 / 0
    assert gc.isenabled()


def test_overlapping_pauses_in_two_threads_restore_once_both_end():
    inside, release = threading.Event(), threading.Event()

    def other():
        with gcpause.paused():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=other)
    thread.start()
    inside.wait(5)
    with gcpause.paused():
        pass
    assert not gc.isenabled()  # the other thread's pause is still on
    release.set()
    thread.join()
    assert gc.isenabled()


def test_a_commit_serializes_with_the_collector_off_and_restores_it(tmp_path):
    db = atoll.DB(str(tmp_path / "app.db"))
    Probe.seen = []
    with db.transaction() as conn:
        conn.root()["p"] = Probe()
    assert Probe.seen and not any(Probe.seen)
    assert gc.isenabled()
    db.close()


def test_a_failing_commit_restores_the_collector():
    db = atoll.DB(None)
    conn = db.open()
    conn.root()["bad"] = Unpicklable()
    with pytest.raises(TypeError):
        transaction.commit()
    transaction.abort()
    assert gc.isenabled()
    db.close()


class Unpicklable(Persistent):
    """Its state holds a lock, which pickle refuses."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
