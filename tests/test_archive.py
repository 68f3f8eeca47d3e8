"""Names and ages of archived and retired copies: what restore finds and gc may delete."""

from __future__ import annotations

import os
import time
from pathlib import Path

from reconciler import gc, relocate
from reconciler.observe import list_archives
from tests.conftest import make_db


def test_archive_names_round_trip_through_the_listing_even_for_dashed_tenants(
        tmp_path: Path) -> None:
    made = {name: relocate.free_name(tmp_path, name) for name in ("acme", "acme-eu", "a-b-c")}
    for path in made.values():
        make_db(path, 1)
    (tmp_path / ".acme-x.db.tmp").write_bytes(b"")  # an unfinished copy is not an archive
    assert {k: list(v) for k, v in list_archives(tmp_path).items()} == {
        name: [path] for name, path in made.items()}


def test_newer_archives_sort_last(tmp_path: Path) -> None:
    first = relocate.free_name(tmp_path, "acme")
    make_db(first, 1)
    second = relocate.free_name(tmp_path, "acme")
    make_db(second, 1)
    assert first != second and list_archives(tmp_path)["acme"] == (first, second)


def test_gc_ages_come_from_the_retirement_stamp_not_the_mtime(tmp_path: Path) -> None:
    now = time.time()
    old = make_db(tmp_path / f"a-eu-{relocate.stamp(now - 40 * 86400)}.db", 1)
    new = make_db(tmp_path / f"b-eu-{relocate.stamp(now - 3600)}.db", 1)
    os.utime(new, (now - 90 * 86400, now - 90 * 86400))  # rename keeps an old mtime
    found = {c.path: c for c in gc.scan(tmp_path, 30 * 86400, set(), now)}
    assert found[old].delete and not found[new].delete
    assert found[new].reason == "too recent"


def test_gc_falls_back_to_mtime_and_ignores_links_dirs_and_temps(tmp_path: Path) -> None:
    now = time.time()
    plain = make_db(tmp_path / "copied-by-hand.db", 1)
    os.utime(plain, (now - 10 * 86400, now - 10 * 86400))
    (tmp_path / "link.db").symlink_to(plain)
    (tmp_path / "dir.db").mkdir()
    (tmp_path / ".x.db").write_bytes(b"")
    found = gc.scan(tmp_path, 86400, set(), now)
    assert [(c.path.name, c.delete) for c in found] == [("copied-by-hand.db", True)]


def test_gc_keeps_what_an_unfinished_operation_refers_to(tmp_path: Path) -> None:
    now = time.time()
    path = make_db(tmp_path / f"a-eu-{relocate.stamp(now - 40 * 86400)}.db", 1)
    [c] = gc.scan(tmp_path, 86400, {str(path)}, now)
    assert not c.delete and "unfinished" in c.reason


def test_gc_report_counts_and_sizes(tmp_path: Path) -> None:
    now = time.time()
    path = make_db(tmp_path / "_retired" / f"a-eu-{relocate.stamp(now - 7200)}.db", 1, rows=50)
    found = gc.scan(tmp_path / "_retired", 3600, set(), now)
    text = gc.lines(found, 3600, True, tmp_path)
    assert text[0].startswith(f"would delete  _retired/{path.name}  ")
    assert "(2h ago)" in text[0]
    assert text[-1].startswith("gc: would delete 1 retired file (")
    assert gc.human_size(1536) == "1.5 KiB" and gc.human_size(10) == "10 B"
