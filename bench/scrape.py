"""Scraping ``/metrics`` (issue 16): ours against prometheus_client's own plain path.

Why: a scrape must cost the same at 10 or 100k tenants and must never slow a pass.
Ours serves families built once per pass from an immutable snapshot (``metrics.Board``)
through a custom collector; the lean baseline is what a user of the library would
write — ``Gauge``/``Counter``/``Histogram`` objects in a plain ``CollectorRegistry``
holding the same samples, exposed with ``generate_latest`` or the library's own
``start_http_server``. Also measured: ``gather`` (the registry read that feeds the
snapshot: in full at start-up, against the bare SQL it needs; then after each pass,
reading only new events, against the no-op pass it follows), and a no-op pass while
another process scrapes the endpoint every second (and, as a stress test, every 20 ms)
against the same pass unscraped.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    start_http_server,
)

from bench import fleets
from bench.timing import Contender, Row, measure, median
from reconciler import engine
from reconciler.health import Endpoint
from reconciler.metrics import (
    PASS_BUCKETS,
    Board,
    DaemonFacts,
    FleetMetrics,
    Targets,
    gather,
    registry_for,
)

SCRAPES = 200  # per timed run
SCRAPER = """
import sys, time, urllib.request
url, pause = sys.argv[1], float(sys.argv[2])
first = True
while True:
    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
    if first:
        print("scraped", flush=True)
        first = False
    time.sleep(pause)
"""
# seconds between scrapes while a pass runs, and the slowdown allowed: Prometheus scrapes
# every 15 s by default; 1 s is an eager setting, 0.02 s a stress test (no target: on 2
# shared cores the scraping process itself competes with the pass for CPU)
HAMMER: tuple[tuple[float, float | None], ...] = ((1.0, 1.1), (0.02, None))


def plain_registry(f: FleetMetrics, build: dict[str, str]) -> CollectorRegistry:
    """The same samples through prometheus_client's standard metric objects."""
    reg = CollectorRegistry()
    p = "tenant_reconciler_"
    Info(p + "build", "b", registry=reg).info(build)
    tenants = Gauge(p + "tenants", "t", ["region", "status", "schema_version"], registry=reg)
    for (region, status, version), n in f.tenants.items():
        tenants.labels(region, status, str(version)).set(n)
    actions = Counter(p + "actions", "a", ["action", "outcome"], registry=reg)
    for (action, outcome), n in f.actions.items():
        actions.labels(action, outcome).inc(n)
    hist = Histogram(p + "pass_duration_seconds", "d", buckets=PASS_BUCKETS, registry=reg)
    for bound, n in zip((*PASS_BUCKETS, float("inf")), f.passes.counts, strict=True):
        for _ in range(n):
            hist.observe(bound if bound != float("inf") else 1e9)
    for name, v in (("last_successful_pass_timestamp_seconds", f.last_pass_end or 0),
                    ("declared_tenants", f.declared), ("rollout_tenants_at_target",
                                                       f.at_target),
                    ("rollout_progress_ratio", 1.0), ("rollout_target_schema_version",
                                                      f.target),
                    ("rollout_halted", 0), ("registry_size_bytes", f.registry_bytes),
                    ("desired_state_valid", 1), ("git_pull_ok", 1), ("interval_seconds", 60),
                    ("last_pass_timestamp_seconds", 1), ("last_pass_success", 1),
                    ("pass_in_progress", 0)):
        Gauge(p + name, "g", registry=reg).set(v)
    Info(p + "desired_state", "r", registry=reg).info({"revision": f.revision[:19]})
    Counter(p + "passes", "p", ["result"], registry=reg).labels("completed").inc()
    return reg


def bare_sql(central: Path) -> None:
    import sqlite3
    conn = sqlite3.connect(f"{central.as_uri()}?mode=ro", uri=True)
    try:
        conn.execute("SELECT region, status, schema_version, COUNT(*) FROM tenants "
                     "GROUP BY 1, 2, 3").fetchall()
        conn.execute("SELECT name, schema_version, status FROM tenants").fetchall()
        conn.execute("SELECT action, outcome, COUNT(*), MAX(id) FROM events WHERE id > 0 "
                     "GROUP BY 1, 2").fetchall()
    finally:
        conn.close()


def fetch_many(url: str, n: int) -> None:
    for _ in range(n):
        with urllib.request.urlopen(url, timeout=10) as r:
            r.read()


def run(size: int, repeats: int, root: Path) -> list[Row]:
    fleet = fleets.get(fleets.FleetSpec(size), root)
    inputs = engine.load(fleet.config)
    per = f"{size // 1000}k" if size >= 1000 else str(size)
    facts = DaemonFacts(60.0, True, True, time.time(), True, {"completed": 1}, None, {})
    fm = gather(inputs.desired, inputs.catalog, inputs.revision)
    board = Board()
    board.publish(fm, facts)
    ours_reg = registry_for(board)
    plain = plain_registry(fm, board.build)
    rows: list[Row] = []
    t = measure([Contender("ours", lambda: [generate_latest(ours_reg) for _ in range(SCRAPES)]),
                 Contender("plain", lambda: [generate_latest(plain) for _ in range(SCRAPES)])],
                repeats)
    rows.append(Row(f"scrape ×{SCRAPES}, {per} tenants, generate_latest",
                    "snapshot collector (families built per pass)", median(t["ours"]),
                    "plain Gauge/Counter/Histogram registry", median(t["plain"]),
                    note=f"{len(generate_latest(ours_reg))} bytes per scrape"))

    endpoint = Endpoint("127.0.0.1:0", board, lambda: inputs.desired.settings.central).start()
    server, thread = start_http_server(0, "127.0.0.1", registry=plain)
    try:
        ours_url = endpoint.url + "/metrics"
        plain_url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        t = measure([Contender("ours", partial(fetch_many, ours_url, SCRAPES)),
                     Contender("plain", partial(fetch_many, plain_url, SCRAPES))], repeats)
        rows.append(Row(f"scrape ×{SCRAPES}, {per} tenants, over HTTP",
                        "reconcile's /metrics (ThreadingHTTPServer)", median(t["ours"]),
                        "prometheus_client.start_http_server", median(t["plain"])))

        t = measure([Contender("gather", lambda: gather(inputs.desired, inputs.catalog,
                                                         inputs.revision)),
                     Contender("sql", partial(bare_sql, inputs.desired.settings.central))],
                    repeats)
        rows.append(Row(f"first snapshot (start-up), {per} tenants",
                        "metrics.gather, every event counted", median(t["gather"]),
                        "its three SQL queries, bare", median(t["sql"])))
        goal = Targets.of(inputs.desired, inputs.catalog.latest)  # the daemon keeps one
        t = measure([Contender("gather", lambda: gather(inputs.desired, inputs.catalog,
                                                         inputs.revision, fm, None, goal)),
                     Contender("pass", lambda: engine.preview(inputs))], repeats)
        rows.append(Row(f"per-pass snapshot, {per} tenants", "metrics.gather after a pass "
                        "(new events only)", median(t["gather"]), "the no-op pass itself "
                        "(engine.preview)", median(t["pass"])))

        running: list[subprocess.Popen[str]] = []

        def no_scraper() -> None:
            for p in running:
                p.terminate()
                p.wait()
            running.clear()

        def scraper(pause: float) -> None:
            """Untimed: start the scraping process (another process, as Prometheus is)
            and wait for its first scrape, so its start-up is not in the timing."""
            no_scraper()
            p = subprocess.Popen([sys.executable, "-c", SCRAPER, ours_url, str(pause)],
                                 stdout=subprocess.PIPE, text=True)
            running.append(p)
            assert p.stdout is not None and p.stdout.readline() == "scraped\n"
            time.sleep(0.05)  # let the server thread finish that request

        try:
            for pause, limit in HAMMER:
                t = measure([Contender("scraped", lambda: engine.preview(inputs),
                                       partial(scraper, pause)),
                             Contender("alone", lambda: engine.preview(inputs), no_scraper)],
                            repeats)
                rows.append(Row(f"no-op pass, {per} tenants, scraped every {pause:g} s",
                                "engine.preview while /metrics is scraped",
                                median(t["scraped"]), "engine.preview, no scrapes",
                                median(t["alone"]), f"≤ {limit:g}×" if limit else "", limit))
        finally:
            no_scraper()
    finally:
        endpoint.close()
        server.shutdown()
        server.server_close()
        thread.join(5)
    return rows
