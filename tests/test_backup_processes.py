"""How a fleet is split across Litestream processes (issue 14 at 10k tenants): which
process a tenant belongs to, how many processes a fleet needs, and the setting that
chooses the count. Pure rules; the processes themselves are proven end to end in
tests/e2e/test_backups_processes.py."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from reconciler.backup import (
    FD_RESERVE,
    FDS_PER_DB,
    MAX_PROCESSES,
    PER_PROCESS_MAX,
    per_process,
    process_count,
    shard_of,
)
from tests.test_backup import WITH_BACKUP
from tests.test_desired import load, problems

NAMES = [f"tenant{i:05d}" for i in range(10_000)]


def test_a_tenants_process_is_the_same_in_every_python_process_whatever_the_hash_seed(
        ) -> None:
    here = [shard_of(n, 5) for n in NAMES[:200]]
    code = ("from reconciler.backup import shard_of; "
            "print([shard_of(f'tenant{i:05d}', 5) for i in range(200)])")
    for seed in ("1", "4242"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        assert out.stdout.strip() == str(here)
    assert shard_of("acme", 1) == 0 and shard_of("acme", 7) == shard_of("acme", 7)


def test_tenants_spread_evenly_over_the_processes() -> None:
    counts = Counter(shard_of(n, 5) for n in NAMES)
    assert set(counts) == {0, 1, 2, 3, 4}
    assert max(counts.values()) < 1.1 * min(counts.values())


def test_the_process_count_keeps_each_process_under_its_descriptor_limit() -> None:
    # the machine's 20,000-descriptor limit: one process stalled at ~4,000 databases
    assert per_process(20_000) == PER_PROCESS_MAX
    assert process_count(None, 10_000, 20_000) == 5
    assert process_count(None, 1_000, 20_000) == 1
    assert process_count(None, 0, 20_000) == 1
    # a low limit (1024, an unraised default) holds fewer databases per process
    assert per_process(1024) == (1024 - FD_RESERVE) // FDS_PER_DB
    assert process_count(None, 500, 1024) == -(-500 // per_process(1024))
    assert process_count(None, 1_000_000, 1024) == MAX_PROCESSES  # capped
    for files in (1, 1999, 2000, 2001, 9_999, 10_001):
        n = process_count(None, files, 20_000)
        assert -(-files // n) * FDS_PER_DB + FD_RESERVE <= 20_000  # each under the limit
        assert n == 1 or -(-files // (n - 1)) > PER_PROCESS_MAX  # and no more than needed
    assert process_count(3, 10_000, 20_000) == 3  # the operator's choice wins


def test_backup_processes_setting_is_auto_or_a_bounded_whole_number(tmp_path: Path) -> None:
    def with_(text: str) -> str:
        return WITH_BACKUP.replace("{BACKUP}", "{replica: backups, processes: " + text + "}")
    assert load(tmp_path, with_("4")).settings.backup.processes == 4  # type: ignore[union-attr]
    assert load(tmp_path, with_("auto")).settings.backup.processes is None  # type: ignore[union-attr]
    line = WITH_BACKUP.splitlines().index("  backup: {BACKUP}") + 1
    for bad, says in (("0", "from 1 to 64, got 0"), ("many", "must be a whole number"),
                      ("65", "from 1 to 64, got 65")):
        [p] = problems(tmp_path, with_(bad))
        assert p.line == line and p.column and "settings.backup.processes" in str(p)
        assert says in str(p), str(p)
