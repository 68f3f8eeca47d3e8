"""Issue 15 base: the registry's agent/regions/handoffs tables, ``backup.registry_url``,
the new tenants.yaml settings, and ``peers.read_views`` reading other regions' registry
copies — real registries written by ``Registry`` in tmp_path, read back read-only."""

from __future__ import annotations

import dataclasses
import os
import socket
import sqlite3
from pathlib import Path

import pytest

from reconciler import backup, desired, fleet, peers
from reconciler.desired import Desired
from reconciler.errors import InvalidInput
from reconciler.registry import VERSION, Registry
from reconciler.settingsconfig import DEFAULT_STALE_AFTER
from reconciler.state import Handoff, PeerView, RegionRow

CONFIG = """\
version: 1
settings:
  stale_after: 10s
regions:
  eu: {endpoint: "https://eu.example.com/"}
  us: {endpoint: "http://us.example.com:8080"}
  ap: {}
tenants:
  aaron: {region: eu}
"""


def load(tmp_path: Path, text: str = CONFIG) -> Desired:
    path = tmp_path / "tenants.yaml"
    path.write_text(text)
    return desired.load(path, lambda _d: 3)


def peer_registry(path: Path, region: str, heartbeat_at: float | None,
                  tenants: dict[str, int]) -> Path:
    """A region's registry as its agent writes it: tenants at the given generations,
    each routed at ``<name>.example.com``."""
    reg = Registry.open(path)
    with reg.transaction():
        if heartbeat_at is not None:
            reg.set_agent(region, f"host-{region}", "abc123", heartbeat_at)
        for name, generation in tenants.items():
            reg.upsert_tenant(name, region, Path(f"/srv/{region}/{name}.db"), 3, "active")
            reg.update_tenant(name, generation=generation)
            reg.set_domain(f"{name}.example.com", name)
    reg.close()
    return path


def test_registry_upgrade_adds_generation_agent_regions_handoffs_and_event_agent(
        tmp_path: Path) -> None:
    reg = Registry.open(tmp_path / "central.db")
    assert reg.version == VERSION >= peers.PEER_SCHEMA
    with reg.transaction():
        reg.upsert_tenant("aaron", "eu", tmp_path / "eu" / "aaron.db", 1, "active")
        reg.event(revision="r1", tenant="aaron", action="create", outcome="ok")
        reg.set_agent("eu", "box1", "r1", 100.0)
        reg.event(revision="r1", tenant="aaron", action="migrate", outcome="ok")
        reg.set_regions([RegionRow("eu", "https://eu.example.com", True, None),
                         RegionRow("us", None, False, "/x/_follow/us.db")])
    assert reg.conn.execute("SELECT generation FROM tenants").fetchone() == (1,)
    agents = [r[0] for r in reg.conn.execute("SELECT agent FROM events ORDER BY id")]
    # before any agent row (a one-shot pass on a single host): the agent of every region
    assert agents == [f"*@{socket.gethostname()}", "eu@box1"]
    reg.heartbeat(123.5)
    assert reg.agent() == ("eu", "box1", "r1", 123.5)
    with reg.transaction():
        reg.set_agent(None, "box1", None, 124.0)  # the agent of every region
        reg.event(revision="r2", tenant=None, action="run", outcome="ok")
        reg.set_regions([RegionRow("eu", None, True, None)])
    assert reg.conn.execute("SELECT agent FROM events ORDER BY id DESC").fetchone() == \
        ("*@box1",)
    assert reg.agent() == (None, "box1", "r1", 124.0)  # revision kept when not given
    assert reg.regions() == [RegionRow("eu", None, True, None)]
    cols = [r[1] for r in reg.conn.execute("PRAGMA table_info(handoffs)")]
    assert cols == ["tenant", "to_region", "replica_url", "txid", "schema_version",
                    "digest", "generation", "at", "seq"]
    reg.close()


def test_rows_peers_act_on_are_confirmed_only_by_a_later_commit_of_their_registry(
        tmp_path: Path) -> None:
    central = tmp_path / "central.db"
    reg = Registry.open(central)
    with reg.transaction():
        reg.set_agent("eu", "box1", "r1", 100.0)  # every beat is a commit: seq 1
    handoff = Handoff("aaron", "us", "file:///r/aaron", 42, 3, "d1g", 2)
    with reg.transaction():
        reg.upsert_tenant("aaron", "eu", tmp_path / "eu" / "aaron.db", 3, "relocating")
        reg.put_handoff(handoff)

    def view() -> PeerView:
        return peers.read_view(central, "eu", None, 101.0)

    before = view()
    assert before.seq == 1 and before.handoffs["aaron"].seq == 1
    assert before.tenants["aaron"].seq == 1
    assert not before.confirmed(before.handoffs["aaron"].seq)  # its writer may lose it
    reg.confirm()
    after = view()
    assert after.seq == 2 and after.confirmed(after.handoffs["aaron"].seq)
    assert after.handoffs["aaron"] == handoff  # seq is not part of what is handed off
    reg.heartbeat(102.0)
    assert view().seq == 3
    with reg.transaction():
        reg.took_over(dataclasses.replace(handoff, generation=5, digest="d2g"))
    t = view().tenants["aaron"]
    assert (t.generation, t.taken_digest, t.seq) == (5, "d2g", 1)  # registration's seq
    reg.close()


def test_registry_url_is_one_location_per_region_beside_the_lineages() -> None:
    assert backup.registry_url("file:///srv/rep", "eu") == "file:///srv/rep/_registry/eu"
    assert backup.registry_url("s3://b/tenants", "us") == "s3://b/tenants/_registry/us"
    assert backup.registry_url("nats://127.0.0.1:4222/tenants", "eu") == \
        "nats://127.0.0.1:4222/tenants-_registry-eu"


def test_endpoint_and_stale_after_are_read_and_the_follow_dir_is_fenced(
        tmp_path: Path) -> None:
    d = load(tmp_path)
    assert d.regions["eu"].endpoint == "https://eu.example.com"
    assert d.regions["us"].endpoint == "http://us.example.com:8080"
    assert d.regions["ap"].endpoint is None
    assert d.settings.stale_after == 10.0
    assert load(tmp_path, CONFIG.replace("  stale_after: 10s\n", "")).settings.stale_after \
        == DEFAULT_STALE_AFTER
    follow = d.settings.follow_dir
    assert follow == d.settings.data_dir / "_follow"
    assert fleet.fence(d).holds(follow / "us.db")


@pytest.mark.parametrize("url", ["http://localhost:8080", "http://127.0.0.1:8080/x",
                                 "https://[::1]:8443", "https://xn--u-0fa.example.com"])
def test_an_endpoint_may_be_a_single_label_an_ip_address_or_an_idn_in_ascii(
        tmp_path: Path, url: str) -> None:
    text = CONFIG.replace('"http://us.example.com:8080"', f'"{url}"')
    assert load(tmp_path, text).regions["us"].endpoint == url


@pytest.mark.parametrize(("line", "message", "hint"), [
    ('  us: {endpoint: "ftp://us.example.com"}', "is not an http or https URL",
     "https://eu.example.com"),
    ('  us: {endpoint: "us.example.com"}', "is not an http or https URL", "for example"),
    ('  us: {endpoint: "https://u:p@us.example.com"}', "credentials", "scheme, host"),
    ('  us: {endpoint: ""}', "is empty", "https://"),
    ('  us: {endpoint: "http://us.example.com:99999"}', "not an http", "https://"),
    # a space or a non-ASCII host makes no URL an application can redirect to
    ('  us: {endpoint: "https://us example.com"}', "not an http", "https://"),
    ('  us: {endpoint: "https://ëu.example.com"}', "not an http", "https://"),
    ('  us: {endpoint: "https://us.example.com/a b"}', "not an http", "https://"),
])
def test_a_bad_endpoint_names_its_line_and_column_and_what_to_write(
        tmp_path: Path, line: str, message: str, hint: str) -> None:
    text = CONFIG.replace('  us: {endpoint: "http://us.example.com:8080"}', line)
    with pytest.raises(InvalidInput) as info:
        load(tmp_path, text)
    [p] = info.value.problems
    assert (p.line, message in p.message, hint in p.hint) == (6, True, True), p
    assert p.column is not None and p.column > 1
    assert "regions.us.endpoint" in p.message


@pytest.mark.parametrize("value", ["0s", "soon", "-5s", "[1]"])
def test_a_bad_stale_after_is_refused_with_a_duration_hint(tmp_path: Path, value: str) -> None:
    with pytest.raises(InvalidInput) as info:
        load(tmp_path, CONFIG.replace("stale_after: 10s", f"stale_after: {value}"))
    [p] = info.value.problems
    assert p.line == 3 and "settings.stale_after" in p.message and "write" in p.hint


def test_read_views_reads_every_other_region_with_its_age(tmp_path: Path) -> None:
    d = load(tmp_path)
    follow = d.settings.follow_dir
    follow.mkdir(parents=True)
    peer_registry(follow / "us.db", "us", 1000.0, {"acme": 2, "globex": 1})
    views = peers.read_views(d, "eu", 1004.5)
    assert sorted(views) == ["ap", "us"]
    us = views["us"]
    assert (us.age, us.endpoint, us.host, us.revision) == \
        (4.5, "http://us.example.com:8080", "host-us", "abc123")
    assert us.tenants["acme"].generation == 2 and us.tenants["acme"].status == "active"
    assert us.domains == {"acme.example.com": "acme", "globex.example.com": "globex"}
    assert us.fresh(10.0) and not us.fresh(4.0)
    ap = views["ap"]
    assert ap.age is None and not ap.fresh(1e9) and "no copy" in (ap.problem or "")
    assert not list(follow.glob("ap*")), "reading a missing copy must not create it"


def test_a_copy_with_a_handoff_is_read_whole(tmp_path: Path) -> None:
    d = load(tmp_path)
    path = peer_registry(d.settings.follow_dir / "us.db", "us", 50.0, {"acme": 1})
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO handoffs VALUES ('acme', 'eu', 'file:///r/acme/1', 42, 3, "
                 "'d1g', 2, 'now', 5)")
    conn.execute("UPDATE agent SET seq = 6")
    conn.commit()
    conn.close()
    view = peers.read_views(d, "eu", 50.0)["us"]
    [h] = view.handoffs.values()
    assert (h.tenant, h.to_region, h.txid, h.schema_version, h.digest, h.generation,
            h.seq) == ("acme", "eu", 42, 3, "d1g", 2, 5)
    assert view.seq == 6 and view.confirmed(h.seq)


def test_unreadable_or_unfinished_copies_have_no_age_and_never_raise(tmp_path: Path) -> None:
    d = load(tmp_path)
    follow = d.settings.follow_dir
    follow.mkdir(parents=True)
    (follow / "us.db").write_bytes(b"not a database at all" * 100)
    peer_registry(follow / "ap.db", "ap", None, {"x": 1})  # no heartbeat yet
    views = peers.read_views(d, "eu", 10.0)
    assert views["us"].age is None and "cannot" in (views["us"].problem or "")
    assert views["ap"].age is None and "heartbeat" in (views["ap"].problem or "")
    old = sqlite3.connect(follow / "us.db.old")
    old.execute("PRAGMA user_version = 3")
    old.close()
    os.replace(follow / "us.db.old", follow / "us.db")
    assert "version 3" in (peers.read_views(d, "eu", 10.0)["us"].problem or "")


def test_a_copy_locked_by_its_follower_reads_as_unreadable_after_the_busy_timeout(
        tmp_path: Path) -> None:
    path = peer_registry(tmp_path / "us.db", "us", 5.0, {"a": 1})
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=DELETE")
    writer.execute("BEGIN EXCLUSIVE")  # as Litestream holds it while applying pages
    try:
        view = peers.read_view(path, "us", None, 6.0, busy_timeout=0.05)
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert view.age is None and "locked" in (view.problem or "")
    assert peers.read_view(path, "us", None, 6.0).age == 1.0


def test_peer_view_freshness_needs_an_age() -> None:
    assert PeerView("us", None, 0.0).fresh(0.0)
    assert not PeerView("us", None, None).fresh(30.0)
