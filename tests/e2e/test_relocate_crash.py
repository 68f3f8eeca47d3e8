"""Crash safety of relocation (issue 3, DESIGN §5): a real ``reconcile`` is SIGKILLed at
every phase boundary (and at random moments over a mixed plan), then run again; the
fleet must converge with every row intact, exactly one live file per tenant, and a
registry that agrees with the files."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RECONCILE, Fleet

CRASH_POINTS = ("relocate:before-copy", "relocate:during-copy", "relocate:after-copy",
                "relocate:after-verify", "relocate:after-rename", "relocate:after-switch",
                "relocate:during-retire")

Rows = dict[str, list[tuple[Any, ...]]]


def fill(path: Path, notes: int, tag: str = "") -> None:
    """Give a tenant real content: users and enough notes that a copy takes many steps."""
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT INTO users (email) VALUES (?)",
                         [(f"user{i}.{tag}@example.com",) for i in range(20)])
        conn.executemany("INSERT INTO notes (user_id, title, body) VALUES (?, ?, ?)",
                         [(i % 20 + 1, f"note {i}", f"{tag}{i}" * 60) for i in range(notes)])
    conn.close()


def content(fleet: Fleet, path: Path) -> Rows:
    """The rows that must survive anything (columns every schema version has)."""
    return {"users": fleet.rows(path, "SELECT id, email, created_at FROM users ORDER BY id"),
            "notes": fleet.rows(path, "SELECT id, user_id, title, body, created_at FROM notes "
                                      "ORDER BY id")}


def seed(fleet: Fleet, regions: dict[str, str], notes: int = 800, **settings: Any) -> dict[
        str, Rows]:
    fleet.declare({t: {"region": r} for t, r in regions.items()}, **settings)
    done = fleet.run("apply")
    assert done.returncode == 0, done.stdout + done.stderr
    before = {}
    for t, r in regions.items():
        fill(fleet.path(t, r), notes, tag=t)
        before[t] = content(fleet, fleet.path(t, r))
    return before


def assert_converged(fleet: Fleet, want: dict[str, str], before: dict[str, Rows],
                     version: int | None = None) -> None:
    """Plan empty; one live file per tenant where the registry says; rows unchanged."""
    plan = fleet.run("plan")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    rows = {r[0]: r for r in fleet.registry(
        "SELECT name, region, path, status, schema_version FROM tenants")}
    assert fleet.registry("SELECT tenant, action, phase FROM journal") == []
    regions = sorted(p.name for p in fleet.data.iterdir()
                     if p.is_dir() and not p.name.startswith("_"))
    for tenant, region in want.items():
        _name, reg_region, path, status, schema = rows[tenant]
        assert (reg_region, status) == (region, "active"), rows[tenant]
        assert Path(path) == fleet.path(tenant, region)
        live = [r for r in regions if os.path.lexists(fleet.path(tenant, r))]
        assert live == [region], f"{tenant}: live files in {live}"
        assert fleet.user_version(Path(path)) == schema
        if version is not None:
            assert schema == version
        if tenant in before:
            assert content(fleet, Path(path)) == before[tenant], f"{tenant}: rows differ"
    # relocation's and restore's temp copies are gone (a killed create may leave its own
    # `.creating` temp if the tenant is then created in another region: never in service)
    leftovers = [p for r in regions for p in (fleet.data / r).iterdir()
                 if p.name.startswith(".") and ".creating" not in p.name]
    assert leftovers == []


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_each_relocation_phase_then_rerun_converges_with_every_row(
        fleet: Fleet, point: str) -> None:
    before = seed(fleet, {"aaron": "eu", "bob": "eu"}, schema=2)
    # one pass both relocates aaron and migrates everyone to v3
    fleet.declare({"aaron": {"region": "us"}, "bob": {"region": "eu"}})
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert fleet.registry("SELECT phase FROM journal WHERE tenant = 'aaron'") != []
    again = fleet.run("apply")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_converged(fleet, {"aaron": "us", "bob": "eu"}, before, version=3)
    retired = list((fleet.data / "_retired").glob("aaron-eu-*.db"))
    assert len(retired) == 1 and content(fleet, retired[0]) == before["aaron"]


# the default run kills the four workers when the first is mid-copy; the slow run adds two
# later phases (each also killed, one relocation at a time, by the default test above)
@pytest.mark.parametrize("point", ["relocate:during-copy",
                                   pytest.param("relocate:after-verify", marks=pytest.mark.slow),
                                   pytest.param("relocate:after-switch", marks=pytest.mark.slow)])
def test_sigkill_while_relocations_run_at_once_then_rerun_converges(
        fleet: Fleet, point: str) -> None:
    """Four relocations in flight together (``parallel: 4``): the first worker to reach
    the point kills the process while the others are anywhere in their own phases."""
    names = ("aaron", "bob", "carol", "dave")
    before = seed(fleet, dict.fromkeys(names, "eu"), notes=1500, rollout={"parallel": 4})
    fleet.declare({n: {"region": "us"} for n in names}, rollout={"parallel": 4})
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    again = fleet.run("apply")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_converged(fleet, dict.fromkeys(names, "us"), before)
    for name in names:
        retired = list((fleet.data / "_retired").glob(f"{name}-eu-*.db"))
        assert len(retired) == 1 and content(fleet, retired[0]) == before[name]


def test_relocations_at_once_end_exactly_where_one_at_a_time_ends(tmp_path: Path) -> None:
    ends = []
    for parallel in (1, 3):
        fleet = Fleet(tmp_path / f"p{parallel}")
        fleet.root.mkdir()
        fleet.use_shipped_migrations()
        names = [f"t{i}" for i in range(6)]
        before = seed(fleet, {n: "eu" if i % 2 else "us" for i, n in enumerate(names)},
                      notes=400, rollout={"parallel": parallel})
        want = {n: "us" if i % 2 else "eu" for i, n in enumerate(names)}
        fleet.declare({n: {"region": r} for n, r in want.items()},
                      rollout={"parallel": parallel})
        done = fleet.run("apply", "--log-format", "json")
        assert done.returncode == 0, done.stdout + done.stderr
        assert_converged(fleet, want, before)  # every row as it was, in the new region
        ends.append((fleet.registry("SELECT name, region, status, schema_version FROM "
                                    "tenants ORDER BY name"),
                     fleet.registry("SELECT tenant, action, outcome FROM events WHERE "
                                    "action = 'relocate' ORDER BY tenant"),
                     sorted(p.name.split("-")[0] for p in (fleet.data / "_retired").iterdir())))
    assert ends[0] == ends[1]


def test_relocation_killed_before_rename_rolls_back_when_the_region_is_reverted(
        fleet: Fleet) -> None:
    before = seed(fleet, {"aaron": "eu"})
    fleet.declare({"aaron": {"region": "us"}})
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": "relocate:after-verify"})
    assert killed.returncode == -signal.SIGKILL
    assert fleet.registry("SELECT status FROM tenants") == [("relocating",)]
    fleet.declare({"aaron": {"region": "eu"}})  # the operator changed their mind
    again = fleet.run("apply")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_converged(fleet, {"aaron": "eu"}, before)
    assert not list((fleet.data / "us").glob("*aaron*"))  # the unplaced copy is gone
    history = fleet.run("history", "aaron", "--json")
    assert "rolled_back" in history.stdout


def test_relocation_killed_after_rename_then_reverted_ends_where_wanted_in_one_run(
        fleet: Fleet) -> None:
    before = seed(fleet, {"aaron": "eu"}, schema=2)
    fleet.declare({"aaron": {"region": "us"}}, schema=2)
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": "relocate:after-rename"})
    assert killed.returncode == -signal.SIGKILL
    fleet.declare({"aaron": {"region": "eu"}})  # reverted, and a migration asked for
    again = fleet.run("apply")  # finishes to us (the copy is placed), then back to eu
    assert again.returncode == 0, again.stdout + again.stderr
    assert_converged(fleet, {"aaron": "eu"}, before, version=3)
    retired = sorted((fleet.data / "_retired").glob("aaron-*.db"))
    assert [content(fleet, p) for p in retired] == [before["aaron"]] * 2


def test_killed_before_the_journal_names_the_temp_leaves_no_file_in_either_region(
        fleet: Fleet) -> None:
    """The window the random loop hit about once in five runs: a kill after the
    destination was checked but before the journal row naming the temp was written,
    then the operator reverts. Nothing may remain that no run accounts for."""
    before = seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=50, prune="archive")
    bob = {"bob": {"region": "eu"}}
    fleet.declare({"aaron": {"region": "us"}} | bob, prune="archive")
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": "relocate:before-journal"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert fleet.registry("SELECT * FROM journal") == []
    fleet.declare({"aaron": {"region": "eu"}} | bob, prune="archive")  # reverted
    again = fleet.run("apply")
    assert again.returncode == 0, again.stdout + again.stderr
    assert_converged(fleet, {"aaron": "eu", "bob": "eu"}, before)  # no dot-file anywhere

    # the same window in a restore from the archive (declared again, then not)
    fleet.declare(bob, prune="archive")
    assert fleet.run("apply").returncode == 0
    fleet.declare({"aaron": {"region": "us"}} | bob, prune="archive")
    killed = fleet.run("apply", env={"RECONCILE_CRASH_AT": "restore:before-journal"})
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    fleet.declare(bob, prune="archive")
    again = fleet.run("apply")
    assert again.returncode == 0, again.stdout + again.stderr
    assert fleet.registry("SELECT status FROM tenants WHERE name = 'aaron'") == [("archived",)]
    assert [p.name for p in (fleet.data / "us").iterdir()] == []
    assert sorted(p.name for p in (fleet.data / "eu").iterdir()) == ["bob.db"]


def _kill_loop(fleet: Fleet, rounds: int, rng: random.Random) -> int:
    """Alternate desired states (relocations both ways, creates, migrations, a tenant
    archived now and then) and SIGKILL each pass at a random moment; then converge on
    the final state, where every tenant is declared (the archived ones are restored)."""
    names = [f"t{i}" for i in range(6)]
    first = {n: "eu" if i % 2 else "us" for i, n in enumerate(names)}
    before = seed(fleet, first, notes=3000, schema=1)
    start = time.monotonic()
    full = fleet.run("apply")  # a no-op pass: how long one takes here
    span = max(0.3, (time.monotonic() - start) * 3)
    created: list[str] = []
    interrupted = 0  # passes killed while an operation was journaled
    for i in range(rounds):
        flip = {n: ("us" if r == "eu" else "eu") if (i + j) % 3 else r
                for j, (n, r) in enumerate(first.items())}
        if i % 2:
            created.append(f"new{i}")  # creates, in changing regions
        gone = names[i % len(names)] if i % 4 == 3 else None  # archived, later restored
        fleet.declare({n: {"region": r} for n, r in flip.items() if n != gone}
                      | {n: {"region": "eu" if i % 4 == 1 else "us"} for n in created},
                      schema=1 + i % 3, prune="archive")
        proc = subprocess.Popen([RECONCILE, "apply"], cwd=fleet.root,
                                env={**os.environ, "RECONCILE_CONFIG": str(fleet.config)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.1, span))  # 0.1 s: the interpreter is still starting
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        interrupted += bool(fleet.registry("SELECT 1 FROM journal"))
    final = {n: "eu" for n in names + created}
    fleet.declare({n: {"region": r} for n, r in final.items()})
    done = fleet.run("apply")
    assert done.returncode == 0, done.stdout + done.stderr + full.stdout
    assert_converged(fleet, final, before, version=3)
    print(f"{interrupted} of {rounds} passes were killed mid-operation")
    return interrupted


def test_random_sigkills_over_a_mixed_plan_converge_without_losing_rows(fleet: Fleet) -> None:
    _kill_loop(fleet, rounds=12, rng=random.Random(3))


@pytest.mark.slow
def test_random_sigkills_over_a_mixed_plan_converge_long_run(fleet: Fleet) -> None:
    interrupted = _kill_loop(fleet, rounds=80,
                             rng=random.Random(int(os.environ.get("SEED", "7"))))
    assert interrupted > 0  # the loop did exercise resumption


# --------------------------------------------------------------------------- bad input


def test_relocation_to_an_undeclared_region_is_invalid_input_and_changes_nothing(
        fleet: Fleet) -> None:
    seed(fleet, {"aaron": "eu"}, notes=10)
    before = fleet.digests()
    fleet.declare({"aaron": {"region": "ap"}})
    bad = fleet.run("apply")
    assert bad.returncode == 1
    assert "ap" in bad.stderr and "nothing was changed" in bad.stderr
    assert fleet.digests() == before


def test_region_symlinked_out_of_the_data_tree_blocks_only_its_tenants(
        fleet: Fleet, tmp_path: Path) -> None:
    before = seed(fleet, {"aaron": "eu", "bob": "eu"}, notes=10)
    outside = tmp_path / "outside"
    outside.mkdir()
    (fleet.data / "us").symlink_to(outside)
    fleet.declare({"aaron": {"region": "us"}, "bob": {"region": "eu"},
                   "carol": {"region": "us"}, "dave": {"region": "eu"}})
    done = fleet.run("apply")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "outside the data directory" in done.stdout
    assert list(outside.iterdir()) == []  # nothing written through the link
    rows = dict(fleet.registry("SELECT name, region || ' ' || status FROM tenants"))
    assert rows == {"aaron": "eu active", "bob": "eu active", "dave": "eu active"}
    assert content(fleet, fleet.path("aaron", "eu")) == before["aaron"]


def test_unwritable_destination_fails_that_tenant_only_and_changes_nothing_for_it(
        fleet: Fleet, tmp_path: Path) -> None:
    locked = tmp_path / "us"
    locked.mkdir()
    if subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")  # root ignores permission bits
    try:
        config = {"version": 1, "settings": {"domain": "yoursaas.com"},
                  "regions": {"eu": {}, "ap": {}, "us": {"path": str(locked)}}}
        fleet.write_config({**config, "tenants": {"aaron": {"region": "eu"},
                                                  "bob": {"region": "eu"}}})
        assert fleet.run("apply").returncode == 0
        fill(fleet.path("aaron", "eu"), 50, "a")
        before = content(fleet, fleet.path("aaron", "eu"))
        fleet.write_config({**config, "tenants": {"aaron": {"region": "us"},
                                                  "bob": {"region": "ap"}}})
        done = fleet.run("apply")
        assert done.returncode == 3, done.stdout + done.stderr
        assert "failed   relocate  aaron" in done.stdout and str(locked) in done.stdout
        assert "Operation not permitted" in done.stdout
        rows = dict(fleet.registry("SELECT name, region || ' ' || status FROM tenants"))
        assert rows == {"aaron": "eu active", "bob": "ap active"}  # bob proceeded
        assert fleet.registry("SELECT * FROM journal") == []
        assert content(fleet, fleet.path("aaron", "eu")) == before
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert list(locked.iterdir()) == []


def test_relocation_across_filesystems_copies_both_ways(fleet: Fleet) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(fleet.root).st_dev:
        pytest.skip("no second filesystem here")
    far = shm / f"reconciler-{os.getpid()}-{fleet.root.parent.name}"
    config = {"version": 1, "settings": {"domain": "yoursaas.com"},
              "regions": {"eu": {}, "us": {"path": str(far / "us")}}}
    try:
        fleet.write_config({**config, "tenants": {"aaron": {"region": "eu"}}})
        assert fleet.run("apply").returncode == 0
        fill(fleet.path("aaron", "eu"), 400, "a")
        before = content(fleet, fleet.path("aaron", "eu"))
        for region, path in (("us", far / "us" / "aaron.db"),
                             ("eu", fleet.path("aaron", "eu"))):
            fleet.write_config({**config, "tenants": {"aaron": {"region": region}}})
            done = fleet.run("apply")
            assert done.returncode == 0, done.stdout + done.stderr
            assert fleet.registry("SELECT region, path FROM tenants") == [(region, str(path))]
            assert content(fleet, path) == before
        assert not (far / "us" / "aaron.db").exists()
        retired = sorted((fleet.data / "_retired").glob("aaron-*.db"))
        assert [content(fleet, p) for p in retired] == [before, before]  # eu's and us's
    finally:
        for p in sorted(far.rglob("*"), reverse=True):
            p.unlink() if not p.is_dir() else p.rmdir()
        if far.exists():
            far.rmdir()
