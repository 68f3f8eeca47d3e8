"""A commit Litestream shipped and its writer never finished (issue 15), end to end.

SQLite publishes a commit in the wal-index only after writing its frames to the -wal
(and, with ``synchronous=FULL``, syncing them). Litestream reads the -wal file itself,
so it can ship frames that are not published yet; if the writer is killed then while
another connection keeps the wal-index alive (here the application's router), SQLite
never publishes them and the next writer overwrites them: every follower saw a commit
that the registry itself no longer has. A fresh user hit this with a handoff: the
destination took over a handoff its source then forgot.

The shim ``hold_wal_sync.c`` (LD_PRELOAD, built here with the system's C compiler)
holds the eu agent inside exactly that gap, in the commit of its ``handoffs`` row, so
the test is deterministic: us's followed copy shows the handoff, eu's registry does
not. What must hold: us never takes over an unconfirmed handoff; after eu is killed and
restarted, there is one live copy with every acknowledged row, and eu's registry
replicates again (Litestream 0.5.17 would otherwise stop on the grown file).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from reconciler import litestream, replication
from tests.e2e.holdkit import application_held, build_shim, hold_env
from tests.e2e.xmovekit import Host, Hosts, Writer, live_copies, settle, titles


def copy_rows(host: Host, region: str, sql: str) -> list[tuple[object, ...]]:
    """Rows of ``host``'s followed copy of ``region``'s registry ([] while unreadable)."""
    path = host.fleet.data / "_follow" / f"{region}.db"
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
        try:
            return [tuple(r) for r in conn.execute(sql)]
        finally:
            conn.close()
    except sqlite3.Error:
        return []


def waits(host: Host, words: str) -> bool:
    """Whether ``host``'s agent logged a wait whose reason contains ``words``."""
    for line in host.log_path.read_text(errors="replace").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "wait" and words in str(entry.get("reason", "")):
            return True
    return False


@pytest.mark.parametrize("declared_back", [
    True, pytest.param(False, marks=pytest.mark.slow)])
def test_an_unpublished_handoff_that_litestream_shipped_is_never_taken_over(
        hosts: Hosts, tmp_path: Path, declared_back: bool) -> None:
    shim = build_shim(tmp_path)
    arm, held = tmp_path / "arm", tmp_path / "held"
    eu, us = hosts["eu"], hosts["us"]
    hosts.declare({"aaron": "eu", "acme": "us"})
    us.start()
    eu.start(env={**hold_env(shim, eu.central, arm, held),
                  "RECONCILE_MARK_AT": f"xmove:after-sync:{arm}"})
    settle(lambda: eu.status_of("aaron") == "active" and us.status_of("acme") == "active",
           "both created")
    writer = Writer(eu, "aaron.yoursaas.com").start()  # its router keeps central.db open
    settle(lambda: len(writer.acked) >= 20, "rows written on eu")
    hosts.declare({"aaron": "us", "acme": "us"})
    settle(held.exists, "eu held inside the commit of its handoff", timeout=120)
    # Litestream shipped the frames SQLite has not published: us sees the handoff, ...
    settle(lambda: copy_rows(us, "eu", "SELECT tenant FROM handoffs") == [("aaron",)],
           "the unpublished handoff in us's copy of eu's registry")
    assert eu.registry("SELECT count(*) FROM handoffs") == [(0,)]  # ... eu does not
    settle(lambda: waits(us, "no later commit of its registry has confirmed"),
           "us waiting for the handoff to be confirmed")
    assert us.status_of("aaron") is None and us.events("takeover") == []

    assert eu.proc is not None
    os.kill(eu.proc.pid, signal.SIGKILL)  # its Litestream follows (PR_SET_PDEATHSIG)
    eu.proc.wait()
    if declared_back:  # the move is called off: eu cancels what it never published
        hosts.declare({"aaron": "eu", "acme": "us"})
    eu.start()
    if declared_back:
        settle(lambda: eu.status_of("aaron") == "active"
               and eu.registry("SELECT count(*) FROM journal") == [(0,)], "eu serves aaron")
        # eu's registry replicates again, its copy at us without the forgotten handoff
        settle(lambda: copy_rows(us, "eu", "SELECT count(*) FROM handoffs") == [(0,)]
               and copy_rows(us, "eu", "SELECT count(*) FROM tenants WHERE name = 'aaron' "
                                       "AND status = 'active'") == [(1,)],
               "us's copy of eu's registry caught up", timeout=120)
        settle(lambda: len(writer.acked) >= 40, "rows written on eu after the restart")
        expected = ["eu"]
    else:
        settle(lambda: us.status_of("aaron") == "active" and eu.status_of("aaron") is None,
               "relocated after the restart", timeout=120)
        expected = ["us"]
    acked = writer.stop()
    where = eu if declared_back else us
    assert set(acked) <= set(titles(where.path("aaron")))
    assert live_copies(hosts, "aaron") == expected
    assert eu.registry("SELECT count(*) FROM journal") == [(0,)]
    assert us.registry("SELECT count(*) FROM journal") == [(0,)]
    if declared_back:
        assert us.status_of("aaron") is None and not us.path("aaron").exists()
        assert us.events("takeover") == []
        # the handoff eu wrote while held never happened there: no such event, id reused
        assert eu.registry("SELECT count(*) FROM events WHERE action = 'handoff' AND "
                           "outcome = 'ok'") == [(0,)]


def test_a_tenant_whose_application_died_inside_a_commit_still_moves_whole(
        hosts: Hosts, tmp_path: Path) -> None:
    # Litestream shipped the application's unpublished commit, then SQLite lost it: a
    # handoff at any txid of that replica would not be the file (the destination's
    # verify refuses it for ever) unless the source restarts its replication first
    eu, us = hosts["eu"], hosts["us"]
    hosts.declare({"aaron": "eu", "acme": "us"})
    hosts.start()
    settle(lambda: eu.status_of("aaron") == "active" and us.status_of("acme") == "active",
           "both created")
    path = eu.path("aaron")
    control = litestream.Control(litestream.socket_path(eu.central))
    writer = Writer(eu, "aaron.yoursaas.com").start()
    settle(lambda: len(writer.acked) >= 20, "rows written on eu")
    settle(lambda: replicated(control, path), "aaron replicated")
    with application_held(path, tmp_path):
        settle(lambda: replication_past(control, path), "Litestream shipping what SQLite "
               "has not published")
    hosts.declare({"aaron": "us", "acme": "us"})
    settle(lambda: us.status_of("aaron") == "active" and eu.status_of("aaron") is None,
           "aaron moved to us", timeout=120)
    acked = writer.stop()
    found = titles(us.path("aaron"))
    assert set(acked) <= set(found)
    assert all(len(t) < 100 for t in found)  # the commit that never happened is not there
    assert live_copies(hosts, "aaron") == ["us"]


def replicated(control: litestream.Control, path: Path) -> bool:
    try:
        rep = control.databases().get(str(path))
    except litestream.LitestreamDown:
        return False
    return rep is not None and rep.txid > 0 and rep.synced_offset is not None


def replication_past(control: litestream.Control, path: Path) -> bool:
    """Litestream's last sync of ``path`` ended past what SQLite published."""
    try:
        return replication.past_published(control, path)
    except litestream.LitestreamDown:
        return False
