"""Which global options each command acts on, and the refusal of every other one.

Why: ``reconcile --dry-run daemon`` once created a tenant file and ``reconcile --dry-run
restore`` restored one: global options are parsed for every command, and a command that
does not use one used to accept it and ignore it. Here every command declares the
global options it honours (``HONOURS``); ``refusal`` names any other one given, with
why, before anything runs (the CLI exits 1), so no option is ever accepted and then
ignored. A new command or a new global option must be added to ``HONOURS`` (a test runs
every command with every global option).

Decisions: ``--dry-run`` is honoured by every command that changes nothing anyway
(plan, status, history, route, validate: the promise "change nothing" holds) and by
``apply`` (it becomes ``plan``) and ``gc`` (it lists); ``daemon`` and ``restore`` refuse
it. ``--log-format``/``--log-level`` are honoured only by commands that write log lines.
"""

from __future__ import annotations

import argparse

#: attribute name → the option as a user writes it
GLOBAL: dict[str, str] = {
    "config": "-c/--config", "json": "--json", "log_format": "--log-format",
    "log_level": "--log-level", "dry_run": "--dry-run", "no_wait": "--no-wait",
    "retry_failed": "--retry-failed", "verbose": "-v/--verbose", "region": "--region",
}

_READ = frozenset({"config", "json", "dry_run"})
_LOGS = frozenset({"log_format", "log_level"})

#: command → the global options it acts on
HONOURS: dict[str, frozenset[str]] = {
    "apply": frozenset(GLOBAL),
    "plan": _READ | {"retry_failed", "no_wait", "verbose", "region"},
    "status": _READ,
    "history": _READ,
    "route": _READ,
    "validate": frozenset({"config", "json", "dry_run"}),
    "completion": frozenset(),
    "drift": _READ,
    "metrics": frozenset({"config"}),
    "daemon": frozenset({"config", "region"}) | _LOGS,
    "restore": frozenset({"config", "json", "no_wait", "dry_run"}) | _LOGS,
    "backups": frozenset({"config", "json"}),
    "gc": frozenset({"config", "json", "dry_run", "no_wait"}) | _LOGS,
}

#: why an option does nothing, by (command, option) and else by option
_WHY: dict[tuple[str, str] | str, str] = {
    ("daemon", "dry_run"): "the daemon always applies; preview with `reconcile --dry-run`",
    ("daemon", "json"): "the daemon prints nothing but log lines; use --log-format json",
    ("daemon", "no_wait"): "the daemon waits for the lock before every pass",
    ("daemon", "retry_failed"): "the daemon retries failed tenants by their backoff; run "
                                "`reconcile apply --retry-failed` to retry them now",
    "json": "it has no machine-readable output",
    "no_wait": "it takes no lock: it only reads",
    "retry_failed": "only a pass retries failed tenants (`reconcile apply --retry-failed`, "
                    "or `reconcile plan --retry-failed` to preview that)",
    "log_format": "it writes no log lines",
    "log_level": "it writes no log lines",
    "dry_run": "it has no dry run",
    "verbose": "its output is the same on a terminal and in a pipe",
    "config": "it does not read tenants.yaml here",
    "region": "only a pass (apply, plan, daemon) acts as one region's agent",
}

#: options that are each honoured, but not together: (command, option, other, why)
_TOGETHER: tuple[tuple[str, str, str, str], ...] = (
    ("gc", "no_wait", "dry_run", "gc --dry-run takes no lock: it only lists"),
    ("restore", "dry_run", "source", "restore --from has no preview: it copies the file into "
                                     "service (--dry-run goes with --at)"),
    ("route", "config", "central", "--central names the registry, so tenants.yaml is not "
                                   "read"),
)


def given(args: argparse.Namespace, name: str) -> bool:
    """Whether the option was written on the command line (every default is falsy)."""
    return bool(getattr(args, name, None))


def refusal(command: str, args: argparse.Namespace) -> str | None:
    """None when every global option given is honoured by ``command``, else the message
    (one line per refused option)."""
    lines = [f"`reconcile {command}` does not take {GLOBAL[name]}: it would be ignored "
             f"— {_WHY.get((command, name)) or _WHY[name]}"
             for name in GLOBAL
             if given(args, name) and name not in HONOURS[command]]
    lines += [f"`reconcile {command}` does not take {GLOBAL[name]} with "
              f"{GLOBAL.get(other, '--' + other)}: it would be ignored — {why}"
              for cmd, name, other, why in _TOGETHER
              if cmd == command and given(args, name) and given(args, other)]
    return "\n".join(lines) or None
