"""``gatekeeper serve`` as a real subprocess on free loopback ports, for gateway tests.

``GatewayProcess(config_text, tmp_path)`` writes the config (``{listen}``, ``{ops}`` and
``{access_log}`` are filled in with free ports and a log file), starts ``gatekeeper serve`` and
waits for ``/healthz``. ``stop()`` sends SIGTERM and returns the exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from upstream import free_port


class GatewayProcess:
    """A running ``gatekeeper serve``; ``url`` is the main listener, ``ops_url`` the ops one."""

    def __init__(
        self, config_text: str, tmp_path: Path, *, workers: int | None = None, timeout: float = 30.0
    ) -> None:
        self.port = free_port()
        self.ops_port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ops_url = f"http://127.0.0.1:{self.ops_port}"
        self.access_log = tmp_path / "access.log"
        self.stderr_path = tmp_path / "gatekeeper.stderr"
        self.config = tmp_path / "gatekeeper.toml"
        self.config.write_text(
            config_text.format(
                listen=f"127.0.0.1:{self.port}", ops=f"127.0.0.1:{self.ops_port}", access_log=self.access_log
            ),
            encoding="utf-8",
        )
        args = [sys.executable, "-m", "gatekeeper.cli", "serve", "--config", str(self.config)]
        if workers is not None:
            args += ["--workers", str(workers)]
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        self._stderr = self.stderr_path.open("w")
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self._stderr, env=env)
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gatekeeper serve exited {self.process.returncode}: {self.stderr()}")
            try:
                if httpx.get(self.ops_url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"gatekeeper serve did not become healthy: {self.stderr()}")

    def wait_for(self, path: str, status: int, timeout: float = 20.0) -> httpx.Response:
        """Poll an ops path until it answers ``status`` (a state change, not a clock)."""
        deadline = time.monotonic() + timeout
        response = httpx.get(self.ops_url + path, timeout=5)
        while response.status_code != status and time.monotonic() < deadline:
            time.sleep(0.05)
            response = httpx.get(self.ops_url + path, timeout=5)
        return response

    def stderr(self) -> str:
        if not self._stderr.closed:
            self._stderr.flush()
        return self.stderr_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line]

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._stderr.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._stderr.close()

    def __enter__(self) -> GatewayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples of metric ``name`` in Prometheus text: labels (sorted pairs) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found
