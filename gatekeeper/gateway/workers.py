"""Readiness across ``--workers``: ``/readyz`` answers 200 only when *every* worker has keys.

The workers share the ops listener, so whichever worker accepts a connection answers
``/readyz``; each has its own key store, and a worker just restarted (or one whose fetches keep
failing) has no keys while the others do. So each worker publishes its own readiness on a
:class:`WorkerBoard`: a directory the supervisor creates for this run, where an empty file
``<pid>.ready`` exists while worker ``pid`` is ready. The worker answering ``/readyz`` counts
itself (live) and the other live workers' files, and is ready only when that reaches the number
of workers started.

A worker publishes after every look at its keys (at once at startup, then every
:data:`~gatekeeper.gateway.app.KEEP_INTERVAL_NOT_READY` seconds while not ready and
:data:`~gatekeeper.gateway.app.KEEP_INTERVAL_READY` once ready) and withdraws at shutdown; the
supervisor removes the file of a worker that died (it notices within half a second). A file
whose process no longer exists is ignored in any case.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

__all__ = ["WORKERS_COUNT_ENV", "WORKERS_DIR_ENV", "WorkerBoard", "forget"]

#: Set by the supervisor for its spawned workers: the board's directory and the worker count.
WORKERS_DIR_ENV: Final = "GATEKEEPER_WORKERS_DIR"
WORKERS_COUNT_ENV: Final = "GATEKEEPER_WORKERS"
_SUFFIX: Final = ".ready"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, under another user: not ours, but alive
        return True
    return True


def forget(directory: Path, pid: int) -> None:
    """Remove worker ``pid``'s file (the supervisor, when that worker has exited)."""
    with contextlib.suppress(FileNotFoundError):
        (directory / f"{pid}{_SUFFIX}").unlink()


class WorkerBoard:
    """One worker's view of the board in ``directory``, shared by ``expected`` workers."""

    def __init__(self, directory: Path, expected: int, *, pid: int | None = None) -> None:
        if expected < 1:
            raise ValueError("expected must be >= 1")
        self.directory = directory
        self.expected = expected
        self.pid = os.getpid() if pid is None else pid
        self._file = directory / f"{self.pid}{_SUFFIX}"
        self._published: bool | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> WorkerBoard | None:
        """The board the supervisor set up for this worker, or None (a single process)."""
        directory = environ.get(WORKERS_DIR_ENV)
        count = environ.get(WORKERS_COUNT_ENV)
        if not directory or not count:
            return None
        return cls(Path(directory), int(count))

    def publish(self, ready: bool) -> None:
        """Say whether this worker is ready (the file is touched or removed on a change)."""
        if ready == self._published:
            return
        if ready:
            self._file.touch()
        else:
            forget(self.directory, self.pid)
        self._published = ready

    def withdraw(self) -> None:
        """This worker is stopping: it no longer counts as ready."""
        forget(self.directory, self.pid)
        self._published = False

    def ready_workers(self, own_ready: bool) -> list[int]:
        """The pids of the ready workers: this one when ``own_ready``, the others from their
        files (only those whose process still exists)."""
        pids = {self.pid} if own_ready else set()
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:  # the supervisor is tearing down
            names = []
        for name in names:
            stem, suffix = os.path.splitext(name)
            if suffix != _SUFFIX or not stem.isdigit():
                continue
            pid = int(stem)
            if pid != self.pid and _alive(pid):
                pids.add(pid)
        return sorted(pids)

    def check(self, own_ready: Callable[[], bool]) -> Callable[[], dict[str, Any]]:
        """A ``/readyz`` check (see :func:`gatekeeper.gateway.ops.readiness`): ready when every
        worker is; says which worker answered."""

        def workers() -> dict[str, Any]:
            ready = self.ready_workers(own_ready())
            return {
                "ready": len(ready) >= self.expected,
                "expected": self.expected,
                "ready_workers": len(ready),
                "answered_by": self.pid,
            }

        return workers
