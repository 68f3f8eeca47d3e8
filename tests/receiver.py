"""Test helpers for issue 16: a real webhook receiver (stdlib HTTP server on 127.0.0.1)
and a scraper that parses /metrics with prometheus_client's own parser."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.parser import text_string_to_metric_families


class Receiver:
    """Records every POST; answers the codes in ``script`` first (e.g. [500]), then 200."""

    def __init__(self, script: list[int] | None = None) -> None:
        self.script = list(script or [])
        self.requests: list[tuple[int, Any]] = []  # (answered code, parsed JSON body)
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    code = receiver.script.pop(0) if receiver.script else 200
                    receiver.requests.append((code, json.loads(body)))
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def accepted(self) -> list[Any]:
        with self._lock:
            return [body for code, body in self.requests if code == 200]

    def events(self) -> list[str]:
        """The ``event`` of each accepted message (slack format)."""
        return [b["event"] for b in self.accepted()]

    def wait_for(self, event: str, timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for body in self.accepted():
                if body.get("event") == event:
                    return body
            time.sleep(0.05)
        raise AssertionError(f"no {event} message in {timeout}s; got {self.requests}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text: (name, sorted labels) → value."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float | None:
    """The sum of ``name``'s samples whose labels include ``labels`` (None if none)."""
    found = [v for (n, ls), v in samples(text).items()
             if n == name and all(dict(ls).get(k) == x for k, x in labels.items())]
    return sum(found) if found else None


def family_names(text: str) -> Iterator[str]:
    for family in text_string_to_metric_families(text):
        yield family.name
