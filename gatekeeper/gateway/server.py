"""``gatekeeper serve``: the gateway under uvicorn, one process or several, drained on SIGTERM.

The listening sockets are bound first, in the process that was started, and then handed to the
worker(s): with ``--workers 1`` that process serves; with more, it supervises that many spawned
workers that share both sockets (each with its own verifier, caches and key store, like Envoy's
per-worker caches), a temporary ``PROMETHEUS_MULTIPROC_DIR`` for the metrics, and a temporary
directory where each worker says whether it is ready (:mod:`gatekeeper.gateway.workers`: any
worker's ``/readyz`` answers for all of them).

Each worker runs two uvicorn servers on one event loop: the main listener (forward-auth and
proxy) and the ops listener (``/healthz``, ``/readyz``, ``/metrics``). SIGTERM or SIGINT stops
accepting, lets in-flight requests finish (at most ``shutdown_timeout`` seconds), runs the
shutdown (closing upstream and key-fetch clients) and exits 0. A supervisor forwards the signal
to its workers and exits 0 once they all have.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Generator
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Literal

import uvicorn

from .app import Gateway, build_gateway
from .config import Address, GatewayConfig, load_config
from .metrics import MULTIPROC_ENV, mark_process_dead
from .workers import WORKERS_COUNT_ENV, WORKERS_DIR_ENV, forget

logger = logging.getLogger("gatekeeper.gateway")

#: A worker that dies sooner than this after starting is not restarted: it would only die again.
MIN_WORKER_LIFETIME = 1.0
#: Exit codes of a worker that could not start (uvicorn's startup failure, a config error):
#: restarting it would fail the same way.
STARTUP_FAILURES = frozenset({2, 3})
#: How long past ``shutdown_timeout`` the supervisor waits for a draining worker before SIGKILL.
KILL_GRACE = 10.0


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signals to us: uvicorn's own handling re-raises the signal
    after shutting down, so the process would die of SIGTERM instead of exiting 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def bind(address: Address) -> socket.socket:
    """A listening TCP socket on ``address`` (``OSError`` when the port is taken)."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for that, and
    # without it a response written in two parts waits ~40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((address.host, address.port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _uvicorn_config(app: Any, config: GatewayConfig, *, lifespan: Literal["on", "off"]) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        lifespan=lifespan,
        interface="asgi3",  # a bound method is not recognised as ASGI 3 by uvicorn's guess
        log_config=None,
        access_log=False,  # our own access log has the decision; uvicorn's would repeat the path
        server_header=False,
        proxy_headers=False,  # X-Forwarded-* are the proxy's business, per its settings
        # uvicorn takes whole seconds; 0 must stay 0 (do not wait), never None (wait forever).
        timeout_graceful_shutdown=math.ceil(config.server.shutdown_timeout),
        loop=config.server.loop,
        http=_http_protocol(config.server.http),
    )


def _http_protocol(choice: str) -> str | type[asyncio.Protocol]:
    """uvicorn's HTTP implementation by name, except that httptools (what ``auto`` picks when
    it is installed) is served by :class:`~.http_protocol.GatewayHttpProtocol`."""
    if choice == "h11" or (choice == "auto" and importlib.util.find_spec("httptools") is None):
        return choice
    from .http_protocol import GatewayHttpProtocol  # needs httptools

    return GatewayHttpProtocol


async def run_worker(
    config: GatewayConfig, main_sock: socket.socket, ops_sock: socket.socket, gateway: Gateway | None = None
) -> int:
    """Serve ``gateway`` (built from ``config`` when not given) on both sockets until SIGTERM or
    SIGINT; return the exit code."""
    gateway = gateway or build_gateway(config)
    main = _Server(_uvicorn_config(gateway, config, lifespan="on"))
    ops = _Server(_uvicorn_config(gateway.ops, config, lifespan="off"))
    loop = asyncio.get_running_loop()

    def stop() -> None:
        logger.info("shutting down: finishing in-flight requests")
        main.should_exit = True
        ops.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        # The ops server only stops when the main one has drained, so /healthz answers meanwhile.
        ops_task = loop.create_task(ops.serve(sockets=[ops_sock]))
        await main.serve(sockets=[main_sock])
        ops.should_exit = True
        await ops_task
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            # Drained: a repeated SIGTERM (a supervisor or an impatient operator) must not turn
            # the clean exit into death by signal during the last teardown.
            signal.signal(sig, signal.SIG_IGN)
    return 0 if main.started else 3


def _run_loop(config: GatewayConfig, main_sock: socket.socket, ops_sock: socket.socket) -> int:
    probe = _uvicorn_config(None, config, lifespan="off")
    factory = getattr(probe, "get_loop_factory", None)
    if factory is not None:
        with asyncio.Runner(loop_factory=factory()) as runner:
            return runner.run(run_worker(config, main_sock, ops_sock))
    probe.setup_event_loop()  # uvicorn < 0.36: sets the policy (uvloop when chosen)
    return asyncio.run(run_worker(config, main_sock, ops_sock))


def configure_logging(config: GatewayConfig) -> None:
    """Our and uvicorn's loggers to stderr at the configured level (the access log has its own
    stream)."""
    logging.basicConfig(
        level=config.logging.level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    # httpx logs every upstream and JWKS request at INFO: the access log already has them.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))


def _worker_main(config_path: str, main_sock: socket.socket, ops_sock: socket.socket) -> None:
    config = load_config(config_path)  # checked by the supervisor already
    configure_logging(config)
    sys.exit(_run_loop(config, main_sock, ops_sock))


class _Supervisor:
    """Starts ``workers`` spawned processes on the shared sockets, restarts one that dies, and
    on SIGTERM/SIGINT forwards SIGTERM and waits for all of them."""

    def __init__(
        self, config: GatewayConfig, workers: int, sockets: tuple[socket.socket, socket.socket]
    ) -> None:
        self.config = config
        self.workers = workers
        self.sockets = sockets
        self.context = multiprocessing.get_context("spawn")
        self.processes: list[Any] = []
        self.started: dict[int, float] = {}
        self.stopping = False
        self.stopped_at = math.inf

    def _start(self) -> Any:
        process = self.context.Process(
            target=_worker_main, args=(self.config.file, *self.sockets), name="gatekeeper-worker"
        )
        process.start()
        assert process.pid is not None
        self.started[process.pid] = time.monotonic()
        return process

    def _stop(self, sig: int, frame: Any) -> None:
        if not self.stopping:
            self.stopped_at = time.monotonic()
        self.stopping = True
        for process in self.processes:
            if process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        # No restarts from now on: drop our copies of the listening sockets, so that once the
        # workers close theirs new connections are refused rather than left in the backlog.
        for sock in self.sockets:
            sock.close()

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        failed = False
        try:
            self.processes = [self._start() for _ in range(self.workers)]
            while any(process.is_alive() for process in self.processes):
                wait([process.sentinel for process in self.processes if process.is_alive()], timeout=0.5)
                if time.monotonic() > self.stopped_at + self.config.server.shutdown_timeout + KILL_GRACE:
                    # A worker that outlives its own drain bound is stuck: end it.
                    for process in self.processes:
                        if process.is_alive():
                            logger.error("worker %d did not stop in time: killing it", process.pid)
                            process.kill()
                            failed = True
                for index, process in enumerate(self.processes):
                    if process.is_alive() or process.exitcode is None:
                        continue
                    if process.pid in self.started:
                        mark_process_dead(process.pid)
                        board = os.environ.get(WORKERS_DIR_ENV)
                        if board:
                            forget(Path(board), process.pid)  # it no longer counts as ready
                        lifetime = time.monotonic() - self.started.pop(process.pid)
                        if self.stopping:
                            # -SIGTERM: our signal reached a worker still starting (no handler
                            # yet, so nothing in flight either); anything else is a failure.
                            if process.exitcode not in (0, -signal.SIGTERM):
                                logger.error("worker %d exited with %s", process.pid, process.exitcode)
                                failed = True
                            continue
                        if lifetime < MIN_WORKER_LIFETIME or process.exitcode in STARTUP_FAILURES:
                            logger.error(
                                "worker %d exited with %s at startup; stopping", process.pid, process.exitcode
                            )
                            failed = True
                            self._stop(signal.SIGTERM, None)
                            continue
                        logger.warning(
                            "worker %d exited with %s; starting another", process.pid, process.exitcode
                        )
                        self.processes[index] = self._start()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 1 if failed else 0


def serve(config: GatewayConfig, *, workers: int | None = None) -> int:
    """Run the gateway for ``config`` until SIGTERM/SIGINT; the exit code (0 after a drain)."""
    configure_logging(config)
    count = workers or config.server.workers
    try:
        main_sock = bind(config.server.listen)
    except OSError as exc:
        print(f"gatekeeper serve: cannot listen on {config.server.listen}: {exc.strerror}", file=sys.stderr)
        return 1
    try:
        ops_sock = bind(config.server.ops_listen)
    except OSError as exc:
        main_sock.close()
        print(
            f"gatekeeper serve: cannot listen on {config.server.ops_listen}: {exc.strerror}", file=sys.stderr
        )
        return 1
    logger.info(
        "serving on %s (ops on %s), %d worker(s)",
        config.server.listen,
        config.server.ops_listen,
        count,
    )
    try:
        if count == 1:
            os.environ.pop(WORKERS_DIR_ENV, None)  # one process: /readyz is about itself
            return _run_loop(config, main_sock, ops_sock)
        own_dir = MULTIPROC_ENV not in os.environ
        if own_dir:
            os.environ[MULTIPROC_ENV] = tempfile.mkdtemp(prefix="gatekeeper-metrics-")
        # Inherited by the spawned workers: where each says whether it is ready, and how many.
        os.environ[WORKERS_DIR_ENV] = tempfile.mkdtemp(prefix="gatekeeper-workers-")
        os.environ[WORKERS_COUNT_ENV] = str(count)
        try:
            return _Supervisor(config, count, (main_sock, ops_sock)).run()
        finally:
            shutil.rmtree(Path(os.environ.pop(WORKERS_DIR_ENV)), ignore_errors=True)
            os.environ.pop(WORKERS_COUNT_ENV, None)
            if own_dir:
                shutil.rmtree(Path(os.environ.pop(MULTIPROC_ENV)), ignore_errors=True)
    finally:
        main_sock.close()
        ops_sock.close()
