"""Issue 16 end to end: a real ``reconcile daemon --metrics-addr`` scraped over HTTP, real
webhook receivers on 127.0.0.1, real signals, and a real Prometheus server."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Fleet
from tests.e2e.test_daemon import (
    PATIENCE,
    Daemon,
    config_text,
    eventually,
    git,
    gitops,
    registered,
)
from tests.e2e.test_daemon import start as start  # the fixture
from tests.receiver import Receiver, get, samples, value

M = "tenant_reconciler_"
UNIQUE_EMAIL = "CREATE UNIQUE INDEX users_email_ci ON users (lower(email));\n"
NAMES = ["a1", "a2", "a3", "a4"]


def launch(start: Callable[..., Daemon], fleet: Fleet, *args: str,
           env: dict[str, str] | None = None) -> Daemon:
    """The daemon with an endpoint on a port the OS picks; no NOTIFY_SOCKET (these tests
    read no sd_notify datagrams, and an unread socket would fill up and block it)."""
    return start(fleet, "--metrics-addr", "127.0.0.1:0", *args,
                 env={"NOTIFY_SOCKET": "", **(env or {})})


def url_of(d: Daemon, timeout: float = PATIENCE) -> str:
    """The endpoint's URL, from the daemon's log (it binds port 0: the OS picks one)."""
    def found() -> str | None:
        for e in d.log_events():
            if e.get("event", "").startswith("serving /metrics"):
                return str(e["url"])
        return None
    return str(eventually(found, timeout, "the endpoint is served"))


def scrape(url: str) -> str:
    code, text = get(url + "/metrics")
    assert code == 200, text
    return text


def until(url: str, check: Callable[[str], bool], what: str, timeout: float = PATIENCE) -> str:
    """Scrape until ``check`` holds; returns that exposition text."""
    return str(eventually(lambda: (lambda t: t if check(t) else None)(scrape(url)),
                          timeout, what))


def add_bad_data(fleet: Fleet, tenant: str, region: str = "eu") -> None:
    """Two users whose e-mails differ only by case: the unique-email migration fails."""
    conn = sqlite3.connect(fleet.path(tenant, region))
    conn.executemany("INSERT INTO users (email, display_name, created_at) VALUES "
                     "(?, 'x', '2026-01-01T00:00:00Z')", [("Bob@x.com",), ("bob@x.com",)])
    conn.commit()
    conn.close()


def fix_bad_data(fleet: Fleet, tenant: str, region: str = "eu") -> None:
    conn = sqlite3.connect(fleet.path(tenant, region))
    conn.execute("DELETE FROM users WHERE email = 'Bob@x.com'")
    conn.commit()
    conn.close()


def declare(fleet: Fleet, **settings: Any) -> None:
    fleet.config.write_text(config_text({n: {"region": "eu"} for n in NAMES}, **settings))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def test_metrics_follow_create_migrate_fail_halt_and_recover(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    declare(fleet, interval="1h", schema=3, rollout={"canary": 1, "max_failures": 0})
    d = launch(start, fleet)
    url = url_of(d)
    assert url.startswith("http://127.0.0.1:")
    begun = time.time()

    # create: four tenants at v3, one pass, four create events
    text = until(url, lambda t: value(t, M + "tenants", status="active") == 4, "created")
    assert value(text, M + "tenants", region="eu", status="active", schema_version="3") == 4
    assert value(text, M + "actions_total", action="create", outcome="ok") == 4
    assert value(text, M + "pass_duration_seconds_count") == 1
    assert value(text, M + "last_successful_pass_timestamp_seconds") >= begun - 1  # type: ignore[operator]
    assert value(text, M + "rollout_progress_ratio") == 1.0
    assert value(text, M + "rollout_halted") == 0
    assert value(text, M + "build_info") == 1 and value(text, M + "desired_state_valid") == 1
    assert value(text, M + "registry_size_bytes") >= fleet.central.stat().st_size  # type: ignore[operator]
    # no tenant name in any label
    assert not {v for (_name, labels) in samples(text) for _k, v in labels} & set(NAMES)

    # fail + halt: a1 is the canary and breaks; the rollout halts with three waiting
    add_bad_data(fleet, "a1")
    fleet.write_migration("0004_unique_email.sql", UNIQUE_EMAIL)
    declare(fleet, interval="1h", rollout={"canary": 1, "max_failures": 0})
    text = until(url, lambda t: value(t, M + "rollout_halted") == 1, "halted")
    assert value(text, M + "tenants", status="failed", schema_version="3") == 1
    assert value(text, M + "tenants", status="pending", schema_version="3") == 3
    assert value(text, M + "actions_total", action="migrate", outcome="failed") == 1
    assert value(text, M + "rollout_target_schema_version") == 4
    assert value(text, M + "rollout_tenants_at_target") == 0
    assert value(text, M + "rollout_progress_ratio") == 0.0

    # another pass holds the halt: counters do not move, the histogram does
    passes = value(text, M + "pass_duration_seconds_count")
    d.signal(signal.SIGHUP)
    text = until(url, lambda t: value(t, M + "pass_duration_seconds_count") == passes + 1,  # type: ignore[operator]
                 "one more pass")
    assert value(text, M + "actions_total", action="migrate", outcome="failed") == 1
    assert value(text, M + "rollout_halted") == 1

    # recover: the operator fixes the data and retries; the daemon's next pass sees it
    fix_bad_data(fleet, "a1")
    retried = fleet.run("apply", "--retry-failed")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    d.signal(signal.SIGHUP)
    text = until(url, lambda t: value(t, M + "rollout_progress_ratio") == 1.0, "recovered")
    assert value(text, M + "rollout_halted") == 0
    assert value(text, M + "tenants", status="active", schema_version="4") == 4
    assert value(text, M + "tenants", status="failed") is None
    assert value(text, M + "actions_total", action="migrate", outcome="ok") == 4
    assert d.stop() == 0

    # counters come from the registry: a restarted daemon continues from them
    d2 = launch(start, fleet)
    text = until(url_of(d2), lambda t: value(t, M + "actions_total", action="create",
                                             outcome="ok") == 4, "restart")
    assert value(text, M + "actions_total", action="migrate", outcome="ok") == 4
    assert d2.stop() == 0


def test_textfile_matches_the_endpoint(fleet: Fleet, start: Callable[..., Daemon],
                                       tmp_path: Path) -> None:
    declare(fleet, interval="1h")
    d = launch(start, fleet)
    url = url_of(d)
    endpoint = until(url, lambda t: value(t, M + "tenants") == 4, "converged")
    out = tmp_path / "textfile" / "tenant_reconciler.prom"
    out.parent.mkdir()
    done = fleet.run("metrics", "--textfile", str(out))
    assert done.returncode == 0, done.stderr
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left
    from_file = samples(out.read_text())
    from_endpoint = samples(endpoint)
    daemon_only = {M + n for n in ("desired_state_valid", "git_pull_ok", "interval_seconds",
                                   "last_pass_timestamp_seconds", "last_pass_success",
                                   "passes_total", "pass_in_progress")}
    # the daemon also reports what only it knows; everything else is identical
    assert {k: v for k, v in from_endpoint.items() if k[0] not in daemon_only} == from_file
    assert set(from_endpoint) - set(from_file) == {k for k in from_endpoint
                                                   if k[0] in daemon_only}
    # and the same without --textfile, on stdout
    printed = fleet.run("metrics")
    assert printed.returncode == 0 and samples(printed.stdout) == from_file
    assert d.stop() == 0


def test_readyz_turns_unready_when_passes_stop_succeeding_and_ready_again(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    declare(fleet, interval="1s")
    d = launch(start, fleet)
    url = url_of(d)
    eventually(lambda: get(url + "/readyz")[0] == 200, PATIENCE, "ready after the first pass")
    assert get(url + "/livez") == (200, "ok\n")
    code, body = get(url + "/readyz?verbose")
    assert code == 200 and "[+]pass ok" in body and "[+]registry ok" in body

    # another reconciler holds the fleet lock: passes cannot run any more
    lock = os.open(f"{fleet.central}.lock", os.O_RDWR)
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        eventually(lambda: get(url + "/readyz")[0] == 503, PATIENCE, "unready (3 × interval)")
        code, body = get(url + "/readyz?verbose")
        assert code == 503
        assert "[-]pass failed: the last pass that ran to completion ended" in body
        assert "3 × interval" in body and body.rstrip().endswith("readyz check failed")
        assert get(url + "/livez")[0] == 200  # alive all the same
        text = scrape(url)
        assert value(text, M + "last_pass_success") == 0
        assert value(text, M + "passes_total", result="not_run")
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        os.close(lock)
    eventually(lambda: get(url + "/readyz")[0] == 200, PATIENCE, "ready again")
    assert get(url + "/nothing")[0] == 404
    assert d.stop() == 0


def test_endpoint_refuses_a_bad_address_with_a_clear_error(fleet: Fleet) -> None:
    declare(fleet, interval="1h")
    for bad, says in (("localhost:http", "has no port number"),
                      ("example.com:9464", "write an IP address")):
        done = fleet.run("daemon", "--metrics-addr", bad, timeout=30)
        assert done.returncode == 1, done.stderr
        assert says in done.stderr and "Traceback" not in done.stderr
    # a port already in use: said, not a traceback
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = fleet.run("daemon", "--metrics-addr", f"127.0.0.1:{port}", timeout=30)
    assert done.returncode == 1 and "cannot listen there" in done.stderr
    assert "Traceback" not in done.stderr


# --------------------------------------------------------------------------- webhooks


def notify_settings(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"interval": "1h", "rollout": {"canary": 1, "max_failures": 0},
            "notify": [{"name": "ops", "url_env": "OPS_WEBHOOK_URL"}], **extra}


def test_one_notification_per_event_even_when_the_first_send_gets_500(
        fleet: Fleet, start: Callable[..., Daemon], receiver: Receiver) -> None:
    env = {"OPS_WEBHOOK_URL": receiver.url}
    declare(fleet, interval="1h", schema=3)
    assert fleet.run("apply").returncode == 0
    add_bad_data(fleet, "a1")
    fleet.write_migration("0004_unique_email.sql", UNIQUE_EMAIL)
    receiver.script = [500]  # the first delivery fails; the retry is accepted
    declare(fleet, **notify_settings(receiver))
    d = launch(start, fleet, env=env)
    url = url_of(d)
    halted = receiver.wait_for("rollout_halted")
    failed = receiver.wait_for("tenant_failed")
    assert "halted after 1 failed tenant" in halted["text"]
    assert "first failure: tenant a1" in halted["text"] and "UNIQUE" in halted["text"]
    assert "tenant a1 failed at v3" in failed["text"] and "--retry-failed" in halted["text"]
    assert receiver.requests[0][0] == 500  # and it was sent again
    # more passes, then a restart: the same conditions are not sent again
    for _ in range(2):
        n = value(scrape(url), M + "pass_duration_seconds_count")
        d.signal(signal.SIGHUP)
        until(url, lambda t, n=n: value(t, M + "pass_duration_seconds_count") == n + 1,  # type: ignore[misc]
              "another pass")
    text = scrape(url)
    assert value(text, M + "notifications_total", event="rollout_halted", outcome="sent") == 1
    assert d.stop() == 0
    d = launch(start, fleet, env=env)
    until(url_of(d), lambda t: value(t, M + "passes_total", result="completed") == 1,
          "a pass after the restart")
    time.sleep(1.5)  # what would be sent is queued at the end of that pass
    assert sorted(receiver.events()) == ["rollout_halted", "tenant_failed"]
    assert len(receiver.requests) == 3  # 500, then two accepted

    # recovery, then a new rollout that finishes: one rollout_finished message
    fix_bad_data(fleet, "a1")
    assert fleet.run("apply", "--retry-failed").returncode == 0
    fleet.write_migration("0005_tags.sql", "CREATE TABLE tags (id INTEGER PRIMARY KEY);\n")
    done = receiver.wait_for("rollout_finished")
    assert "all 4 declared tenant(s) are at their target schema (default v5)" in done["text"]
    # the invalid edit is a condition too; its sentence names file, line and column
    fleet.config.write_text(fleet.config.read_text().replace("region: eu", "region: mars", 1))
    invalid = receiver.wait_for("desired_state_invalid")
    assert "tenants.yaml:" in invalid["text"] and "mars" in invalid["text"]
    time.sleep(1.0)
    assert sorted(receiver.events()) == ["desired_state_invalid", "rollout_finished",
                                         "rollout_halted", "tenant_failed"]
    assert d.stop() == 0


def test_alertmanager_format_from_a_credentials_file_and_event_filter(
        fleet: Fleet, start: Callable[..., Daemon], receiver: Receiver, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "am").write_text(receiver.url + "\n")
    declare(fleet, interval="1h", schema=3)
    assert fleet.run("apply").returncode == 0
    os.remove(fleet.path("a2", "eu"))
    declare(fleet, interval="1h", schema=3, notify=[
        {"url_file": "${CREDENTIALS_DIRECTORY}/am", "format": "alertmanager",
         "events": ["tenant_missing"]},
        {"name": "unused", "url_env": "OPS_WEBHOOK_URL", "events": ["rollout_finished"]}])
    d = start(fleet, env={"CREDENTIALS_DIRECTORY": str(creds), "NOTIFY_SOCKET": ""})
    eventually(lambda: receiver.accepted(), PATIENCE, "an alert")
    time.sleep(1.0)
    (alerts,) = receiver.accepted()
    assert isinstance(alerts, list) and len(alerts) == 1
    labels = alerts[0]["labels"]
    assert labels["alertname"] == "TenantReconcilerTenantMissing"
    assert labels["severity"] == "critical" and labels["event"] == "tenant_missing"
    assert "tenant a2 is missing" in alerts[0]["annotations"]["description"]
    assert "reconcile restore a2 --from FILE" in alerts[0]["annotations"]["description"]
    assert alerts[0]["startsAt"].endswith("Z")
    assert d.stop() == 0


def test_a_webhook_that_never_answers_does_not_hold_up_passes(
        fleet: Fleet, start: Callable[..., Daemon]) -> None:
    declare(fleet, interval="1h", schema=3)
    assert fleet.run("apply").returncode == 0
    os.remove(fleet.path("a3", "eu"))
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        hook = f"http://127.0.0.1:{silent.getsockname()[1]}/hook"
        declare(fleet, interval="1h", schema=3, notify=[{"url_env": "OPS_WEBHOOK_URL"}])
        d = launch(start, fleet, env={"OPS_WEBHOOK_URL": hook})
        url = url_of(d)
        until(url, lambda t: value(t, M + "tenants", status="missing") == 1, "missing seen")
        for n in (2, 3):  # passes go on while the message waits for an answer
            d.signal(signal.SIGHUP)
            text = until(url, lambda t, n=n: value(t, M + "passes_total",  # type: ignore[misc]
                                                   result="completed") == n, f"pass {n}")
            assert value(text, M + "notifications_total") is None  # still in flight
        assert d.stop() == 0


def test_a_refused_git_pull_is_notified_once_and_shown_in_metrics(
        fleet: Fleet, start: Callable[..., Daemon], receiver: Receiver, tmp_path: Path) -> None:
    clone, dev = gitops(fleet, tmp_path)

    def push(tenants: dict[str, dict[str, str]], message: str, force: bool = False) -> None:
        (dev / "tenants.yaml").write_text(config_text(tenants, interval="1s", notify=[
            {"url_env": "OPS_WEBHOOK_URL", "events": ["git_pull_refused"]}]))
        git(dev, "commit", "-q", "-am", message)
        git(dev, "push", "-q", *(["--force"] if force else []), "origin", "main")

    push({"aaron": {"region": "eu"}}, "notify the ops webhook")
    d = launch(start, clone, "--git-pull", env={"OPS_WEBHOOK_URL": receiver.url})
    url = url_of(d)
    push({"aaron": {"region": "eu"}, "beta": {"region": "us"}}, "add beta")
    eventually(lambda: registered(clone, "beta") == (3, "active"), PATIENCE, "beta applied")
    git(dev, "reset", "-q", "--hard", "HEAD~1")
    push({"aaron": {"region": "eu"}, "gamma": {"region": "eu"}}, "rewrite", force=True)
    refused = receiver.wait_for("git_pull_refused")
    assert "pull refused: not a fast-forward" in refused["text"]
    text = until(url, lambda t: value(t, M + "git_pull_ok") == 0, "pull failure exported")
    time.sleep(2.5)  # more intervals, each refused again: no second message
    assert receiver.events() == ["git_pull_refused"]
    assert value(text, M + "desired_state_valid") == 1
    assert d.stop() == 0


# --------------------------------------------------------------------------- Prometheus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("prometheus") is None,
                    reason="the prometheus server is not installed (Debian package "
                    "`prometheus`; .ci/run installs it)")
def test_a_real_prometheus_scrapes_the_daemon(fleet: Fleet, start: Callable[..., Daemon],
                                              tmp_path: Path) -> None:
    declare(fleet, interval="1h")
    d = launch(start, fleet)
    target = urllib.parse.urlsplit(url_of(d)).netloc
    until(url_of(d), lambda t: value(t, M + "tenants") == 4, "converged")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
                           / "alerts.yml")],
        "scrape_configs": [{"job_name": "tenant-reconciler",
                            "static_configs": [{"targets": [target]}]}]}))
    log = (tmp_path / "prometheus.log").open("w")
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
    try:
        api = f"http://127.0.0.1:{port}/api/v1"

        def tenants() -> float | None:
            code, body = get(f"{api}/query?query=sum({M}tenants)")
            if code != 200:
                return None
            result = json.loads(body)["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        assert eventually(tenants, 60, "Prometheus has scraped the daemon") == 4.0
        code, body = get(f"{api}/targets")
        assert code == 200
        (active,) = json.loads(body)["data"]["activeTargets"]
        assert active["health"] == "up" and active["scrapeUrl"].endswith("/metrics")
        code, body = get(f"{api}/rules")
        assert code == 200
        groups = json.loads(body)["data"]["groups"]
        assert any(r["name"] == "TenantReconcilerRolloutHalted"
                   for g in groups for r in g["rules"])
    finally:
        prom.terminate()
        prom.wait(30)
        log.close()
    assert d.stop() == 0


@pytest.mark.skipif(shutil.which("prometheus-alertmanager") is None,
                    reason="Alertmanager is not installed (Debian package "
                    "`prometheus-alertmanager`; .ci/run installs it)")
def test_a_real_alertmanager_takes_the_alert_and_resolves_it(
        fleet: Fleet, start: Callable[..., Daemon], tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "alertmanager.yml"
    config.write_text('route: {receiver: "null"}\nreceivers: [{name: "null"}]\n')
    log = (tmp_path / "alertmanager.log").open("w")
    am = subprocess.Popen(
        ["prometheus-alertmanager", f"--config.file={config}",
         f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{port}",
         "--cluster.listen-address="], stdout=log, stderr=log)
    api = f"http://127.0.0.1:{port}/api/v2"
    try:
        eventually(lambda: get(f"{api}/status")[0] == 200, PATIENCE, "Alertmanager is up")
        declare(fleet, interval="1h", schema=3)
        assert fleet.run("apply").returncode == 0
        copy = tmp_path / "a2-copy.db"
        shutil.copyfile(fleet.path("a2", "eu"), copy)
        os.remove(fleet.path("a2", "eu"))
        declare(fleet, interval="1h", schema=3, notify=[
            {"url_env": "AM_URL", "format": "alertmanager", "events": ["tenant_missing"]}])
        d = launch(start, fleet, env={"AM_URL": f"{api}/alerts"})

        def alerts() -> list[dict[str, Any]]:
            code, body = get(f"{api}/alerts")
            assert code == 200, body
            return [a for a in json.loads(body)
                    if a["labels"]["alertname"] == "TenantReconcilerTenantMissing"]

        (alert,) = eventually(alerts, PATIENCE, "the alert reached Alertmanager")
        assert alert["status"]["state"] == "active"
        assert alert["labels"]["severity"] == "critical"
        assert "tenant a2 is missing" in alert["annotations"]["description"]

        restored = fleet.run("restore", "a2", "--from", str(copy))
        assert restored.returncode == 0, restored.stderr
        d.signal(signal.SIGHUP)  # the next pass sees it back: the alert is resolved
        eventually(lambda: not alerts(), PATIENCE, "resolved in Alertmanager")
        assert d.stop() == 0
    finally:
        am.terminate()
        am.wait(30)
        log.close()
