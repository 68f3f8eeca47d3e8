"""The daemon's HTTP endpoint: ``/metrics``, ``/livez`` and ``/readyz``.

Why: Prometheus scrapes ``/metrics``; Kubernetes-style probes and load balancers ask
``/livez`` (is the process alive?) and ``/readyz`` (is it doing its job?). Served by
the standard library's ``ThreadingHTTPServer`` in a daemon thread: a handful of
requests a minute needs no web framework, and each request gets its own thread so a
slow client cannot stall another (nor a pass, which runs in the main thread).

Invariants:
* bound to the address given and nothing else: ``PORT`` or ``:PORT`` means
  127.0.0.1; all interfaces only when asked (``0.0.0.0:PORT``, ``[::]:PORT``);
* ``/metrics`` serialises the families the daemon last published (``metrics.Board``):
  no database access, no lock shared with a pass;
* ``/readyz`` is ready while the registry opens read-only and the last pass that ran
  to completion ended at most ``READY_FACTOR`` × ``settings.interval`` ago (or one is
  running now); ``?verbose`` lists every check with why it failed, in the
  ``[+]name ok`` / ``[-]name failed: why`` form of Kubernetes' health endpoints.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from reconciler.errors import PermanentError, ReconcileError
from reconciler.metrics import Board, Published, registry_for
from reconciler.registry import Registry

READY_FACTOR = 3.0  # a pass should complete every interval; allow two to be missed
DEFAULT_HOST = "127.0.0.1"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    why: str = ""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[V6]:PORT``, ``:PORT`` or ``PORT`` → (host, port); no host means
    127.0.0.1. Raises ``ValueError`` saying what to write."""
    value = text.strip()
    host, _, port_text = value.rpartition(":") if ":" in value else ("", "", value)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9464")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r} has no port number: write HOST:PORT, e.g. "
                         "127.0.0.1:9464") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: the port must be 0-65535")
    host = host or DEFAULT_HOST
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"{text!r}: write an IP address (e.g. 127.0.0.1:9464, or "
                             "0.0.0.0:9464 to listen on every interface)") from None
    return host, port


def readiness(published: Published, now: float, registry: Path | None) -> list[Check]:
    """The checks behind ``/readyz`` (``registry``: the path to open; None when no valid
    desired state was ever loaded, so the registry is not known)."""
    checks: list[Check] = []
    if registry is None:
        checks.append(Check("registry", False, "no valid desired state loaded yet, so the "
                            "registry is unknown"))
    else:
        try:
            with Registry.reading(registry) as reg:
                if reg is not None:
                    reg.version  # noqa: B018 - reads the header: proves the file opens
        except (ReconcileError, OSError, sqlite3.Error) as exc:
            checks.append(Check("registry", False, f"{registry} does not open: {exc}"))
        else:
            checks.append(Check("registry", True))
    daemon, fleet = published.daemon, published.fleet
    last = fleet.last_pass_end if fleet is not None else None
    if daemon is None:
        checks.append(Check("pass", False, "no pass has run yet"))
    elif daemon.pass_started is not None and (last is None or daemon.pass_started >= last):
        checks.append(Check("pass", True))  # one runs now
    elif last is None:
        checks.append(Check("pass", False, "no pass has run to completion yet"
                            + ("" if daemon.last_attempt_ok else " (the last attempt could "
                               "not run: see the log)")))
    else:
        limit = READY_FACTOR * daemon.interval
        age = now - last
        checks.append(Check("pass", age <= limit, "" if age <= limit else
                            f"the last pass that ran to completion ended {age:.0f}s ago, more "
                            f"than {READY_FACTOR:g} × interval ({limit:.0f}s)"))
    return checks


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/metrics":
            encoder, content_type = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(self.server.registry), content_type)
        elif url.path == "/livez":
            self._send(200, b"ok\n")
        elif url.path == "/readyz":
            checks = self.server.checks()
            ok = all(c.ok for c in checks)
            if "verbose" in parse_qs(url.query, keep_blank_values=True):
                lines = [f"[+]{c.name} ok" if c.ok else f"[-]{c.name} failed: {c.why}"
                         for c in checks]
                lines.append("readyz check passed" if ok else "readyz check failed")
                body = "\n".join(lines) + "\n"
            else:
                body = "ok\n" if ok else "not ready (ask /readyz?verbose for why)\n"
            self._send(200 if ok else 503, body.encode())
        else:
            self._send(404, b"not found: try /metrics, /livez or /readyz\n")

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
              ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes every 15 s would flood the journal; failures show in Prometheus


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], registry: CollectorRegistry,
                 checks: Callable[[], list[Check]]) -> None:
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.registry = registry
        self.checks = checks
        super().__init__(address, _Handler)


class Endpoint:
    """The HTTP server in a thread of its own; ``close`` stops it."""

    def __init__(self, address: str, board: Board,
                 registry_path: Callable[[], Path | None]) -> None:
        """Raises ``PermanentError`` when the address is malformed or cannot be bound."""
        try:
            host, port = parse_address(address)
        except ValueError as exc:
            raise PermanentError(f"--metrics-addr {exc}") from None
        self.board = board
        try:
            self._server = _Server((host, port), registry_for(board), lambda: readiness(
                board.current, time.time(), registry_path()))
        except OSError as exc:
            raise PermanentError(f"--metrics-addr {address}: cannot listen there: "
                                 f"{exc.strerror or exc}") from None
        self.host, self.port = host, int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 1.0}, name="metrics-http",
                                        daemon=True)

    def start(self) -> Endpoint:
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._server.shutdown()
        self._server.server_close()
