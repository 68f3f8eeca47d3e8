"""A multi-tenant notes service: the smallest real application of ``reconciler.routing``.

Why it exists: it shows, end to end, how an application uses the registry the
reconciler keeps — each request's ``Host`` picks the tenant (``aaron.yoursaas.com`` →
``data/eu/aaron.db``), every query runs against that tenant's own file, and global
settings are read through the read-only ``central`` attachment. The end-to-end tests
run it as a real HTTP server. Standard library plus the router only.

Run it against a converged fleet (``reconcile`` first)::

    python examples/notes_app.py --central data/central.db --port 8000
    curl -H 'Host: aaron.yoursaas.com' localhost:8000/notes -d title=hello
    curl -H 'Host: aaron.yoursaas.com' localhost:8000/notes

Endpoints (JSON in and out; form-encoded bodies work too):
    GET  /        the tenant, its region and schema, the support address (central)
    GET  /notes   this tenant's notes, newest first
    POST /notes   add a note: title (required), body; refused with 403 once the
                  tenant holds ``plan_limit_notes`` notes (a global setting)

Status codes: 400 a Host that is not a hostname; 404 no tenant at that host (or an
unknown path); 503 the tenant is relocating, missing, archived, suspended, failed,
below this application's schema, was relocated while the request ran (its write was
rolled back), or stayed write-locked past the busy timeout (with ``Retry-After``);
405 wrong method. On a multi-host fleet (issue 15): 307 to the endpoint of the region
whose host holds the tenant (``Location``: that endpoint + this path; ``TenantElsewhere``),
503 when it cannot tell (another region's registry view is missing or stale).

Invariants: one tenant connection per request, closed when the request ends; writes
go through ``begin_write()`` and the connection's confirmed commit, so a write racing
a relocation is rolled back rather than left in the retired file; the application
never builds a path itself; nothing it does can write to the registry.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import sys
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from reconciler.routing import (
    Router,
    RoutingError,
    TenantConnection,
    TenantElsewhere,
    TenantUnavailable,
)

#: the notes table with ``title`` and ``body`` arrives with migration 0001
MIN_SCHEMA = 1
MAX_BODY = 64 * 1024

StartResponse = Callable[..., Any]
Environ = dict[str, Any]


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_REASONS = {200: "OK", 201: "Created", 307: "Temporary Redirect", 400: "Bad Request",
            403: "Forbidden",
            404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


def _setting(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM central.settings WHERE key = ?", (key,)).fetchone()
    return None if row is None else str(row[0])


def _read_form(environ: Environ) -> dict[str, str]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError as exc:
        raise HTTPError(400, "bad Content-Length") from exc
    if length > MAX_BODY:
        raise HTTPError(413, f"body larger than {MAX_BODY} bytes")
    raw = environ["wsgi.input"].read(length) if length > 0 else b""
    text = raw.decode("utf-8", errors="replace")
    if environ.get("CONTENT_TYPE", "").startswith("application/json"):
        try:
            data = json.loads(text or "{}")
        except json.JSONDecodeError as exc:
            raise HTTPError(400, f"invalid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise HTTPError(400, "send a JSON object")
        return {str(k): str(v) for k, v in data.items()}
    return {k: v[0] for k, v in parse_qs(text).items()}


def _index(db: TenantConnection) -> tuple[int, Any]:
    count = db.execute("SELECT count(*) FROM notes").fetchone()[0]
    t = db.tenant
    return 200, {"tenant": t.name, "region": t.region, "schema_version": t.schema_version,
                 "notes": count, "support_email": _setting(db, "support_email")}


def _list(db: TenantConnection) -> tuple[int, Any]:
    rows = db.execute("SELECT id, title, body, created_at FROM notes "
                      "ORDER BY created_at DESC, id DESC").fetchall()
    return 200, {"tenant": db.tenant.name,
                 "notes": [{"id": r[0], "title": r[1], "body": r[2], "created_at": r[3]}
                           for r in rows]}


def _add(db: TenantConnection, form: dict[str, str]) -> tuple[int, Any]:
    title = form.get("title", "").strip()
    if not title:
        raise HTTPError(400, "a note needs a title (title=...)")
    limit = _setting(db, "plan_limit_notes")
    # the write lock first (the count and the insert see the same notes, so concurrent
    # requests cannot overshoot the plan limit), and the route confirmed under it
    db.begin_write()
    count = db.execute("SELECT count(*) FROM notes").fetchone()[0]
    if limit is not None and limit.isdigit() and count >= int(limit):
        raise HTTPError(403, f"this plan holds at most {limit} notes")
    cur = db.execute("INSERT INTO notes (title, body) VALUES (?, ?)",
                     (title, form.get("body", "")))
    return 201, {"tenant": db.tenant.name, "id": cur.lastrowid, "title": title}


def make_app(router: Router, min_schema: int = MIN_SCHEMA
             ) -> Callable[[Environ, StartResponse], Iterable[bytes]]:
    """The WSGI application, routing every request through ``router``."""

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        headers: list[tuple[str, str]] = []
        try:
            method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
            if path not in ("/", "/notes"):
                raise HTTPError(404, f"no such page: {path}")
            allowed = ("GET", "POST") if path == "/notes" else ("GET",)
            if method not in allowed:
                headers.append(("Allow", ", ".join(allowed)))
                raise HTTPError(405, f"{method} is not allowed here")
            form = _read_form(environ) if method == "POST" else {}
            with router.connect(environ.get("HTTP_HOST", ""), min_schema) as db:
                if path == "/":
                    status, body = _index(db)
                elif method == "GET":
                    status, body = _list(db)
                else:
                    status, body = _add(db, form)
        except TenantElsewhere as exc:  # another region's host serves it: send the client
            if exc.endpoint is None:
                headers.append(("Retry-After", "60"))
                status, body = 503, {"error": str(exc), "region": exc.region}
            else:
                target = exc.endpoint + environ.get("PATH_INFO", "/")
                if environ.get("QUERY_STRING"):
                    target += "?" + environ["QUERY_STRING"]
                headers.append(("Location", target))  # 307: the method and body are kept
                status, body = exc.http_status, {"error": str(exc), "region": exc.region,
                                                 "location": target}
        except TenantUnavailable as exc:
            # relocating, or cannot tell yet ("unknown": a region's view is stale): soon
            headers.append(("Retry-After", "1" if exc.tenant.status in ("relocating", "unknown")
                            else "60"))
            status, body = exc.http_status, {"error": str(exc), "reason": exc.reason}
        except RoutingError as exc:
            status, body = exc.http_status, {"error": str(exc)}
        except HTTPError as exc:
            status, body = exc.status, {"error": exc.message}
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            # the tenant stayed write-locked beyond the busy timeout (a long migration
            # or relocation step): ask the client to come back rather than fail
            headers.append(("Retry-After", "1"))
            status, body = 503, {"error": f"tenant busy: {exc}", "reason": "busy"}
        payload = json.dumps(body, ensure_ascii=False).encode() + b"\n"
        start_response(f"{status} {_REASONS.get(status, '')}",
                       [("Content-Type", "application/json; charset=utf-8"),
                        ("Content-Length", str(len(payload))), *headers])
        return [payload]

    return app


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Per-tenant notes, routed by Host header.")
    p.add_argument("--central", default="data/central.db",
                   help="the registry (settings.central of tenants.yaml; default %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    p.add_argument("--quiet", action="store_true", help="do not log each request")
    p.add_argument("--stale-after", type=float, default=30.0, metavar="SECONDS",
                   help="another region's registry view older than this cannot tell where "
                   "a tenant lives (settings.stale_after; default %(default)s)")
    args = p.parse_args(argv)
    try:
        router = Router(args.central, stale_after=args.stale_after)
    except RoutingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    handler = QuietHandler if args.quiet else WSGIRequestHandler
    with make_server(args.host, args.port, make_app(router), ThreadingWSGIServer,
                     handler) as server:
        print(f"serving notes on http://{args.host}:{server.server_port}/ "
              f"(registry {router.central_path})", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    router.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
