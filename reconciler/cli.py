"""The ``reconcile`` command: runs the parsed command, renders its output, returns its
exit code — nothing else. What may be written on the command line (commands, options,
usage errors, the exit code values) is ``commandline``'s.

Exit codes (DESIGN §8): apply 0 converged / 1 invalid or error / 3 failures or
problems left; plan 0 nothing to do / 2 changes pending / 1 invalid; status 0 in
sync / 2 drift / 1 tenants.yaml invalid (the registry is still shown); validate,
history, route 0 / 1 (history and route read the registry even while tenants.yaml is
invalid, and warn); daemon 0 after SIGTERM/SIGINT, 128+n after a second one. Any
command: 1 for a global option it does not act on (``options``), for an OS error (one
line with the path and the access needed, never a traceback), and for a command that
writes run by a user who does not own the fleet (``ownership``).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reconciler import (
    agent,
    central_path,
    claim,
    compact,
    engine,
    errors_json,
    fleetview,
    log,
    observe,
    options,
    ownership,
    peers,
    progress,
    render,
    routecheck,
    routing,
    supervise,
    terminal,
)
from reconciler import migrations as migrations_mod
from reconciler import status as status_mod
from reconciler.commandline import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_PROBLEMS,
    FILE_ARGUMENTS,
    actions,
    parser,
    parsers,
)
from reconciler.durations import parse_duration
from reconciler.errors import InvalidInput, Problem, ReconcileError
from reconciler.registry import Registry, Snapshot
from reconciler.revision import short
from reconciler.wording import plural


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    p = parser()
    for each in parsers(p):
        each.json_errors = "--json" in argv
    args = p.parse_args(argv)
    command = args.command or ("plan" if args.dry_run else "apply")
    if command == "apply" and getattr(args, "dry_run", False):
        command = "plan"
    refused = options.refusal(command, args)  # no option is accepted and then ignored
    if refused is not None:
        for line in refused.splitlines():
            _err(f"error: {line}")
        return EXIT_ERROR
    quiet = command == "apply" and _compact_logs(args)
    logger = log.configure(args.log_format, args.log_level or ("warning" if quiet else "info"),
                           per_tenant=not quiet)
    handler = COMMANDS[command]
    if command == "apply":  # migrations run in it: a child, so os._exit() cannot pass as ok
        return supervise.command(lambda: _handle(handler, args, logger))
    return _handle(handler, args, logger)


def _handle(handler: Callable[[argparse.Namespace, Any], int], args: argparse.Namespace,
            logger: Any) -> int:
    try:
        code: int = handler(args, logger)
        return code
    except InvalidInput as exc:
        if args.json:
            _out(render.dumps(errors_json.invalid(exc)))
            return EXIT_ERROR
        _err(f"invalid input — nothing was changed ({plural(len(exc.problems), 'problem')}):")
        for problem in exc.problems:
            _err(f"  {problem}")
        return EXIT_ERROR
    except ReconcileError as exc:  # LockHeld, RetryableError, PermanentError, routing
        if args.json:
            _out(render.dumps(errors_json.error(exc)))
        else:
            _err(f"error: {exc}")
        return EXIT_ERROR
    except BrokenPipeError:  # `reconcile status | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt:
        if args.json:
            _out(render.dumps(errors_json.interrupted()))
        _err("interrupted")
        return 130
    except OSError as exc:  # last resort: no traceback for any operating-system error
        _err(f"error: {ownership.explain(exc)}")
        return EXIT_ERROR
    except sqlite3.Error as exc:
        _err(f"error: SQLite: {exc}")
        return EXIT_ERROR


def _compact_logs(args: argparse.Namespace) -> bool:
    """A person at a terminal reads the result, not one log line per action: there, apply
    logs only fleet-wide warnings and errors (the result reports each tenant) unless
    --verbose, --json, a log format or a log level was asked for."""
    return (not getattr(args, "verbose", False) and not args.json and args.log_format is None
            and args.log_level is None and terminal.is_terminal(sys.stderr))


def _compact_output(args: argparse.Namespace) -> bool:
    return not getattr(args, "verbose", False) and terminal.is_terminal(sys.stdout)


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _out(lines: Sequence[str] | str) -> None:
    print(lines if isinstance(lines, str) else "\n".join(lines))


def cmd_apply(args: argparse.Namespace, logger: Any) -> int:
    inputs = engine.load(engine.config_path(args.config), _agent_region(args))
    if inputs.region is not None:  # issue 15: one agent per region
        claim.claim(inputs.whole or inputs.desired, inputs.region)
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
        _out(compact.result_lines(result, summary) if _compact_output(args)
             else render.result_lines(result, summary))
    return EXIT_OK if result.ok else EXIT_PROBLEMS


def _agent_region(args: argparse.Namespace) -> str | None:
    return agent.single(getattr(args, "region", None))


def cmd_plan(args: argparse.Namespace, logger: Any) -> int:
    inputs = engine.load(engine.config_path(args.config), _agent_region(args))
    the_plan, _ = engine.preview(inputs, retry_failed=getattr(args, "retry_failed", False),
                                 between_passes=True,
                                 wait=not getattr(args, "no_wait", False), log=logger)
    if getattr(args, "rehearse", None) is not None:
        return _rehearse(args, inputs, the_plan)
    if args.json:
        _out(render.dumps(render.plan_json(the_plan)))
    else:
        _out(terminal.style_for(sys.stdout).plan_lines(render.plan_lines(
            the_plan, inputs.config.name, inputs.desired.settings.rollout,
            verbose=getattr(args, "verbose", False))))
    return EXIT_OK if the_plan.is_empty else EXIT_CHANGES


def _looking(args: argparse.Namespace
             ) -> tuple[engine.Inputs | None, Path, tuple[Problem, ...]]:
    """For status, history and route: the inputs, or — when tenants.yaml is invalid —
    None, after warning with every problem (also returned), and the registry it names
    anyway."""
    config = engine.config_path(args.config)
    try:
        inputs = engine.load(config)
    except InvalidInput as exc:
        n = len(exc.problems)
        _err(f"warning: {config} is invalid ({n} problem{'s' if n != 1 else ''}) — showing "
             "what the registry holds; nothing was changed:")
        for problem in exc.problems:
            _err(f"  {problem}")
        return None, central_path.locate(config), exc.problems
    return inputs, inputs.desired.settings.central, ()


def _status_from_registry(args: argparse.Namespace, central: Path,
                          problems: tuple[Problem, ...]) -> int:
    """``status`` while tenants.yaml is invalid: the registry and the files, compared
    with nothing; exit 1 (the fleet cannot be said to be in sync with a broken file)."""
    snapshot = Registry.read(central, Registry.snapshot, Snapshot.empty())
    files = observe.read_user_versions((Path(r.path) for r in snapshot.tenants.values()
                                        if r.status != "archived"), mode="ro")
    rows = status_mod.registry_rows(snapshot, files)
    last = Registry.read(central, Registry.last_run, None)
    if args.json:
        # the --json error object (errors_json), plus what the registry holds
        _out(render.dumps(errors_json.invalid(InvalidInput(problems))
                          | {"in_sync": None, "desired_state": "invalid", "last_run": last,
                             "tenants": [r.__dict__ for r in rows]}))
        return EXIT_ERROR
    _out(render.table(("TENANT", "REGION", "VERSION", "STATUS"),
                      ((r.tenant, r.region, "-" if r.version is None else f"v{r.version}",
                        r.status) for r in rows)))
    _out(f"last pass: {last['summary']} (finished {last['finished_at']})" if last
         else "last pass: none recorded")
    _out(f"desired state: {engine.config_path(args.config)} is invalid — not compared "
         "(the problems are above, on stderr)")
    return EXIT_ERROR


def _rehearse(args: argparse.Namespace, inputs: engine.Inputs, the_plan: Any) -> int:
    from reconciler import rehearse

    d = inputs.desired
    chosen = rehearse.choose(the_plan, args.rehearse, list(d.tenants), str(inputs.config))
    line = progress.ProgressLine(sys.stderr)  # draws only on a terminal
    try:
        found = rehearse.run(chosen, inputs.catalog, d.settings.busy_timeout,
                             d.settings.rollout.parallel,
                             (lambda done, total, failed: line("rehearse", done, total, failed))
                             if line.enabled else None)
    finally:
        line.close()
    if args.json:
        _out(render.dumps({"plan": render.plan_json(the_plan),
                           "rehearsal": [r.__dict__ for r in found]}))
    else:
        _out(render.plan_lines(the_plan, inputs.config.name, d.settings.rollout))
        _out(rehearse.lines(found, [t for t in args.rehearse if t in d.tenants and t not in
                                    {c.action.tenant for c in chosen}]))
    return EXIT_OK if all(r.ok for r in found) else EXIT_PROBLEMS


def cmd_status(args: argparse.Namespace, logger: Any) -> int:
    loaded, central, problems = _looking(args)
    if loaded is None:
        return _status_from_registry(args, central, problems)
    inputs = loaded
    the_plan, observed = engine.preview(inputs)
    rows = status_mod.rows(inputs.desired, observed, the_plan, inputs.catalog)
    last = Registry.read(inputs.desired.settings.central, Registry.last_run, None)
    in_sync = all(r.in_sync for r in rows) and the_plan.is_empty
    fleet = status_mod.fleet_counts(rows)
    backups = status_mod.backup_summary(inputs.desired, observed)
    drifted = [r.tenant for r in rows if r.drift]
    checked = inputs.desired.settings.drift != "ignore"
    counts = status_mod.schema_counts(rows, checked) if args.schema else []
    regions = _regions(inputs)
    scope = _scope(inputs)
    if args.json:
        _out(render.dumps({"in_sync": in_sync, "revision": inputs.revision, "last_run": last,
                           "fleet": status_mod.counts_json(fleet), "drifted": len(drifted),
                           "tenants": [r.__dict__ | {"in_sync": r.in_sync,
                                                     "needs_person": r.needs_person}
                                       for r in rows]}
                          | ({"schema": [c.__dict__ for c in counts]} if args.schema else {})
                          | ({"backups": backups.__dict__} if backups else {})
                          | ({"regions": fleetview.regions_json(regions)} if regions else {})
                          | ({"declared": scope._asdict()} if scope else {})))
        return EXIT_OK if in_sync else EXIT_CHANGES
    style = terminal.style_for(sys.stdout)
    _out(compact.status_lines(fleet, rows, target=the_plan.target,
                              show_all=args.all_tenants, style=style, here=scope))
    if backups is not None:
        _out(backups.line())
    if regions:
        _out(fleetview.region_lines(regions, inputs.desired.settings.stale_after))
    if last is not None:
        _out(f"last pass: {last['summary']} (finished {last['finished_at']})")
    else:
        _out("last pass: none recorded")
    schema_lines = render.drift_status_lines(drifted, counts, checked, args.schema)
    if schema_lines:
        _out(schema_lines)
    _out(f"desired state: {inputs.config.name} @ {short(inputs.revision)} — "
         + (style.paint("in sync", "green") if in_sync else style.paint("out of sync", "yellow")))
    return EXIT_OK if in_sync else EXIT_CHANGES


def _scope(inputs: engine.Inputs) -> compact.HostScope | None:
    """Issue 15: on a region agent's host, the whole file's size and this host's region
    (None on a host serving every region)."""
    if inputs.region is None or inputs.whole is None:
        return None
    return compact.HostScope(len(inputs.whole.tenants), len(inputs.whole.regions),
                             inputs.region)


def _regions(inputs: engine.Inputs) -> list[peers.RegionStatus]:
    """Issue 15: every region as this host sees it, when this host's registry is a
    region agent's ([] on a host serving every region)."""
    agent_row = Registry.read(inputs.desired.settings.central, Registry.agent, None)
    if agent_row is None or agent_row.region is None:
        return []
    return peers.fleet_regions(inputs.whole or inputs.desired, agent_row, time.time())


def cmd_drift(args: argparse.Namespace, logger: Any) -> int:
    from reconciler import driftreport

    inputs = engine.load(engine.config_path(args.config))
    line = progress.ProgressLine(sys.stderr)  # draws only on a terminal
    try:
        found = driftreport.report(inputs, args.tenants, args.recheck,
                                   (lambda done, total: line("drift", done, total, 0))
                                   if line.enabled else None)
    finally:
        line.close()
    _out(render.dumps(driftreport.as_json(found)) if args.json else driftreport.lines(found))
    return EXIT_PROBLEMS if any(t.drifted for t in found) else EXIT_OK


def cmd_validate(args: argparse.Namespace, logger: Any) -> int:
    inputs = engine.load(engine.config_path(args.config))
    problems = migrations_mod.dry_run(inputs.catalog, isolated=True)  # in a child process
    snapshot = Registry.read(inputs.desired.settings.central, Registry.snapshot, None)
    if snapshot is not None:
        try:
            engine.verify_catalog(inputs, snapshot)
        except InvalidInput as exc:
            problems.extend(exc.problems)
    if problems:
        raise InvalidInput(problems)
    d = inputs.whole or inputs.desired  # the whole file, also on a region agent's host
    if args.json:
        _out(render.dumps({"ok": True, "config": str(inputs.config),
                           "revision": inputs.revision, "tenants": len(d.tenants),
                           "regions": len(d.regions), "latest": inputs.catalog.latest,
                           "checks": len(inputs.catalog.checks), "problems": [],
                           "notes": [f"{m.path}: holds only comments — a no-op step"
                                     for m in inputs.catalog.no_ops]}))
        return EXIT_OK
    _out(f"{inputs.config}: ok — {plural(len(d.tenants), 'tenant')} in "
         f"{plural(len(d.regions), 'region')}; "
         f"{plural(inputs.catalog.latest, 'migration')} (latest v{inputs.catalog.latest}), "
         f"{plural(len(inputs.catalog.checks), 'health check')}")
    for m in inputs.catalog.no_ops:
        _out(f"note: {m.path}: holds only comments — a no-op step that moves user_version "
             f"to {m.version}")
    return EXIT_OK


def cmd_history(args: argparse.Namespace, logger: Any) -> int:
    central = _looking(args)[1]
    no_events: list[dict[str, Any]] = []
    events = Registry.read(central, lambda reg: reg.events(args.tenant, args.limit),
                           no_events)
    if args.json:
        _out(render.dumps(events))
        return EXIT_OK
    if not events:
        _out("no events recorded" + (f" for {args.tenant}" if args.tenant else ""))
        return EXIT_OK

    _out(render.history_lines(events))
    return EXIT_OK


def cmd_route(args: argparse.Namespace, logger: Any) -> int:
    loaded, central = (None, Path(args.central).absolute()) if args.central \
        else _looking(args)[:2]
    stale_after = loaded.desired.settings.stale_after if loaded is not None \
        else routing.DEFAULT_STALE_AFTER
    try:
        found = routecheck.inspect(central, args.host, args.min_schema,
                                   stale_after=stale_after)
    except routing.TenantElsewhere as exc:  # issue 15: held by another region's host
        _out(render.dumps(fleetview.elsewhere_json(exc)) if args.json
             else fleetview.elsewhere_lines(exc))
        return EXIT_OK
    except routing.RoutingError as exc:
        if args.json:  # every outcome one object on stdout (errors_json), as --json says
            _out(render.dumps((errors_json.invalid(exc) if isinstance(exc, InvalidInput)
                               else errors_json.error(exc))
                              | {"host": args.host, "http_status": exc.http_status}))
        else:
            _err(f"error: {exc}")
        return EXIT_ERROR
    tenant, reason = found.tenant, found.reason
    if args.json:
        _out(render.dumps({"host": found.host, "tenant": tenant.name, "file": str(tenant.path),
                           "region": tenant.region, "schema_version": tenant.schema_version,
                           "status": tenant.status, "available": reason is None,
                           "reason": reason}))
    else:
        _out([f"host     {found.host}", f"tenant   {tenant.name}", f"file     {tenant.path}",
              f"region   {tenant.region}", f"version  v{tenant.schema_version}",
              f"status   {tenant.status}"])
    if reason is not None:
        _err(f"error: tenant {tenant.name} is unavailable — {reason}")
        return EXIT_ERROR
    return EXIT_OK


def cmd_daemon(args: argparse.Namespace, logger: Any) -> int:
    from reconciler import daemon  # watchfiles is only needed by the long-running command

    region = _agent_region(args)
    # refuse a wrong user at once, not at every pass (an invalid file: the daemon says so)
    inputs = None
    with contextlib.suppress(InvalidInput):
        inputs = engine.load(engine.config_path(args.config))
        ownership.require_owner(inputs.desired.settings.central)
    if inputs is not None and (region is not None or inputs.region is not None):
        # a wrong --region, or none on a region agent's registry: at once, not every pass
        agent_inputs = engine.load(engine.config_path(args.config), region, adopt=False)
        if agent_inputs.region is not None:  # another agent for the same region
            claim.claim(agent_inputs.whole or agent_inputs.desired, agent_inputs.region)
    return daemon.run(engine.config_path(args.config), logger, git_pull=args.git_pull,
                      metrics_addr=args.metrics_addr, region=region)


def cmd_metrics(args: argparse.Namespace, logger: Any) -> int:
    from reconciler import metrics

    inputs = engine.load(engine.config_path(args.config))
    board = metrics.once(inputs.desired, inputs.catalog, inputs.revision)
    if args.textfile is None:
        sys.stdout.write(metrics.text(board))
    else:
        metrics.write_textfile(Path(args.textfile), board)
    return EXIT_OK


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
        raise InvalidInput([Problem("--retired-older-than", None, None, str(exc),
                                    "write e.g. 30d, 12h or 90m")]) from None
    inputs = engine.load(engine.config_path(args.config))
    found = gc.collect(inputs, older_than, logger, dry_run=args.dry_run,
                       wait=not args.no_wait)
    if args.json:
        _out(render.dumps([{"path": str(c.path), "bytes": c.size, "retired_at": c.retired_at,
                            "delete": c.delete, "reason": c.reason} for c in found]))
    else:
        _out(gc.lines(found, older_than, args.dry_run, inputs.desired.settings.data_dir))
    return EXIT_OK


def cmd_completion(args: argparse.Namespace, logger: Any) -> int:
    """shtab writes the script from the parser itself, so it never falls behind it."""
    import shtab  # only this command needs it (importing it costs ~35 ms)

    p = parser()
    for action in actions(p):
        if action.dest in FILE_ARGUMENTS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    _out(shtab.complete(p, shell=args.shell))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "apply": cmd_apply,
    "plan": cmd_plan,
    "status": cmd_status,
    "drift": cmd_drift,
    "validate": cmd_validate,
    "history": cmd_history,
    "route": cmd_route,
    "daemon": cmd_daemon,
    "restore": cmd_restore,
    "gc": cmd_gc,
    "completion": cmd_completion,
    "metrics": cmd_metrics,
    "backups": cmd_backups,
}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
