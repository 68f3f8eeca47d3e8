"""The notes example as a real HTTP server on 127.0.0.1, routed by real Host headers,
against fleets converged by the real ``reconcile`` CLI — and ``reconcile route``.

The server runs in its own process under an audit hook that logs every
``sqlite3.connect`` it makes, so "never opens a wrong file" is checked directly, not
only inferred from file digests.
"""

from __future__ import annotations

import http.client
import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from tests.conftest import REPO, Fleet

APP = REPO / "examples" / "notes_app.py"

# Runs the example app with an audit hook appending each database it opens to a log.
AUDITED = """
import runpy, sys, threading
log, lock = open(sys.argv[1], "a", buffering=1), threading.Lock()
def hook(event, args):
    if event == "sqlite3.connect":
        with lock:
            log.write(str(args[0]) + "\\n")
sys.addaudithook(hook)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


class NotesServer:
    def __init__(self, fleet: Fleet, workdir: Path, *args: str) -> None:
        self.fleet = fleet
        self.audit = workdir / "opened.log"
        self.stderr = (workdir / "server.err").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", AUDITED, str(self.audit), str(APP),
             "--central", str(fleet.central), "--port", "0", "--quiet", *args],
            stdout=subprocess.PIPE, stderr=self.stderr, text=True)
        assert self.proc.stdout is not None
        banner = self.proc.stdout.readline()
        assert "serving notes on http://127.0.0.1:" in banner, (banner, self.errors())
        self.port = int(banner.split("127.0.0.1:")[1].split("/")[0])
        self._seen = 0

    def errors(self) -> str:
        self.stderr.flush()
        return Path(self.stderr.name).read_text()

    def request(self, host: str | bytes, method: str = "GET", path: str = "/notes",
                **form: str) -> tuple[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host)
            body = json.dumps(form).encode() if method == "POST" else b""
            if method == "POST":
                conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            conn.close()

    def add(self, host: str | bytes, title: str) -> tuple[int, dict[str, Any]]:
        return self.request(host, "POST", title=title)

    def titles(self, host: str) -> list[str]:
        status, body = self.request(host)
        assert status == 200, body
        return sorted(n["title"] for n in body["notes"])

    def opened(self) -> list[str]:
        """Tenant files opened since the last call (the registry excluded)."""
        lines = self.audit.read_text().splitlines() if self.audit.exists() else []
        new, self._seen = lines[self._seen:], len(lines)
        paths = [unquote(urlsplit(x).path) if x.startswith("file:") else x for x in new]
        return [p for p in paths if p != str(self.fleet.central)]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.stderr.close()


@pytest.fixture
def shipped(fleet: Fleet) -> Fleet:
    """The repository's own tenants.yaml, converged by the real CLI."""
    shutil.copy(REPO / "tenants.yaml", fleet.config)
    result = fleet.run("apply")
    assert result.returncode == 0, result.stdout + result.stderr
    return fleet


@pytest.fixture
def server(shipped: Fleet, tmp_path: Path) -> Iterator[NotesServer]:
    s = NotesServer(shipped, tmp_path)
    yield s
    s.stop()


def notes_in(fleet: Fleet, path: Path) -> list[str]:
    return sorted(r[0] for r in fleet.rows(path, "SELECT title FROM notes"))


def edit_config(fleet: Fleet, change: Any) -> None:
    config = yaml.safe_load(fleet.config.read_text())
    change(config)
    fleet.write_config(config)
    result = fleet.run("apply")
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- isolation


def test_notes_written_through_one_tenants_host_are_never_visible_through_anothers(
        server: NotesServer, shipped: Fleet) -> None:
    for i in range(3):
        assert server.add("aaron.yoursaas.com", f"aaron-{i}")[0] == 201
        assert server.add("acme.example.com", f"acme-{i}")[0] == 201
    assert server.add("acme.yoursaas.com", "acme-via-subdomain")[0] == 201

    aaron = [f"aaron-{i}" for i in range(3)]
    acme = sorted([f"acme-{i}" for i in range(3)] + ["acme-via-subdomain"])
    assert server.titles("aaron.yoursaas.com") == aaron
    assert server.titles("acme.example.com") == acme
    assert server.titles("acme.yoursaas.com") == acme
    assert server.titles("umbrella.yoursaas.com") == []
    # and on disk: each file holds its own tenant's notes and nothing else
    assert notes_in(shipped, shipped.path("aaron", "eu")) == aaron
    assert notes_in(shipped, shipped.path("acme", "us")) == acme
    for name, region in (("globex", "eu"), ("initech", "us"), ("umbrella", "eu")):
        assert notes_in(shipped, shipped.path(name, region)) == []


def test_the_index_reads_global_settings_through_central(server: NotesServer,
                                                         shipped: Fleet) -> None:
    status, body = server.request("globex.yoursaas.com", path="/")
    assert status == 200
    assert body == {"tenant": "globex", "region": "eu", "schema_version": 2, "notes": 0,
                    "support_email": "help@yoursaas.com"}
    assert server.opened() == [str(shipped.path("globex", "eu"))]


def test_the_plan_limit_from_central_settings_caps_notes_per_tenant(
        server: NotesServer, shipped: Fleet) -> None:
    edit_config(shipped, lambda c: c["globals"].update(plan_limit_notes=2))
    assert [server.add("aaron.yoursaas.com", f"n{i}")[0] for i in range(3)] == [201, 201, 403]
    assert server.add("acme.example.com", "other tenant, own count")[0] == 201
    assert notes_in(shipped, shipped.path("aaron", "eu")) == ["n0", "n1"]


# --------------------------------------------------------------------------- crafted hosts


@pytest.mark.parametrize("host", [
    "AARON.YOURSAAS.COM", "aaron.yoursaas.com:8080", "aaron.yoursaas.com.",
    "Aaron.YourSaaS.com.:443",
])
def test_case_port_and_trailing_dot_reach_the_same_tenant_and_only_its_file(
        server: NotesServer, shipped: Fleet, host: str) -> None:
    status, body = server.add(host, "hello")
    assert (status, body["tenant"]) == (201, "aaron")
    assert server.opened() == [str(shipped.path("aaron", "eu"))]
    assert notes_in(shipped, shipped.path("aaron", "eu")) == ["hello"]


CRAFTED: list[tuple[str | bytes, int]] = [
    ("../eu/aaron", 400), ("../../data/central.db", 400), ("..", 400),
    ("%2e%2e", 400), ("%2e%2e.yoursaas.com", 400), ("aaron.yoursaas.com%2f..%2facme", 400),
    ("aaron.yoursaas.com/../acme", 400), ("", 400), ("a" * 300, 400),
    ("aaron." + "a" * 300 + ".com", 400), ("aaron..yoursaas.com", 400),
    ("aaron.yoursaas.com..", 400), ("aaron.yoursaas.com:http", 400), ("[::1]:80", 400),
    ("aaron.yoursaas.com@acme.example.com", 400), ("aaron yoursaas.com", 400),
    ("ааron.yoursaas.com".encode(), 400),  # Cyrillic "а", sent as UTF-8
    ("aaron.yoursäas.com".encode("latin-1"), 400),
    ("xn--ron-0ma.yoursaas.com", 404),  # punycode: a valid name no tenant owns
    ("aaron", 404), ("yoursaas.com", 404), ("eu.yoursaas.com", 404),
    ("central.yoursaas.com", 404), ("aaron.yoursaas.com.evil.com", 404),
    ("localhost", 404), ("127.0.0.1", 404),
]


def test_crafted_hosts_never_open_a_file_and_get_400_or_404(server: NotesServer,
                                                          shipped: Fleet) -> None:
    before = shipped.tenant_digests()
    files = sorted(p for p in shipped.data.rglob("*") if p.is_file())
    got = {}
    for host, _ in CRAFTED:
        status, body = server.add(host, "should never be stored")
        got[host] = status
        assert "error" in body
        assert server.opened() == [], host
    assert got == dict(CRAFTED)
    assert shipped.tenant_digests() == before
    assert sorted(p for p in shipped.data.rglob("*") if p.is_file()) == files


def test_a_name_that_exists_only_as_an_archived_tenant_is_never_served(
        server: NotesServer, shipped: Fleet) -> None:
    assert server.add("umbrella.yoursaas.com", "kept in the archive")[0] == 201

    def archive_umbrella(c: dict[str, Any]) -> None:
        c["settings"]["prune"] = "archive"
        del c["tenants"]["umbrella"]

    edit_config(shipped, archive_umbrella)  # the real reconciler archives it
    assert shipped.registry("SELECT status FROM tenants WHERE name = 'umbrella'") == \
        [("archived",)]
    archive = shipped.data / "_archive"
    digest = shipped.digests(archive)
    assert len([k for k in digest if k.startswith("umbrella-")]) == 1, digest
    server.opened()
    for host in ("umbrella.yoursaas.com", "UMBRELLA.yoursaas.com.:80"):
        status, body = server.add(host, "after archiving")
        assert status == 404, body
    assert server.opened() == []
    assert shipped.digests(archive) == digest
    assert not shipped.path("umbrella", "eu").exists()  # never recreated empty
    route = shipped.run("route", "umbrella.yoursaas.com")
    assert route.returncode == 1 and "no tenant is routed" in route.stderr


def test_a_suspended_tenant_gets_503_and_its_file_is_not_touched(
        server: NotesServer, shipped: Fleet) -> None:
    assert server.add("umbrella.yoursaas.com", "before")[0] == 201
    edit_config(shipped, lambda c: c["tenants"]["umbrella"].update(suspended=True))
    digest = shipped.digests(shipped.data / "eu")
    server.opened()
    status, body = server.add("umbrella.yoursaas.com", "while suspended")
    assert status == 503 and body["reason"].startswith("suspended")
    assert server.opened() == []
    assert shipped.digests(shipped.data / "eu") == digest


def test_a_tenant_whose_file_vanished_gets_503_and_no_new_empty_file(
        server: NotesServer, shipped: Fleet) -> None:
    path = shipped.path("initech", "us")
    path.rename(path.with_name("moved-away.db"))
    status, body = server.add("initech.yoursaas.com", "into the void")
    assert status == 503 and "cannot be opened" in body["reason"]
    assert not path.exists()


# --------------------------------------------------------------------------- registry changes


def test_registry_changes_are_seen_on_the_next_request(server: NotesServer,
                                                       shipped: Fleet) -> None:
    assert server.add("newco.yoursaas.com", "too early")[0] == 404
    assert server.add("acme.example.com", "routed")[0] == 201  # both now cached

    def change(c: dict[str, Any]) -> None:
        c["tenants"]["newco"] = {"region": "us"}
        c["tenants"]["acme"].pop("domains")
        c["globals"]["support_email"] = "support@yoursaas.com"

    edit_config(shipped, change)
    assert server.add("newco.yoursaas.com", "first note")[0] == 201
    assert notes_in(shipped, shipped.path("newco", "us")) == ["first note"]
    assert server.add("acme.example.com", "domain is gone")[0] == 404
    assert server.titles("acme.yoursaas.com") == ["routed"]
    assert server.request("acme.yoursaas.com", path="/")[1]["support_email"] == \
        "support@yoursaas.com"


def test_an_application_needing_a_newer_schema_gets_503_until_the_tenant_is_migrated(
        shipped: Fleet, tmp_path: Path) -> None:
    # globex is pinned at v2; an application release that needs v3 must not run on it
    conn_script = ("import sys; from reconciler.routing import Router\n"
                   "from reconciler.routing import TenantUnavailable\n"
                   "r = Router(sys.argv[1])\n"
                   "try:\n    r.connect('globex.yoursaas.com', min_schema=3).close()\n"
                   "except TenantUnavailable as e:\n    print(e.reason); sys.exit(3)\n")
    run = [sys.executable, "-c", conn_script, str(shipped.central)]
    refused = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 3 and "schema too old" in refused.stdout
    edit_config(shipped, lambda c: c["tenants"]["globex"].pop("schema"))
    allowed = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr


# --------------------------------------------------------------------------- reconcile route


def test_route_prints_tenant_file_region_version_and_status(shipped: Fleet) -> None:
    result = shipped.run("route", "Aaron.YourSaaS.com:443")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "host", "aaron.yoursaas.com", "tenant", "aaron",
        "file", str(shipped.path("aaron", "eu")), "region", "eu",
        "version", "v3", "status", "active"]
    as_json = json.loads(shipped.run("route", "--json", "acme.example.com").stdout)
    assert as_json == {"host": "acme.example.com", "tenant": "acme",
                       "file": str(shipped.path("acme", "us")), "region": "us",
                       "schema_version": 3, "status": "active", "available": True,
                       "reason": None}


@pytest.mark.parametrize(("host", "args", "message"), [
    ("../eu/aaron", (), "not a valid hostname"),
    ("nobody.yoursaas.com", (), "no tenant is routed at nobody.yoursaas.com"),
    ("globex.yoursaas.com", ("--min-schema", "3"), "schema too old"),
])
def test_route_exits_1_with_the_reason(shipped: Fleet, host: str, args: tuple[str, ...],
                                       message: str) -> None:
    result = shipped.run("route", host, *args)
    assert result.returncode == 1
    assert message in result.stderr


def test_route_reports_a_vanished_file_without_recreating_it(shipped: Fleet) -> None:
    path = shipped.path("aaron", "eu")
    path.unlink()
    result = shipped.run("route", "aaron.yoursaas.com")
    assert result.returncode == 1
    assert f"file     {path}" in result.stdout
    assert "cannot be opened" in result.stderr
    assert not path.exists()


# --------------------------------------------------------------------------- relocation


class Traffic:
    """Threads posting notes to one host as fast as the server answers."""

    def __init__(self, server: NotesServer, host: str, threads: int = 4) -> None:
        self.server, self.host = server, host
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results: list[tuple[float, str, int, dict[str, Any]]] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]
        for t in self.threads:
            t.start()

    def _run(self, worker: int) -> None:
        i = 0
        while not self.stop.is_set():
            title = f"w{worker}-{i}"
            status, body = self.server.add(self.host, title)
            with self.lock:
                self.results.append((time.monotonic(), title, status, body))
            i += 1

    def ok(self) -> int:
        with self.lock:
            return sum(1 for r in self.results if r[2] == 201)

    def wait_for(self, successes: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.ok() < successes:
            assert time.monotonic() < deadline, self.results[-5:]
            with self.lock:
                odd = [r for r in self.results if r[2] not in (201, 503)]
            assert not odd, odd[:5]
            time.sleep(0.01)

    def finish(self) -> list[tuple[float, str, int, dict[str, Any]]]:
        self.stop.set()
        for t in self.threads:
            t.join()
        return self.results


def relocate_under_traffic(fleet: Fleet, server: NotesServer, moves: list[str]) -> None:
    """Relocate aaron through ``moves`` (regions) while traffic posts notes to it."""
    live = fleet.path("aaron", "eu")
    conn = sqlite3.connect(live)  # a tenant with some data: the copy takes a moment
    conn.executemany("INSERT INTO users (email, display_name) VALUES (?, ?)",
                     [(f"user{i}@aaron.example", "x" * 200) for i in range(20_000)])
    conn.commit()
    conn.close()
    traffic = Traffic(server, "aaron.yoursaas.com")
    retired: dict[str, str] = {}
    windows = []
    try:
        for region in moves:
            traffic.wait_for(traffic.ok() + 20)
            config = yaml.safe_load(fleet.config.read_text())
            config["tenants"]["aaron"]["region"] = region
            config["globals"]["plan_limit_notes"] = 10**9  # the traffic is not the test
            fleet.write_config(config)
            started = time.monotonic()
            result = fleet.run("apply")
            windows.append((started, time.monotonic()))
            assert result.returncode == 0, result.stdout + result.stderr
            live = fleet.path("aaron", region)
            assert fleet.registry("SELECT path, status FROM tenants WHERE name = 'aaron'") == \
                [(str(live), "active")]
            new = {k: v for k, v in fleet.digests(fleet.data / "_retired").items()
                   if k not in retired}
            assert any(k.endswith(".db") for k in new), fleet.digests()
            retired.update(new)
        traffic.wait_for(traffic.ok() + 20)  # and traffic goes on against the new file
    finally:
        results = traffic.finish()
        server.stop()

    assert {status for _, _, status, _ in results} <= {201, 503}, \
        [r for r in results if r[2] not in (201, 503)][:5]
    refused = [body for _, _, status, body in results if status == 503]
    expected = ("relocating", "its database file cannot be opened", "the tenant was relocated")
    assert all(b["reason"].startswith(expected) for b in refused), \
        [b for b in refused if not b["reason"].startswith(expected)][:5]
    print(f"{len(results)} requests, {len(refused)} refused with 503:",
          sorted({b["reason"][:40] for b in refused}))
    during = [r for r in results if any(a <= r[0] <= b for a, b in windows)]
    assert during, "no request overlapped a relocation"
    # every acknowledged write is in the live file ...
    stored = set(notes_in(fleet, live))
    acknowledged = {title for _, title, status, _ in results if status == 201}
    assert acknowledged <= stored, sorted(acknowledged - stored)[:10]
    # ... and none reached a retired file: each is byte-for-byte as it was retired,
    # and holds nothing the live file lacks
    assert {k: v for k, v in fleet.digests(fleet.data / "_retired").items()
            if k in retired} == retired
    for name in retired:
        if name.endswith(".db"):
            assert set(notes_in(fleet, fleet.data / "_retired" / name)) <= stored


def test_a_relocation_during_traffic_serves_the_live_file_or_503_and_never_the_retired_one(
        server: NotesServer, shipped: Fleet) -> None:
    relocate_under_traffic(shipped, server, ["us"])


@pytest.mark.slow
def test_repeated_relocations_under_traffic_lose_no_acknowledged_write(
        server: NotesServer, shipped: Fleet) -> None:
    relocate_under_traffic(shipped, server, ["us", "eu"] * 5)
