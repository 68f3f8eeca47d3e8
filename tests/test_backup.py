"""The pure parts of backups (issue 14): settings.backup validation, replica URLs per
lineage, the Litestream config we generate, when a backup counts as good, the planner's
``no-backup`` report, and restore-point selection."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

import pytest

from reconciler import litestream, pitr
from reconciler.actions import Kind
from reconciler.backup import BackupSettings, BackupState, check_replica, lineage_url, nats_bucket
from reconciler.errors import InvalidInput, PermanentError
from reconciler.plan import plan
from tests.test_desired import BASE, load, problems
from tests.test_plan import catalog, desired, observed, row

WITH_BACKUP = BASE.replace("  interval: 60s\n", "  interval: 60s\n  backup: {BACKUP}\n")


def _backup(text: str) -> str:
    return WITH_BACKUP.replace("{BACKUP}", text)


def test_backup_settings_accept_litestream_schemes_and_make_plain_paths_file_urls(
        tmp_path: Path) -> None:
    d = load(tmp_path, _backup("{replica: backups, retention: 14d, sync_interval: 500ms}"))
    assert d.settings.backup == BackupSettings((tmp_path / "backups").as_uri(), 14 * 86400,
                                               0.5)
    assert d.settings.backup.threshold == 2.5  # 5 × sync_interval unless set
    for url in ("s3://bucket/tenants", "gs://b/p", "abs://acct@c/p", "sftp://h/srv",
                "nats://127.0.0.1:4222/tenants", "file:///srv/backups"):
        assert load(tmp_path, _backup(f"{{replica: '{url}'}}")).settings.backup is not None
    assert load(tmp_path, BASE).settings.backup is None  # off unless written


def test_bad_backup_settings_are_located_errors_with_what_to_write(tmp_path: Path) -> None:
    found = problems(tmp_path, _backup("{replica: 'ftp://h/x', retention: 5x, "
                                       "sync_interval: 0s, colour: red}"))
    text = "\n".join(str(p) for p in found)
    line = WITH_BACKUP.splitlines().index("  backup: {BACKUP}") + 1
    assert f"tenants.yaml:{line}:" in text
    assert "scheme 'ftp' is not one Litestream replicates to — use one of file, s3" in text
    assert "settings.backup.retention must be a duration" in text
    assert "settings.backup.sync_interval must be more than 0" in text
    assert "colour" in text
    assert all(p.line == line and p.column for p in found)
    missing = problems(tmp_path, _backup("{retention: 7d}"))
    assert "settings.backup needs a replica" in str(missing[0])


@pytest.mark.parametrize("url", ["s3://KEY:SECRET@bucket/x", "s3://b/x?secret-access-key=1",
                                 "file://relative/path", "nats://h:4222/"])
def test_replica_urls_with_credentials_or_no_place_are_refused(url: str) -> None:
    good, message, hint = check_replica(url, Path("/fleet"))
    assert good is None and message and hint


def test_each_lineage_replicates_to_its_own_place() -> None:
    assert lineage_url("file:///srv/b", "aaron", "L1") == "file:///srv/b/aaron/L1"
    assert lineage_url("s3://bkt/t?region=eu-west-1", "aaron", "L1") == \
        "s3://bkt/t/aaron/L1?region=eu-west-1"
    # Litestream's NATS client has no path prefix: a bucket per lineage
    url = lineage_url("nats://127.0.0.1:4222/tenants", "aaron", "L1")
    assert url == "nats://127.0.0.1:4222/tenants-aaron-L1"
    assert nats_bucket(url) == "tenants-aaron-L1" and nats_bucket("file:///x") is None


def test_generated_litestream_config_lists_each_file_with_its_replica_and_interval() -> None:
    s = BackupSettings("file:///srv/b", retention=3 * 86400, sync_interval=0.25)
    doc = json.loads(litestream.config_text(s, Path("/run/ls.sock"), [
        (Path("/data/eu/aaron.db"), "file:///srv/b/aaron/L1")]))
    assert doc["socket"] == {"enabled": True, "path": "/run/ls.sock", "permissions": 0o600}
    assert doc["dbs"] == [{"path": "/data/eu/aaron.db", "replica": {
        "url": "file:///srv/b/aaron/L1", "sync-interval": "250ms"}}]
    assert doc["snapshot"]["retention"] == "259200000ms"


def test_socket_path_falls_back_to_a_short_name_when_the_fleet_path_is_long() -> None:
    assert litestream.socket_path(Path("/srv/f/central.db")) == Path("/srv/f/.litestream.sock")
    long = Path("/srv/" + "x" * 120 + "/central.db")
    short = litestream.socket_path(long)
    assert len(str(short)) < 100 and short == litestream.socket_path(long)


def test_backup_is_good_only_when_synced_within_the_threshold() -> None:
    assert BackupState("a", None, 5, 100.0, 1.0).good(5.0)
    assert not BackupState("a", None, 5, 100.0, 9.0).good(5.0)
    assert not BackupState("a", None, error="replication is not running").good(5.0)


def test_plan_reports_tenants_without_a_good_backup_and_acts_on_nothing() -> None:
    d = desired({"aaron": {"region": "eu"}, "acme": {"region": "us"},
                 "hooli": {"region": "eu"}},
                backup=BackupSettings("file:///b", sync_interval=1.0))
    obs = observed([row("aaron"), row("acme", "us"), row("hooli")],
                   {"eu/aaron.db": 3, "us/acme.db": 3, "eu/hooli.db": 3})
    obs = replace(obs, backups=MappingProxyType({
        "aaron": BackupState("aaron", None, 7, 999.0, 1.0),
        "acme": BackupState("acme", None, 7, 900.0, 100.0),
        "hooli": BackupState("hooli", None, error="replication is not running")}))
    p = plan(d, obs, catalog())
    assert [(a.kind, a.tenant) for a in p.actions] == [(Kind.NO_BACKUP, "acme"),
                                                       (Kind.NO_BACKUP, "hooli")]
    assert not p.changes and len(p.problems) == 2  # reported; nothing to change
    assert "lags 100s (threshold 5s)" in p.actions[0].detail
    assert "replication is not running" in p.actions[1].detail
    # backups off: no observation, no report
    assert plan(replace(d, settings=replace(d.settings, backup=None)),
                replace(obs, backups=None), catalog()).actions == ()


def _point(lineage: str, earliest: float | None, latest: float | None) -> pitr.RestorePoints:
    return pitr.RestorePoints(lineage, f"file:///b/a/{lineage}", "/d/eu/a.db", "", None,
                              earliest, latest, 1, 1)


def test_restore_point_is_the_newest_lineage_that_existed_at_the_time() -> None:
    found = [_point("L1", 1000.0, 2000.0), _point("L2", 3000.0, 4000.0)]
    at = datetime.fromtimestamp(2500, UTC)
    assert pitr.choose(found, at).lineage == "L1"
    assert pitr.choose(found, datetime.fromtimestamp(3500, UTC)).lineage == "L2"
    with pytest.raises(PermanentError, match="no restore point at or before"):
        pitr.choose(found, datetime.fromtimestamp(500, UTC))
    # past a lineage's last capture, its newest state is the state at that time
    assert pitr.target(found[0], at) is None
    assert pitr.target(found[0], datetime.fromtimestamp(1500, UTC)) is not None


def test_restore_time_is_iso_8601_utc_unless_an_offset_is_given() -> None:
    assert pitr.parse_time("2026-11-30T10:40:00Z") == datetime(2026, 11, 30, 10, 40, tzinfo=UTC)
    assert pitr.parse_time("2026-11-30 10:40").tzinfo == UTC
    assert pitr.parse_time("2026-11-30T11:40:00+01:00").timestamp() == \
        datetime(2026, 11, 30, 10, 40, tzinfo=UTC).timestamp()
    with pytest.raises(InvalidInput, match="write for example 2026-11-30T10:40:00Z"):
        pitr.parse_time("yesterday")
