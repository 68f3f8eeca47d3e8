"""The ``reconcile`` command line as a user writes it: commands, options, help texts,
usage errors and exit codes.

Why a module of its own: what may be written on the command line is one definition,
read by ``cli`` (which runs the commands), by ``options`` (which global options each
command honours), by shell completion (shtab generates its scripts from this parser)
and by the tests that check the systemd units' command lines; running the commands and
rendering their results is ``cli``'s.

Invariants: building the parser does no I/O; every option has a help text; a usage
error exits ``EXIT_ERROR`` (1, invalid input), never argparse's 2, which means "changes
pending" to scripts running ``reconcile plan`` — as a JSON object on stdout when
``--json`` was on the command line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from reconciler import __version__, errors_json, render

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_PROBLEMS = 0, 1, 2, 3


def _common(p: argparse.ArgumentParser, sub: bool) -> None:
    d: dict[str, Any] = {"default": argparse.SUPPRESS} if sub else {}
    p.add_argument("-c", "--config", help="desired state file (default ./tenants.yaml, "
                   "env RECONCILE_CONFIG)", **({"default": None} | d))
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout "
                   "(errors too, as a JSON object; exit codes unchanged)",
                   **({"default": False} | d))
    p.add_argument("--log-format", choices=("console", "json"),
                   help="default: console on a terminal, JSON lines otherwise",
                   **({"default": None} | d))
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"),
                   help="default: info (warning for apply on a terminal, unless --verbose)",
                   **({"default": None} | d))


def _verbose(p: argparse.ArgumentParser, sub: bool) -> None:
    """Only where it changes the output (apply, plan): elsewhere it would be ignored."""
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS if sub
                   else False, help="every line, also on a terminal (where results and large "
                   "plans are compact by default)")


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 1 (invalid input), not argparse's 2, which means "changes
    pending" to scripts running ``reconcile plan``."""

    json_errors = False  # --json was on the command line: usage errors as JSON too

    def error(self, message: str) -> NoReturn:
        if self.json_errors:
            print(render.dumps(errors_json.usage(f"{self.prog}: {message}")))
            self.exit(EXIT_ERROR)
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def _region(p: argparse.ArgumentParser, sub: bool) -> None:
    p.add_argument("--region", action="append", metavar="NAME",
                   default=argparse.SUPPRESS if sub else None,
                   help="act as the agent of this region only (one region per host; needs "
                   "settings.backup)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="reconcile",
        description="Converge a fleet of per-tenant SQLite databases to tenants.yaml.")
    _common(p, sub=False)
    _verbose(p, sub=False)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                   help="print the version and exit")
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--no-wait", action="store_true",
                   help="exit at once if another reconciler holds the lock")
    p.add_argument("--retry-failed", action="store_true",
                   help="retry failed tenants and halted rollouts now")
    _region(p, sub=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND",
                           help="what to do (default: apply; `reconcile COMMAND -h` for its "
                           "options)")
    a = sub.add_parser("apply", help="one pass: observe, plan, apply (default)")
    _common(a, sub=True)
    _verbose(a, sub=True)
    a.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                   help="print the plan, change nothing (same as `reconcile plan`)")
    a.add_argument("--no-wait", action="store_true", default=argparse.SUPPRESS,
                   help="exit at once if another reconciler holds the lock")
    a.add_argument("--retry-failed", action="store_true", default=argparse.SUPPRESS,
                   help="retry failed tenants and halted rollouts now")
    _region(a, sub=True)
    pl = sub.add_parser("plan", help="print the plan, change nothing")
    _common(pl, sub=True)
    _verbose(pl, sub=True)
    _region(pl, sub=True)
    pl.add_argument("--rehearse", nargs="*", default=None, metavar="N|all|TENANT",
                    help="also run the pending migrations, health checks and foreign-key "
                    "check on backup-API copies of tenants (default: the largest, the oldest "
                    "versions and a random set); exit 0 when all pass, 3 otherwise")
    st = sub.add_parser("status", help="the fleet in numbers, then the tenants that need a "
                        "person")
    _common(st, sub=True)
    st.add_argument("--all", action="store_true", dest="all_tenants",
                    help="a row for every tenant: desired vs actual region, version, status")
    st.add_argument("--schema", action="store_true",
                    help="also, per version, how many tenants match its reference schema")
    dr = sub.add_parser("drift", help="each tenant's schema against the reference for its "
                        "version (exit 3 when any drifts)")
    _common(dr, sub=True)
    dr.add_argument("tenants", nargs="*", metavar="TENANT",
                    help="only these tenants (default: every declared tenant)")
    dr.add_argument("--all", action="store_true", dest="recheck",
                    help="re-compare every tenant file now, not only those changed since "
                    "they were last compared")
    _common(sub.add_parser("validate", help="check tenants.yaml and migrations only"),
            sub=True)
    h = sub.add_parser("history", help="the events table, newest first")
    _common(h, sub=True)
    h.add_argument("tenant", nargs="?", help="only this tenant's events (default: all)")
    h.add_argument("-n", "--limit", type=int, default=50, metavar="N",
                   help="at most N events (default 50)")
    dm = sub.add_parser("daemon", help="keep the fleet converged (systemd Type=notify service)")
    _common(dm, sub=True)
    _region(dm, sub=True)
    dm.add_argument("--git-pull", action="store_true",
                    help="GitOps pull mode: every interval fast-forward the clone holding "
                    "tenants.yaml to its remote branch (also on with a settings.git block)")
    dm.add_argument("--metrics-addr", default=None, metavar="[HOST:]PORT",
                    help="serve /metrics, /livez and /readyz there (HOST defaults to "
                    "127.0.0.1; 0.0.0.0:PORT listens on every interface)")
    mt = sub.add_parser("metrics", help="print the fleet's Prometheus metrics, or write them "
                        "for node_exporter's textfile collector")
    _common(mt, sub=True)
    mt.add_argument("--textfile", default=None, metavar="FILE",
                    help="write FILE atomically (e.g. /var/lib/node_exporter/"
                    "tenant_reconciler.prom) instead of printing")
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
    rs.add_argument("tenant", help="the tenant to put back in service")
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
    rs.add_argument("--no-wait", action="store_true", default=argparse.SUPPRESS,
                    help="exit at once if another reconciler holds the lock")
    bk = sub.add_parser("backups", help="a tenant's restore points (Litestream replicas)")
    _common(bk, sub=True)
    bk.add_argument("tenant", help="the tenant whose restore points to list")
    g = sub.add_parser("gc", help="delete retired copies older than a duration (the only "
                       "command that deletes)")
    _common(g, sub=True)
    g.add_argument("--retired-older-than", required=True, metavar="DURATION",
                   help="e.g. 30d, 12h; copies retired at least this long ago are deleted")
    g.add_argument("--dry-run", action="store_true", default=argparse.SUPPRESS,
                   help="list what would be deleted, delete nothing")
    g.add_argument("--no-wait", action="store_true", default=argparse.SUPPRESS,
                   help="exit at once if another reconciler holds the lock")
    c = sub.add_parser("completion", help="print a shell completion script: "
                       "source <(reconcile completion bash)")
    c.add_argument("shell", choices=COMPLETION_SHELLS, help="the shell to complete in")
    return p


COMPLETION_SHELLS = ("bash", "zsh", "tcsh")  # those shtab supports that systemd hosts use


FILE_ARGUMENTS = frozenset(("config", "source", "central"))


def parsers(p: argparse.ArgumentParser) -> list[_Parser]:
    """``p`` and the parsers of its subcommands."""
    out = [p] if isinstance(p, _Parser) else []
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out.extend(parsers(sub))
    return out


def actions(p: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every argument of ``p`` and of its subcommands."""
    return [a for each in parsers(p) for a in each._actions]
