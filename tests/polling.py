"""Waiting for what another thread or process does (a request arriving, a replica following a
stream), never for a clock: an expiry is reached by moving the injected clock instead.

Tests import it as a sibling module: ``from polling import eventually``.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(condition: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll ``condition`` every ``interval`` seconds until it holds or ``timeout`` seconds have
    passed; returns its last value, for ``assert eventually(lambda: ...)``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
