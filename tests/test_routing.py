"""reconciler.routing against a real registry and real tenant files (no HTTP here).

The registry is written with the reconciler's own ``Registry`` class, as the reconciler
writes it; every tenant file is a real WAL-mode SQLite file.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from reconciler.registry import Registry
from reconciler.routing import (
    InvalidHost,
    RegistryUnavailable,
    Router,
    Tenant,
    TenantNotFound,
    TenantUnavailable,
    normalize_host,
)
from tests.conftest import Fleet, make_db


def add_tenant(reg: Registry, name: str, *, region: str = "eu", version: int = 3,
               status: str = "active", domains: tuple[str, ...] | None = None,
               file_version: int | None = None, create_file: bool = True) -> Path:
    """Register a tenant (and its file) as the reconciler would."""
    path = reg.path.parent / region / f"{name}.db"
    if create_file:
        make_db(path, version if file_version is None else file_version, wal=True)
    with reg.transaction():
        reg.upsert_tenant(name, region, path, version, status)
        for d in (f"{name}.yoursaas.com",) if domains is None else domains:
            reg.set_domain(d, name)
    return path


def main_file(conn: sqlite3.Connection) -> str:
    return str(next(r[2] for r in conn.execute("PRAGMA database_list") if r[1] == "main"))


# --------------------------------------------------------------------------- resolve


def test_a_domain_resolves_to_exactly_what_the_registry_holds(reg: Registry, router: Router
                                                               ) -> None:
    path = add_tenant(reg, "aaron", region="eu", version=3, domains=("aaron.yoursaas.com",
                                                                     "notes.aaron.example"))
    expected = Tenant("aaron", path, "eu", 3, "active")
    assert router.resolve("aaron.yoursaas.com") == expected
    assert router.resolve("notes.aaron.example") == expected


@pytest.mark.parametrize("host", ["AARON.YOURSAAS.COM", "aaron.yoursaas.com:8080",
                                  "aaron.yoursaas.com.", "Aaron.YourSaaS.com.:443",
                                  "aaron.yoursaas.com:"])
def test_case_port_and_trailing_dot_do_not_change_the_tenant(reg: Registry, router: Router,
                                                             host: str) -> None:
    add_tenant(reg, "aaron")
    add_tenant(reg, "acme", region="us")
    assert router.resolve(host).name == "aaron"
    with router.connect(host) as conn:
        assert main_file(conn) == str(reg.path.parent / "eu" / "aaron.db")


CRAFTED = [
    "", "../eu/aaron", "..", "%2e%2e", "%2e%2e.yoursaas.com", "aaron.yoursaas.com/../acme",
    "aaron..yoursaas.com", "aaron.yoursaas.com..", ".aaron.yoursaas.com",
    "aaron.yoursaas.com:80:80", "aaron.yoursaas.com:http", "aaron.yoursaas.com:123456",
    "aaron_x.yoursaas.com", "-aaron.yoursaas.com", "aaron-.yoursaas.com",
    "aaron.yoursaas.com\n", "aaron.yoursaas.com ", " aaron.yoursaas.com",
    "aaron.yoursaas.com\x00.evil", "[::1]:80", "user@aaron.yoursaas.com",
    "ааron.yoursaas.com",  # Cyrillic "а"
    "\u212aate.yoursaas.com",  # KELVIN SIGN: str.lower() would turn it into "kate"
    "a" * 300, ("a" * 63 + ".") * 4 + "com",  # 256 characters of valid labels
    "a" * 64 + ".yoursaas.com",
]


@pytest.mark.parametrize("host", CRAFTED)
def test_crafted_hosts_are_rejected_even_when_that_exact_string_is_registered(
        fleet: Fleet, reg: Registry, router: Router, host: str) -> None:
    # the crafted string itself is a registered domain (and so is its lowercase form),
    # so a router that looked it up at all would find a tenant: the rejection can only
    # come from validation before any lookup
    add_tenant(reg, "kate")
    add_tenant(reg, "aaron", domains=(host, host.lower(), "aaron.yoursaas.com"))
    before = fleet.tenant_digests()
    with pytest.raises(InvalidHost) as exc:
        router.connect(host)
    assert exc.value.http_status == 400
    with pytest.raises(InvalidHost):
        router.resolve(host)
    assert fleet.tenant_digests() == before


def test_punycode_is_a_hostname_like_any_other_and_matches_only_itself(
        reg: Registry, router: Router) -> None:
    add_tenant(reg, "munchen", domains=("xn--mnchen-3ya.example.com",))
    assert router.resolve("XN--MNCHEN-3YA.example.com").name == "munchen"
    with pytest.raises(InvalidHost):
        router.resolve("münchen.example.com")
    with pytest.raises(TenantNotFound):
        router.resolve("xn--mnchen-3yb.example.com")


def test_normalize_host_gives_the_canonical_name() -> None:
    assert normalize_host("Aaron.YourSaaS.com.:8443") == "aaron.yoursaas.com"
    assert normalize_host("localhost") == "localhost"
    assert normalize_host("127.0.0.1:80") == "127.0.0.1"


def test_an_unknown_host_is_not_found_and_nothing_falls_back_to_the_tenant_name(
        reg: Registry, router: Router) -> None:
    add_tenant(reg, "aaron", domains=("aaron.example.com",))
    for host in ("aaron.yoursaas.com", "aaron", "yoursaas.com", "x.aaron.example.com",
                 "aaron.example.com.evil.com"):
        with pytest.raises(TenantNotFound) as exc:
            router.connect(host)
        assert exc.value.http_status == 404


# --------------------------------------------------------------------------- availability


@pytest.mark.parametrize("status", ["relocating", "missing", "archived", "suspended",
                                    "failed"])
def test_an_unservable_status_gets_503_with_its_reason_and_no_connection(
        fleet: Fleet, reg: Registry, router: Router, status: str) -> None:
    add_tenant(reg, "aaron", status=status)
    before = fleet.tenant_digests()
    tenant = router.resolve("aaron.yoursaas.com")
    assert tenant.status == status
    assert tenant.unavailable_reason() is not None
    with pytest.raises(TenantUnavailable) as exc:
        router.connect("aaron.yoursaas.com")
    assert exc.value.http_status == 503
    assert exc.value.reason.startswith(status)
    assert exc.value.tenant == tenant
    assert fleet.tenant_digests() == before


@pytest.mark.parametrize("status", ["active", "pending", "migrating", "orphaned"])
def test_servable_statuses_get_a_connection(reg: Registry, router: Router, status: str
                                            ) -> None:
    add_tenant(reg, "aaron", status=status)
    with router.connect("aaron.yoursaas.com") as conn:
        assert conn.tenant.status == status


def test_an_archived_tenant_is_reachable_only_through_a_domain_that_still_points_at_it(
        fleet: Fleet, reg: Registry, router: Router) -> None:
    archived = add_tenant(reg, "oldco", status="archived", domains=())
    add_tenant(reg, "newco", status="archived", domains=("newco.yoursaas.com",))
    before = fleet.tenant_digests()
    with pytest.raises(TenantNotFound):
        router.connect("oldco.yoursaas.com")
    with pytest.raises(TenantUnavailable, match="archived"):
        router.connect("newco.yoursaas.com")
    assert archived.exists() and fleet.tenant_digests() == before


def test_a_vanished_file_is_unavailable_and_never_recreated(reg: Registry, router: Router
                                                            ) -> None:
    path = add_tenant(reg, "aaron")
    path.unlink()
    with pytest.raises(TenantUnavailable, match="cannot be opened"):
        router.connect("aaron.yoursaas.com")
    assert not path.exists()
    assert not path.with_name("aaron.db-wal").exists()


def test_a_relative_path_in_the_registry_is_never_opened_relative_to_the_cwd(
        fleet: Fleet, reg: Registry, router: Router, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    decoy = make_db(tmp_path / "cwd" / "eu" / "aaron.db", 3)
    monkeypatch.chdir(decoy.parent.parent)
    with reg.transaction():
        reg.upsert_tenant("aaron", "eu", Path("eu/aaron.db"), 3, "active")
        reg.set_domain("aaron.yoursaas.com", "aaron")
    before = decoy.read_bytes()
    with pytest.raises(TenantUnavailable, match="relative path"):
        router.connect("aaron.yoursaas.com")
    assert decoy.read_bytes() == before


def test_min_schema_refuses_a_tenant_below_it(reg: Registry, router: Router) -> None:
    add_tenant(reg, "aaron", version=2)
    with router.connect("aaron.yoursaas.com", min_schema=2) as conn:
        assert conn.tenant.schema_version == 2
    with pytest.raises(TenantUnavailable, match="schema too old") as exc:
        router.connect("aaron.yoursaas.com", min_schema=3)
    assert exc.value.http_status == 503


def test_min_schema_trusts_the_files_own_user_version_over_the_registry(
        reg: Registry, router: Router) -> None:
    add_tenant(reg, "behind", version=3, file_version=1)  # the registry claims more
    with pytest.raises(TenantUnavailable, match="at v1"):
        router.connect("behind.yoursaas.com", min_schema=2)
    add_tenant(reg, "ahead", version=2, file_version=3)  # a migration just finished
    with router.connect("ahead.yoursaas.com", min_schema=3) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


# --------------------------------------------------------------------------- connections


def test_the_connection_has_central_attached_read_only_foreign_keys_and_a_busy_timeout(
        fleet: Fleet, reg: Registry) -> None:
    path = add_tenant(reg, "aaron")
    with Router(fleet.central, busy_timeout=2.5) as router, \
            router.connect("aaron.yoursaas.com") as conn:
        assert main_file(conn) == str(path)
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2500
        assert conn.execute("SELECT value FROM central.settings WHERE key = "
                            "'support_email'").fetchone()[0] == "help@yoursaas.com"
        assert conn.execute("SELECT path FROM central.tenants").fetchone()[0] == str(path)
        # read-only twice over: attached with mode=ro, and the authorizer denies writes
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            conn.execute("UPDATE central.settings SET value = 'x'")
        with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
            conn.execute("INSERT INTO central.domains VALUES ('evil.com', 'aaron')")


def test_the_context_manager_commits_then_closes_and_rolls_back_on_error(
        fleet: Fleet, reg: Registry, router: Router) -> None:
    path = add_tenant(reg, "aaron")
    with router.connect("aaron.yoursaas.com") as conn:
        conn.execute("INSERT INTO t (v) VALUES ('kept')")
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")
    with pytest.raises(RuntimeError), router.connect("aaron.yoursaas.com") as conn:
        conn.execute("INSERT INTO t (v) VALUES ('dropped')")
        raise RuntimeError("request failed")
    assert fleet.rows(path, "SELECT v FROM t") == [("kept",)]


def test_a_commit_after_the_route_moved_is_rolled_back_and_refused(
        fleet: Fleet, reg: Registry, router: Router) -> None:
    old = add_tenant(reg, "aaron")
    new = make_db(reg.path.parent / "us" / "aaron.db", 3, wal=True)
    conn = router.connect("aaron.yoursaas.com")
    conn.execute("INSERT INTO t (v) VALUES ('late')")
    with reg.transaction():
        reg.update_tenant("aaron", region="us", path=new)
    with pytest.raises(TenantUnavailable, match="relocated while this request"):
        conn.commit()
    assert not conn.in_transaction
    conn.close()
    assert fleet.rows(old, "SELECT v FROM t") == []
    assert fleet.rows(new, "SELECT v FROM t") == []


@pytest.mark.parametrize("status", ["relocating", "archived", "suspended"])
def test_the_context_manager_refuses_to_commit_once_the_tenant_is_unservable(
        fleet: Fleet, reg: Registry, router: Router, status: str) -> None:
    path = add_tenant(reg, "aaron")
    with pytest.raises(TenantUnavailable, match=status), \
            router.connect("aaron.yoursaas.com") as conn:
        conn.execute("INSERT INTO t (v) VALUES ('late')")
        with reg.transaction():
            reg.update_tenant("aaron", status=status)
    assert fleet.rows(path, "SELECT v FROM t") == []


def test_begin_write_confirms_the_route_under_the_write_lock(reg: Registry, router: Router
                                                             ) -> None:
    add_tenant(reg, "aaron")
    with router.connect("aaron.yoursaas.com") as conn:
        conn.begin_write()
        assert conn.in_transaction
        conn.execute("INSERT INTO t (v) VALUES ('ok')")
    conn = router.connect("aaron.yoursaas.com")
    with reg.transaction():
        reg.update_tenant("aaron", status="relocating")
    with pytest.raises(TenantUnavailable, match="relocating"):
        conn.begin_write()
    assert not conn.in_transaction
    conn.close()


def test_a_write_waiting_on_a_relocation_is_rolled_back_not_written_to_the_retired_file(
        fleet: Fleet, reg: Registry, router: Router) -> None:
    # The relocation protocol (reconciler.relocate): mark relocating, take the source's
    # write lock, copy, switch the registry, retire the source, release the lock. An
    # application connection opened before all that, writing meanwhile, must not commit.
    source = add_tenant(reg, "aaron")
    dest = reg.path.parent / "us" / "aaron.db"
    retired = reg.path.parent / "_retired" / "aaron.db"
    opened, go = threading.Event(), threading.Event()
    outcome: list[str] = []

    def application() -> None:
        conn = router.connect("aaron.yoursaas.com")
        opened.set()
        go.wait()
        try:
            conn.execute("INSERT INTO t (v) VALUES ('late')")  # waits for the lock
            conn.commit()
            outcome.append("committed")
        except TenantUnavailable as exc:
            outcome.append(exc.reason)
        finally:
            conn.close()

    app = threading.Thread(target=application)
    app.start()
    opened.wait()
    with reg.transaction():
        reg.update_tenant("aaron", status="relocating")
    lock = sqlite3.connect(source, isolation_level=None)
    lock.execute("BEGIN IMMEDIATE")
    go.set()
    time.sleep(0.2)  # the application is now blocked on the write lock
    dest.parent.mkdir(parents=True)
    reader, copy = sqlite3.connect(source), sqlite3.connect(dest)
    reader.backup(copy)
    reader.close()
    copy.close()
    with reg.transaction():
        reg.update_tenant("aaron", region="us", path=dest, status="active")
    retired.parent.mkdir()
    os.rename(source, retired)
    lock.execute("ROLLBACK")
    lock.close()
    app.join()
    assert len(outcome) == 1 and "relocated while this request" in outcome[0]
    assert fleet.rows(retired, "SELECT v FROM t") == []
    assert fleet.rows(dest, "SELECT v FROM t") == []


def test_a_missing_registry_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    central = tmp_path / "data" / "central.db"
    central.parent.mkdir()
    with pytest.raises(RegistryUnavailable, match="reconcile"):
        Router(central)
    assert not central.exists()


def test_a_registry_without_tables_is_unavailable_not_not_found(tmp_path: Path) -> None:
    central = tmp_path / "central.db"
    sqlite3.connect(central).close()
    with Router(central) as router, pytest.raises(RegistryUnavailable) as exc:
        router.resolve("aaron.yoursaas.com")
    assert exc.value.http_status == 503


# --------------------------------------------------------------------------- freshness


def test_registry_changes_are_seen_on_the_next_call(reg: Registry, router: Router) -> None:
    add_tenant(reg, "aaron")
    assert router.resolve("aaron.yoursaas.com").status == "active"  # now cached
    with pytest.raises(TenantNotFound):
        router.resolve("bob.yoursaas.com")  # the miss is cached too

    bob = add_tenant(reg, "bob", region="us")
    assert router.resolve("bob.yoursaas.com").path == bob

    with reg.transaction():
        reg.update_tenant("aaron", status="relocating")
    with pytest.raises(TenantUnavailable, match="relocating"):
        router.connect("aaron.yoursaas.com")

    moved = make_db(reg.path.parent / "us" / "aaron.db", 3, wal=True)
    with reg.transaction():
        reg.update_tenant("aaron", region="us", path=moved, status="active")
    with router.connect("aaron.yoursaas.com") as conn:
        assert main_file(conn) == str(moved)

    with reg.transaction():
        reg.set_domain("bob.yoursaas.com", None)
    with pytest.raises(TenantNotFound):
        router.connect("bob.yoursaas.com")


def test_concurrent_threads_each_get_their_own_tenant_while_the_registry_changes(
        reg: Registry, router: Router) -> None:
    names = [f"t{i}" for i in range(6)]
    paths = {n: str(add_tenant(reg, n)) for n in names}
    stop = threading.Event()
    wrong: list[str] = []
    errors: list[BaseException] = []
    served = dict.fromkeys(names, 0)

    def worker(name: str) -> None:
        try:
            while not stop.is_set():
                try:
                    with router.connect(f"{name}.yoursaas.com") as conn:
                        if main_file(conn) != paths[name] or conn.tenant.name != name:
                            wrong.append(f"{name} -> {main_file(conn)}")
                        served[name] += 1
                except (TenantUnavailable, RegistryUnavailable):
                    pass  # refused (503) while its route flips under it: never wrong
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in names]
    for t in threads:
        t.start()
    flips = 0
    # keep invalidating the cache under the workers until each has been served a while
    while flips < 30 or min(served.values()) < 20:
        with reg.transaction():
            reg.update_tenant(names[flips % len(names)],
                              status="suspended" if flips // len(names) % 2 else "active")
        flips += 1
        assert flips < 100_000, (served, errors)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []
    assert wrong == []


def test_every_registry_status_is_either_served_or_refused_with_a_reason() -> None:
    from reconciler import registry, routing
    assert routing.SERVABLE.isdisjoint(routing.REASONS)
    assert routing.SERVABLE | set(routing.REASONS) == set(registry.STATUSES)
