"""The ``reconcile`` command: argument parsing, output, exit codes — nothing else.

Exit codes (DESIGN §8): apply 0 converged / 1 invalid or error / 3 failures or
problems left; plan 0 nothing to do / 2 changes pending / 1 invalid; status 0 in
sync / 2 drift; validate, history, route 0 / 1; daemon 0 after SIGTERM/SIGINT, 128+n
after a second one.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from reconciler import engine, log, progress, render, routing
from reconciler import migrations as migrations_mod
from reconciler import status as status_mod
from reconciler.durations import parse_duration
from reconciler.errors import InvalidInput, ReconcileError
from reconciler.registry import Registry

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_PROBLEMS = 0, 1, 2, 3


def _common(p: argparse.ArgumentParser, sub: bool) -> None:
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if sub else {}
    p.add_argument("-c", "--config", help="desired state file (default ./tenants.yaml, "
                   "env RECONCILE_CONFIG)", **({"default": None} | d))
    p.add_argument("--json", action="store_true", help="machine-readable output",
                   **({"default": False} | d))
    p.add_argument("--log-format", choices=("console", "json"),
                   help="default: console on a terminal, JSON lines otherwise",
                   **({"default": None} | d))
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   **({"default": "info"} | d))


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 (invalid input), not argparse's 2, which means "changes
    pending" to scripts running ``reconcile plan``."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="reconcile",
        description="Converge a fleet of per-tenant SQLite databases to tenants.yaml.")
    _common(p, sub=False)
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--no-wait", action="store_true",
                   help="exit at once if another reconciler holds the lock")
    p.add_argument("--retry-failed", action="store_true",
                   help="retry failed tenants and halted rollouts now")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    a = sub.add_parser("apply", help="one pass: observe, plan, apply (default)")
    _common(a, sub=True)
    a.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS)
    a.add_argument("--no-wait", action="store_true", default=argparse.SUPPRESS)
    a.add_argument("--retry-failed", action="store_true", default=argparse.SUPPRESS)
    _common(sub.add_parser("plan", help="print the plan, change nothing"), sub=True)
    _common(sub.add_parser("status", help="desired vs actual, per tenant"), sub=True)
    _common(sub.add_parser("validate", help="check tenants.yaml and migrations only"),
            sub=True)
    h = sub.add_parser("history", help="the events table, newest first")
    _common(h, sub=True)
    h.add_argument("tenant", nargs="?")
    h.add_argument("-n", "--limit", type=int, default=50)
    dm = sub.add_parser("daemon", help="keep the fleet converged (systemd Type=notify service)")
    _common(dm, sub=True)
    dm.add_argument("--git-pull", action="store_true",
                    help="GitOps pull mode: every interval fast-forward the clone holding "
                    "tenants.yaml to its remote branch (also on with a settings.git block)")
    r = sub.add_parser("route", help="which tenant and file a host resolves to")
    _common(r, sub=True)
    r.add_argument("host", help="a Host header value, e.g. aaron.yoursaas.com")
    r.add_argument("--min-schema", type=int, default=None, metavar="N",
                   help="also fail unless the tenant is at schema N or later")
    r.add_argument("--central", default=None, metavar="PATH",
                   help="the registry to read (default: settings.central of tenants.yaml)")
    rs = sub.add_parser("restore", help="verify a file and put it in service for a missing "
                        "tenant")
    _common(rs, sub=True)
    rs.add_argument("tenant")
    how = rs.add_mutually_exclusive_group(required=True)
    how.add_argument("--from", dest="source", metavar="FILE",
                     help="a retired or archived copy, or a backup (copied, never moved)")
    how.add_argument("--at", metavar="TIME", help="point-in-time restore from the tenant's "
                     "Litestream replica, e.g. 2026-11-30T10:40:00Z (UTC unless an offset "
                     "is given); the file it replaces is retired")
    rs.add_argument("--to", metavar="FILE", help="with --at: write the restored copy to FILE "
                    "(new) for inspection; the live tenant is not touched")
    rs.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                    help="with --at: restore and verify a scratch copy, change nothing")
    rs.add_argument("--no-wait", action="store_true", default=argparse.SUPPRESS)
    bk = sub.add_parser("backups", help="a tenant's restore points (Litestream replicas)")
    _common(bk, sub=True)
    bk.add_argument("tenant")
    g = sub.add_parser("gc", help="delete retired copies older than a duration (the only "
                       "command that deletes)")
    _common(g, sub=True)
    g.add_argument("--retired-older-than", required=True, metavar="DURATION",
                   help="e.g. 30d, 12h; copies retired at least this long ago are deleted")
    g.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                   help="list what would be deleted, delete nothing")
    g.add_argument("--no-wait", action="store_true", default=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    command = args.command or ("plan" if args.dry_run else "apply")
    if command == "apply" and getattr(args, "dry_run", False):
        command = "plan"
    logger = log.configure(args.log_format, args.log_level)
    handler = COMMANDS[command]
    try:
        code: int = handler(args, logger)
        return code
    except InvalidInput as exc:
        _err(f"invalid input — nothing was changed ({len(exc.problems)} problem"
             f"{'s' if len(exc.problems) != 1 else ''}):")
        for problem in exc.problems:
            _err(f"  {problem}")
        return EXIT_ERROR
    except ReconcileError as exc:  # LockHeld, RetryableError, PermanentError, routing
        _err(f"error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _out(lines: Sequence[str] | str) -> None:
    print(lines if isinstance(lines, str) else "\n".join(lines))


def cmd_apply(args: argparse.Namespace, logger: Any) -> int:
    inputs = engine.load(engine.config_path(args.config))
    line = progress.ProgressLine(sys.stderr)  # draws only on a terminal
    try:
        result = engine.run_pass(inputs, progress.LineSafeLogger(logger, line) if line.enabled
                                 else logger, wait=not args.no_wait,
                                 retry_failed=args.retry_failed,
                                 progress=line if line.enabled else None)
    finally:
        line.close()
    summary = engine.summary(result)
    if args.json:
        _out(render.dumps({"plan": render.plan_json(result.plan), "summary": summary,
                           "halted": result.halted,
                           "outcomes": [o.__dict__ for o in result.outcomes]}))
    else:
        _out(render.result_lines(result, summary))
    return EXIT_OK if result.ok else EXIT_PROBLEMS


def cmd_plan(args: argparse.Namespace, logger: Any) -> int:
    inputs = engine.load(engine.config_path(args.config))
    the_plan, _ = engine.preview(inputs, retry_failed=getattr(args, "retry_failed", False))
    if args.json:
        _out(render.dumps(render.plan_json(the_plan)))
    else:
        _out(render.plan_lines(the_plan, inputs.config.name,
                               inputs.desired.settings.rollout))
    return EXIT_OK if the_plan.is_empty else EXIT_CHANGES


def cmd_status(args: argparse.Namespace, logger: Any) -> int:
    inputs = engine.load(engine.config_path(args.config))
    the_plan, observed = engine.preview(inputs)
    rows = status_mod.rows(inputs.desired, observed, the_plan, inputs.catalog)
    with Registry.reading(inputs.desired.settings.central) as reg:
        last = reg.last_run() if reg is not None else None
    in_sync = all(r.in_sync for r in rows) and the_plan.is_empty
    backups = status_mod.backup_summary(inputs.desired, observed)
    if args.json:
        _out(render.dumps({"in_sync": in_sync, "revision": inputs.revision, "last_run": last,
                           "tenants": [r.__dict__ | {"in_sync": r.in_sync} for r in rows]}
                          | ({"backups": backups.__dict__} if backups else {})))
    else:
        def ver(v: int | None) -> str:
            return "-" if v is None else f"v{v}"
        _out(render.table(
            ("TENANT", "WANT", "REGION", "VERSION", "STATUS", "PENDING")
            + (("BACKUP",) if backups else ()),
            ((r.tenant, f"{r.want_region} {ver(r.want_version)}", r.region, ver(r.version),
              r.status, r.pending or "in sync")
             + ((render.backup_cell(r.backup_txid, r.backup_lag),) if backups else ())
             for r in rows)))
        if backups is not None:
            _out(backups.line())
        if last is not None:
            _out(f"last pass: {last['summary']} (finished {last['finished_at']})")
        else:
            _out("last pass: none recorded")
        _out(f"desired state: {inputs.config.name} @ {inputs.revision}"
             f" — {'in sync' if in_sync else 'drift'}")
    return EXIT_OK if in_sync else EXIT_CHANGES


def cmd_validate(args: argparse.Namespace, logger: Any) -> int:
    inputs = engine.load(engine.config_path(args.config))
    problems = migrations_mod.dry_run(inputs.catalog)
    with Registry.reading(inputs.desired.settings.central) as reg:
        if reg is not None:
            try:
                engine.verify_catalog(inputs, reg.snapshot())
            except InvalidInput as exc:
                problems.extend(exc.problems)
    if problems:
        raise InvalidInput(problems)
    d = inputs.desired
    _out(f"{inputs.config}: ok — {len(d.tenants)} tenants in {len(d.regions)} regions; "
         f"{inputs.catalog.latest} migrations (latest v{inputs.catalog.latest}), "
         f"{len(inputs.catalog.checks)} health checks")
    return EXIT_OK


def cmd_history(args: argparse.Namespace, logger: Any) -> int:
    inputs = engine.load(engine.config_path(args.config))
    with Registry.reading(inputs.desired.settings.central) as reg:
        events = reg.events(args.tenant, args.limit) if reg is not None else []
    if args.json:
        _out(render.dumps(events))
        return EXIT_OK
    if not events:
        _out("no events recorded" + (f" for {args.tenant}" if args.tenant else ""))
        return EXIT_OK

    def describe(e: dict[str, Any]) -> str:
        d = e["detail"]
        parts = []
        if "from_version" in d or "to_version" in d:
            parts.append(f"v{d.get('from_version', '?')} → v{d.get('to_version', '?')}")
        if e["action"] == "wave":  # a rollout's summary event
            parts.append((f"wave {d['wave']}/{d['waves']}" if "wave" in d else
                          f"busy retry {d.get('retry')}") + f": {len(d.get('tenants', []))} "
                         f"tenants, {d.get('failed', 0)} failed ({d.get('failures', 0)} in "
                         f"the rollout)" + (" — halted" if d.get("halted") else ""))
        for key in ("error", "reason", "domain", "key"):
            if key in d:
                parts.append(f"{key}: {d[key]}")
        return "; ".join(parts)

    _out(render.table(
        ("ID", "AT", "REVISION", "TENANT", "ACTION", "OUTCOME", "MS", "DETAIL"),
        ((e["id"], e["at"], (e["revision"] or "")[:12], e["tenant"] or "-", e["action"],
          e["outcome"], e["duration_ms"] if e["duration_ms"] is not None else "",
          describe(e)) for e in events)))
    return EXIT_OK


def cmd_route(args: argparse.Namespace, logger: Any) -> int:
    central = args.central or engine.load(engine.config_path(args.config)).desired.settings.central
    try:
        with routing.Router(central) as router:
            tenant = router.resolve(args.host)
            reason = tenant.unavailable_reason()  # the schema: judged on the file itself
            if reason is None:  # prove the file opens, exactly as an application would
                try:
                    router.connect(args.host, args.min_schema).close()
                except routing.TenantUnavailable as exc:
                    reason = exc.reason
    except routing.RoutingError as exc:
        _err(f"error: {exc}")
        return EXIT_ERROR
    host = routing.normalize_host(args.host)
    if args.json:
        _out(render.dumps({"host": host, "tenant": tenant.name, "file": str(tenant.path),
                           "region": tenant.region, "schema_version": tenant.schema_version,
                           "status": tenant.status, "available": reason is None,
                           "reason": reason}))
    else:
        _out([f"host     {host}", f"tenant   {tenant.name}", f"file     {tenant.path}",
              f"region   {tenant.region}", f"version  v{tenant.schema_version}",
              f"status   {tenant.status}"])
    if reason is not None:
        _err(f"error: tenant {tenant.name} is unavailable — {reason}")
        return EXIT_ERROR
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace, logger: Any) -> int:
    from reconciler import daemon  # watchfiles is only needed by the long-running command

    return daemon.run(engine.config_path(args.config), logger, git_pull=args.git_pull)


def cmd_restore(args: argparse.Namespace, logger: Any) -> int:
    from reconciler import restore

    if args.at is not None:
        return _restore_at(args, logger)
    if args.to is not None or args.dry_run:
        _err("error: --to and --dry-run go with --at (a point-in-time restore)")
        return EXIT_ERROR
    inputs = engine.load(engine.config_path(args.config))
    done = restore.restore_file(inputs, args.tenant, Path(args.source), logger,
                                wait=not args.no_wait)
    if args.json:
        _out(render.dumps({k: str(v) if isinstance(v, Path) else v
                           for k, v in done.__dict__.items()}))
    else:
        _out(f"restored {done.tenant} from {done.source} → {done.path} (region {done.region}, "
             f"v{done.version}); run `reconcile` to bring it to the target schema")
    return EXIT_OK


def _restore_at(args: argparse.Namespace, logger: Any) -> int:
    from reconciler import pitr

    at = pitr.parse_time(args.at)
    inputs = engine.load(engine.config_path(args.config))
    done = pitr.restore_at(inputs, args.tenant, at, logger,
                           to=Path(args.to) if args.to else None, dry_run=args.dry_run,
                           wait=not args.no_wait)
    if args.json:
        _out(render.dumps({k: str(v) if isinstance(v, Path) else v
                           for k, v in done.__dict__.items()}))
        return EXIT_OK
    rows = ", ".join(f"{t} {n}" for t, n in done.tables.items()) or "no tables"
    what = (f"restored {done.tenant} as of {done.at} → {done.path} (v{done.version}; "
            f"{rows}); the replaced file is retired at {done.retired}" if done.applied else
            f"{done.tenant} as of {done.at} verified (v{done.version}; {rows}) → "
            + (f"written to {done.path}" if args.to else "dry run: nothing changed"))
    _out(what)
    return EXIT_OK


def cmd_backups(args: argparse.Namespace, logger: Any) -> int:
    from reconciler import pitr

    inputs = engine.load(engine.config_path(args.config))
    if inputs.desired.settings.backup is None:
        _err("error: backups are off — set settings.backup in "
             f"{inputs.config.name} (see README, Backups)")
        return EXIT_ERROR
    found = pitr.points(inputs, args.tenant)
    if args.json:
        _out(render.dumps([p.__dict__ for p in found]))
        return EXIT_OK
    if not found:
        _out(f"no backups recorded for {args.tenant}")
        return EXIT_OK
    _out(render.table(("LINEAGE", "FILE", "FROM", "TO", "TXID", "STATE", "REPLICA"),
                      ((p.lineage, p.path, pitr.iso(p.earliest), pitr.iso(p.latest),
                        str(p.txid), p.error or ("current" if p.ended_at is None else
                                            f"ended {p.ended_at}"), p.url)
                       for p in found)))
    return EXIT_OK


def cmd_gc(args: argparse.Namespace, logger: Any) -> int:
    from reconciler import gc

    try:
        older_than = parse_duration(args.retired_older_than)
    except ValueError as exc:
        _err(f"error: --retired-older-than: {exc} (write e.g. 30d, 12h or 90m)")
        return EXIT_ERROR
    inputs = engine.load(engine.config_path(args.config))
    found = gc.collect(inputs, older_than, logger, dry_run=args.dry_run,
                       wait=not args.no_wait)
    if args.json:
        _out(render.dumps([{"path": str(c.path), "bytes": c.size, "retired_at": c.retired_at,
                            "delete": c.delete, "reason": c.reason} for c in found]))
    else:
        _out(gc.lines(found, older_than, args.dry_run, inputs.desired.settings.data_dir))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "apply": cmd_apply,
    "plan": cmd_plan,
    "status": cmd_status,
    "validate": cmd_validate,
    "history": cmd_history,
    "route": cmd_route,
    "daemon": cmd_daemon,
    "restore": cmd_restore,
    "gc": cmd_gc,
    "backups": cmd_backups,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
