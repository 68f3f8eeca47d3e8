"""``rollout.snapshot: replica`` in tenants.yaml (issue 14 item 5): accepted with
backups on, a located error with what to write without them. The put-back itself is
proven with real Litestream in tests/e2e/test_rollout_replica.py."""

from __future__ import annotations

from pathlib import Path

from tests.test_backup import WITH_BACKUP
from tests.test_desired import BASE, load, problems

OLD = "  rollout: {canary: 1, batch: 25, parallel: 4}\n"
ROLLOUT = "  rollout: {canary: 1, snapshot: replica}\n"


def test_snapshot_replica_takes_no_local_copy_and_puts_back_from_the_replica(
        tmp_path: Path) -> None:
    text = WITH_BACKUP.replace("{BACKUP}", "{replica: backups}").replace(OLD, ROLLOUT)
    rollout = load(tmp_path, text).settings.rollout
    assert rollout.from_replica and not rollout.snapshot
    plain = load(tmp_path, BASE).settings.rollout
    assert not plain.from_replica


def test_snapshot_replica_without_backups_is_a_located_error_saying_what_to_write(
        tmp_path: Path) -> None:
    text = BASE.replace(OLD, ROLLOUT)
    [p] = problems(tmp_path, text)
    assert p.line == text.splitlines().index(ROLLOUT.rstrip("\n")) + 1 and p.column
    assert "snapshot: replica needs backups" in str(p)
    assert "backup: {replica:" in str(p) and "snapshot: true" in str(p)
