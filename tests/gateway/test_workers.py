"""The worker board behind ``/readyz`` under ``--workers``: each worker's ready file, counted by
whichever worker answers (test_serve.py runs it with two real workers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gatekeeper.gateway.workers import WORKERS_COUNT_ENV, WORKERS_DIR_ENV, WorkerBoard, forget


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_ready_only_when_every_expected_worker_is(tmp_path: Path) -> None:
    own = WorkerBoard(tmp_path, 2)
    other = WorkerBoard(tmp_path, 2, pid=os.getppid())  # a live process standing for a worker
    check = own.check(lambda: True)
    assert check() == {"ready": False, "expected": 2, "ready_workers": 1, "answered_by": os.getpid()}
    other.publish(True)
    assert check()["ready"] is True
    assert check()["ready_workers"] == 2
    assert own.check(lambda: False)() == {
        "ready": False,
        "expected": 2,
        "ready_workers": 1,
        "answered_by": os.getpid(),
    }
    other.publish(False)
    assert check()["ready"] is False
    other.publish(True)
    other.withdraw()
    assert check()["ready"] is False


def test_own_readiness_is_taken_live_not_from_its_file(tmp_path: Path) -> None:
    own = WorkerBoard(tmp_path, 1)
    own.publish(True)
    assert own.check(lambda: False)()["ready"] is False
    own.publish(False)
    assert own.check(lambda: True)()["ready"] is True


def test_a_dead_workers_file_is_ignored_and_forget_removes_it(tmp_path: Path) -> None:
    pid = dead_pid()
    (tmp_path / f"{pid}.ready").touch()
    (tmp_path / "notes.txt").touch()  # anything else in the directory is ignored
    (tmp_path / "x.ready").touch()
    own = WorkerBoard(tmp_path, 2)
    assert own.ready_workers(True) == [os.getpid()]
    forget(tmp_path, pid)
    assert not (tmp_path / f"{pid}.ready").exists()
    forget(tmp_path, pid)  # already gone: no error


def test_publish_writes_only_on_a_change(tmp_path: Path) -> None:
    own = WorkerBoard(tmp_path, 1)
    own.publish(True)
    marker = tmp_path / f"{os.getpid()}.ready"
    marker.unlink()  # unchanged state: not rewritten (a file per keeper tick would be waste)
    own.publish(True)
    assert not marker.exists()
    own.publish(False)
    own.publish(True)
    assert marker.exists()


def test_a_missing_directory_counts_only_this_worker(tmp_path: Path) -> None:
    own = WorkerBoard(tmp_path / "gone", 2)
    assert own.ready_workers(True) == [os.getpid()]


def test_from_environment(tmp_path: Path) -> None:
    assert WorkerBoard.from_environment({}) is None
    assert WorkerBoard.from_environment({WORKERS_DIR_ENV: str(tmp_path)}) is None
    board = WorkerBoard.from_environment({WORKERS_DIR_ENV: str(tmp_path), WORKERS_COUNT_ENV: "3"})
    assert board is not None
    assert (board.directory, board.expected, board.pid) == (tmp_path, 3, os.getpid())
    with pytest.raises(ValueError, match="expected"):
        WorkerBoard(tmp_path, 0)
