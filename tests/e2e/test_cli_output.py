"""End to end through the real CLI: what a person sees on a terminal and what a pipe or a
script gets (issue 12 items 8 and 9, issue 13 item 6's status layout).

A terminal here is a real pseudo-terminal (the stdlib ``pty`` module) for stdout and for
stderr, so ``isatty()`` is true in the ``reconcile`` process exactly as in a shell.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler import __version__, commandline
from reconciler.lock import FleetLock
from tests.conftest import RECONCILE, Fleet

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PROGRESS = re.compile(r"\r\x1b\[K[^\r\n]*")  # the live progress line, redrawn in place

# One migration that breaks on the tenants whose file name ends in "7.db".
BOOM = '''def migrate(conn):
    conn.execute("CREATE TABLE extra (id INTEGER PRIMARY KEY)")
    path = conn.execute("PRAGMA database_list").fetchall()[0][2]
    if path.endswith("7.db"):
        raise RuntimeError("boom")
'''


@dataclass(frozen=True)
class Run:
    code: int
    out: str  # as written, with colour codes
    err: str

    @property
    def text(self) -> str:
        """stdout without colour codes."""
        return ANSI.sub("", self.out)


def _env(fleet: Fleet, extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "RECONCILE_CRASH_AT", "FORCE_COLOR")}
    return {**env, "TERM": "xterm-256color", "RECONCILE_CONFIG": str(fleet.config),
            **(extra or {})}


def on_terminal(fleet: Fleet, *args: str, env: dict[str, str] | None = None,
                timeout: float = 120) -> Run:
    """Run ``reconcile`` with stdout and stderr each on its own pseudo-terminal."""
    out_master, out_slave = pty.openpty()
    err_master, err_slave = pty.openpty()
    proc = subprocess.Popen([RECONCILE, *args], cwd=fleet.root, env=_env(fleet, env),
                            stdin=subprocess.DEVNULL, stdout=out_slave, stderr=err_slave)
    os.close(out_slave)
    os.close(err_slave)
    got: dict[int, list[bytes]] = {out_master: [], err_master: []}
    reading = set(got)
    deadline = time.monotonic() + timeout
    while reading:
        assert time.monotonic() < deadline, "reconcile did not finish"
        ready, _, _ = select.select(list(reading), [], [], 1.0)
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the process closed its end of the terminal
                data = b""
            if data:
                got[fd].append(data)
            else:
                reading.discard(fd)
                os.close(fd)
    code = proc.wait(timeout=timeout)

    def text(fd: int) -> str:
        return b"".join(got[fd]).decode().replace("\r\n", "\n")
    return Run(code, text(out_master), text(err_master))


def piped(fleet: Fleet, *args: str, env: dict[str, str] | None = None) -> Run:
    r = subprocess.run([RECONCILE, *args], cwd=fleet.root, env=_env(fleet, env), text=True,
                       capture_output=True, timeout=120)
    return Run(r.returncode, r.stdout, r.stderr)


def many(n: int) -> dict[str, dict[str, Any]]:
    """``t000`` … : even numbers in ``eu``, odd ones in ``us``."""
    return {f"t{i:03d}": {"region": region_of(f"t{i:03d}")} for i in range(n)}


def region_of(name: str) -> str:
    return ("eu", "us")[int(name[1:]) % 2]


def content_lines(text: str) -> list[str]:
    return [line for line in PROGRESS.sub("", ANSI.sub("", text)).splitlines() if line.strip()]


# -- item 8: compact results on a terminal -------------------------------------------------

def test_first_run_of_60_tenants_on_a_terminal_prints_counts_not_a_line_per_tenant(
        fleet: Fleet) -> None:
    fleet.declare(many(60))
    run = on_terminal(fleet)
    assert run.code == 0, run.out + run.err
    lines = content_lines(run.out)
    assert lines == ["Applied: 60 created", lines[-1]]
    assert lines[-1].startswith("60 in sync, rev ")
    assert content_lines(run.err) == []  # no log line per action above the summary


def test_the_same_run_piped_or_verbose_gives_every_line(fleet: Fleet, tmp_path: Path) -> None:
    fleet.declare(many(60))
    run = piped(fleet)
    assert run.code == 0, run.err
    assert len([ln for ln in run.out.splitlines() if ln.startswith("  ok       create")]) == 60
    logged = [json.loads(ln) for ln in run.err.splitlines()]  # JSON lines when piped
    assert len([e for e in logged if e["event"] == "create"]) == 60
    other = Fleet(tmp_path / "other")
    other.root.mkdir()
    other.use_shipped_migrations().declare(many(60))
    verbose = on_terminal(other, "--verbose")
    assert verbose.code == 0, verbose.out + verbose.err
    out = content_lines(verbose.out)
    assert len([ln for ln in out if ln.startswith("  ok       create")]) == 60
    assert len([ln for ln in content_lines(verbose.err) if " create " in ln]) == 60


def test_a_terminal_lists_failed_and_missing_tenants_with_their_regions_and_caps_each_kind(
        fleet: Fleet) -> None:
    fleet.declare(many(60))
    assert piped(fleet).code == 0
    for name in ("t011", "t012", "t013"):
        fleet.path(name, region_of(name)).unlink()
    fleet.write_migration("0004_boom.py", BOOM)
    fleet.declare(many(60), rollout={"max_failures": 100})
    run = on_terminal(fleet)
    assert run.code == 3, run.out + run.err
    lines = content_lines(run.out)
    assert lines[0] == "Applied: 51 migrated, 6 failed"
    failed = [ln for ln in lines if ln.startswith("  failed   migrate")]
    assert [ln.split()[2:4] for ln in failed] == [
        ["t007", "us"], ["t017", "us"], ["t027", "us"], ["t037", "us"], ["t047", "us"],
        ["t057", "us"]]
    assert all("boom" in ln for ln in failed)
    missing = [ln for ln in lines if ln.startswith("  problem  missing")]
    assert [ln.split()[2:4] for ln in missing] == [["t011", "us:"], ["t012", "eu:"],
                                                  ["t013", "us:"]]
    assert lines[-1].startswith("51 in sync, 6 failed, 3 problems, rev ")
    assert len(lines) == 1 + 6 + 3 + 1
    # only fleet-wide log lines on the terminal's stderr: none here, the result says it all
    assert [ln for ln in content_lines(run.err) if "t0" in ln] == []


def test_a_terminal_shows_at_most_10_problems_of_a_kind_then_a_count(fleet: Fleet) -> None:
    fleet.declare(many(40))
    assert piped(fleet).code == 0
    for i in range(25):
        fleet.path(f"t{i:03d}", region_of(f"t{i:03d}")).unlink()
    run = on_terminal(fleet)
    assert run.code == 3
    lines = content_lines(run.out)
    assert len([ln for ln in lines if ln.startswith("  problem  missing   t")]) == 10
    assert "  problem  missing   … 15 more tenants (`reconcile status` lists them all)" in lines
    assert lines[-1].startswith("15 in sync, 25 problems, rev ")


def test_a_small_run_on_a_terminal_still_lists_each_action_naming_regions(fleet: Fleet) -> None:
    fleet.declare({"aaron": {"region": "eu"}, "globex": {"region": "eu"}})
    assert piped(fleet).code == 0
    fleet.declare({"aaron": {"region": "eu"}, "globex": {"region": "us"}})
    assert [ln.split() for ln in piped(fleet, "plan").out.splitlines()[1:2]] == [
        [">", "relocate", "globex", "eu", "→", "us", "v3"]]
    run = on_terminal(fleet)
    assert run.code == 0, run.out + run.err
    assert content_lines(run.out)[0] == "  ok       relocate  globex eu → us v3"
    history = piped(fleet, "history", "globex").out.splitlines()
    assert history[1].split()[3:] == ["globex", "relocate", "ok", history[1].split()[6],
                                      f"*@{socket.gethostname()}", "eu", "→", "us;", "v3"]
    assert history[-1].split()[4:6] == ["create", "ok"]
    assert history[-1].endswith("  eu; v0 → v3")


# -- item 8 / issue 13 item 6: status ------------------------------------------------------

def test_status_opens_with_the_fleet_in_numbers_then_lists_only_who_needs_a_person(
        fleet: Fleet) -> None:
    tenants = many(30)
    tenants["t001"] = {"region": "us", "schema": 3}
    fleet.declare(tenants)
    assert piped(fleet).code == 0
    fleet.path("t005", "us").unlink()
    fleet.write_migration("0004_more.sql", "CREATE TABLE more (id INTEGER PRIMARY KEY);\n")
    run = piped(fleet, "status")
    assert run.code == 2
    lines = run.out.splitlines()
    assert lines[:6] == [
        "Fleet: 30 tenants in 2 regions, target schema v4",
        "  REGION  TENANTS  v3  no file",
        "  eu           15  15        -",
        "  us           15  14        1",
        "  all          30  29        1",
        # drift (issue 13) added its count to the fleet's numbers
        "  in sync 1 · pending 28 · pinned 1 · failed 0 · missing 1 · orphaned 0 · suspended 0"
        " · drifted 0",
    ]
    assert lines[6] == "Needs a person (1):"
    assert lines[7].split() == ["TENANT", "REGION", "VERSION", "STATUS", "PROBLEM"]
    assert lines[8].split()[:4] == ["t005", "us", "-", "active"] and "is gone" in lines[8]
    assert lines[9].startswith("Next pass: 28 to migrate (t000, t002, t003, … t029)")
    assert not any(ln.startswith("  t0") and "t005" not in ln for ln in lines)
    every = piped(fleet, "status", "--all")
    assert every.code == 2
    assert len([ln for ln in every.out.splitlines() if re.match(r"  t0\d\d ", ln)]) == 30
    data = json.loads(piped(fleet, "status", "--json").out)
    assert data["fleet"] == {"total": 30, "regions": {"eu": {"v3": 15},
                                                      "us": {"v3": 14, "none": 1}},
                             "counts": {"in sync": 1, "pending": 28, "pinned": 1, "failed": 0,
                                        "missing": 1, "orphaned": 0, "suspended": 0,
                                        "drifted": 0, "waiting": 0}}
    assert len(data["tenants"]) == 30
    assert [t["tenant"] for t in data["tenants"] if t["needs_person"]] == ["t005"]


def test_status_of_a_converged_fleet_says_so_in_one_line(fleet: Fleet) -> None:
    fleet.declare(many(3))
    assert piped(fleet).code == 0
    run = piped(fleet, "status")
    assert run.code == 0
    assert "Every tenant is in sync." in run.out.splitlines()
    assert run.out.splitlines()[-1].endswith("— in sync")


# -- item 8: plans group large sets --------------------------------------------------------

def test_a_large_plan_groups_each_set_and_json_or_verbose_list_every_tenant(
        fleet: Fleet) -> None:
    fleet.declare(many(60), rollout={"canary": 1, "batch": 5})
    assert piped(fleet).code == 0
    fleet.write_migration("0004_more.sql", "CREATE TABLE more (id INTEGER PRIMARY KEY);\n")
    fleet.declare({**many(60), "zed": {"region": "eu"}}, rollout={"canary": 1, "batch": 5})
    run = piped(fleet, "plan")
    assert run.code == 2
    lines = run.out.splitlines()
    assert [ln.split() for ln in lines if "zed" in ln] == [
        ["+", "create", "zed", "eu", "→", "v4"], ["+", "route", "zed.yoursaas.com", "→", "zed"]]
    assert [ln.split() for ln in lines if ln.startswith("  ~ migrate")] == [
        ["~", "migrate", "30", "tenants", "eu", "v3", "→", "v4", "in", "13", "waves", "(t000",
         "…", "t058)"],
        ["~", "migrate", "30", "tenants", "us", "v3", "→", "v4", "in", "12", "waves", "(t001",
         "…", "t059)"]]
    assert lines[-1] == ("Plan: 1 to create, 60 to migrate, 0 to relocate, 0 to archive, "
                         "1 routing/settings update; 0 problems.")
    assert len(lines) < 25
    verbose = piped(fleet, "plan", "--verbose")
    assert len([ln for ln in verbose.out.splitlines() if ln.startswith("  ~ migrate")]) == 60
    data = json.loads(piped(fleet, "plan", "--json").out)
    assert sorted(a["tenant"] for a in data["actions"] if a["action"] == "migrate") == \
        sorted(many(60))


# -- item 9: colour, NO_COLOR --------------------------------------------------------------

def test_plan_and_status_are_coloured_on_a_terminal_only_and_never_under_no_color(
        fleet: Fleet) -> None:
    fleet.declare(many(3))
    coloured = on_terminal(fleet, "plan")
    assert coloured.code == 2
    assert "\x1b[32m  + create" in coloured.out
    for run in (on_terminal(fleet, "plan", env={"NO_COLOR": "1"}), piped(fleet, "plan")):
        assert run.code == 2 and "\x1b[" not in run.out and "  + create" in run.out
    # an empty NO_COLOR does not count (no-color.org: "present and not an empty string")
    assert "\x1b[" in on_terminal(fleet, "plan", env={"NO_COLOR": ""}).out
    assert piped(fleet).code == 0
    assert "\x1b[32min sync 3\x1b[0m" in on_terminal(fleet, "status").out
    assert "\x1b[" not in on_terminal(fleet, "status", env={"NO_COLOR": "1"}).out
    assert "\x1b[" not in piped(fleet, "status").out


def test_console_logs_respect_no_color(fleet: Fleet) -> None:
    fleet.declare(many(2))
    logs = on_terminal(fleet, "--verbose", env={"NO_COLOR": "1"})
    assert logs.code == 0
    assert "create" in logs.err and "\x1b[3" not in ANSI.sub(
        lambda m: "" if m.group() == "\x1b[K" else m.group(), logs.err)


# -- item 9: --version, help, --json errors ------------------------------------------------

def test_version_prints_the_installed_version(fleet: Fleet) -> None:
    run = piped(fleet, "--version")
    assert run.code == 0 and run.out == f"reconcile {__version__}\n"
    from importlib.metadata import version
    assert version("tenant-reconciler") == __version__


def test_every_option_and_argument_of_every_command_has_help_text() -> None:
    missing = [f"{parser.prog}: {'/'.join(action.option_strings) or action.dest}"
               for parser in commandline.parsers(commandline.parser()) for action in parser._actions
               if not action.help or action.help == "==SUPPRESS=="]
    assert missing == []


def test_validate_json_reports_ok_and_invalid_input_as_an_object_on_stdout(
        fleet: Fleet) -> None:
    fleet.declare(many(1), regions=("eu",))
    ok = piped(fleet, "validate", "--json")
    assert ok.code == 0
    data = json.loads(ok.out)
    assert data["ok"] is True and data["tenants"] == 1 and data["latest"] == 3
    assert piped(fleet, "validate").out.split("ok — ")[1].startswith(
        "1 tenant in 1 region; 3 migrations (latest v3), 1 health check")
    fleet.write_config(fleet.config.read_text().replace("region: eu", "region: mars"))
    for args in (("validate", "--json"), ("plan", "--json"), ("--json",),
                 ("status", "--json")):
        bad = piped(fleet, *args)
        assert bad.code == 1, args
        err = json.loads(bad.out)
        assert err["ok"] is False and err["error"] == "invalid_input"
        assert err["message"] == "invalid input — nothing was changed (1 problem)"
        (problem,) = err["problems"]
        assert problem["file"].endswith("tenants.yaml") and problem["line"] > 0
        assert problem["column"] > 0 and "mars" in problem["message"]
    human = piped(fleet, "validate")
    assert human.code == 1 and human.out == ""
    assert "invalid input — nothing was changed (1 problem):" in human.err


def test_json_errors_keep_their_exit_codes_for_usage_and_a_held_lock(fleet: Fleet) -> None:
    usage = piped(fleet, "history", "--json", "--limit", "many")
    assert usage.code == 1
    assert json.loads(usage.out)["error"] == "usage"
    fleet.declare(many(1))
    assert piped(fleet).code == 0
    lock = FleetLock(fleet.central)
    lock.acquire(wait=False)
    try:
        held = piped(fleet, "apply", "--no-wait", "--json")
    finally:
        lock.release()
    assert held.code == 1
    err = json.loads(held.out)
    assert err["error"] == "lock_held" and "another reconciler" in err["message"]
    gc = piped(fleet, "gc", "--retired-older-than", "soon", "--json")
    assert gc.code == 1 and json.loads(gc.out)["problems"][0]["file"] == "--retired-older-than"


# -- item 9: completion, plurals, hashes ---------------------------------------------------

def test_bash_completion_from_shtab_completes_commands_and_options(tmp_path: Path) -> None:
    script = subprocess.run([RECONCILE, "completion", "bash"], capture_output=True, text=True,
                            check=True).stdout
    (tmp_path / "c.bash").write_text(script)
    probe = r'''
source ./c.bash
f=$(complete -p reconcile | sed 's/.* -F \([^ ]*\) .*/\1/')
COMP_WORDS=(reconcile st); COMP_CWORD=1; $f; echo "1:${COMPREPLY[*]}"
COMP_WORDS=(reconcile status --a); COMP_CWORD=2; $f; echo "2:${COMPREPLY[*]}"
COMP_WORDS=(reconcile completion ''); COMP_CWORD=2; $f; echo "3:${COMPREPLY[*]}"
'''
    out = subprocess.run(["bash", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["1:status", "2:--all", "3:bash zsh tcsh"]
    assert subprocess.run([RECONCILE, "completion", "zsh"], capture_output=True, text=True,
                          check=True).stdout.startswith("#compdef reconcile")


def test_one_problem_is_one_problem_everywhere(fleet: Fleet) -> None:
    fleet.declare(many(2))
    assert piped(fleet).code == 0
    fleet.path("t001", "us").unlink()
    plan = piped(fleet, "plan")
    assert plan.out.splitlines()[-1].endswith("; 1 problem.")
    assert plan.out.splitlines()[0].endswith("— 2 tenants, target schema 3")
    apply = piped(fleet)
    assert apply.code == 3 and apply.out.splitlines()[-1].startswith("1 in sync, 1 problem, rev")
    assert "Needs a person (1):" in piped(fleet, "status").out


def test_commit_hashes_have_one_length_in_plan_apply_status_and_history(fleet: Fleet) -> None:
    fleet.declare(many(2))
    git = ["git", "-C", str(fleet.root), "-c", "user.name=t", "-c", "user.email=t@e"]
    subprocess.run([*git, "init", "-q"], check=True)
    (fleet.root / ".gitignore").write_text("data/\n")
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "fleet"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    plan = piped(fleet, "plan").out
    run = on_terminal(fleet, "--verbose")  # the console log too
    apply, logs = run.text, ANSI.sub("", run.err)
    assert "revision=" in logs
    status = piped(fleet, "status").out
    history = piped(fleet, "history").out
    shown = set(re.findall(r"\b[0-9a-f]{7,40}\b", plan + apply + logs + status + history))
    assert shown == {head[:7]}
    assert f"@ {head[:7]} —" in plan and f"rev {head[:7]}" in apply
    assert f"@ {head[:7]} —" in status.splitlines()[-1]
    assert all(ln.split()[2] == head[:7] for ln in history.splitlines()[1:])


def test_a_reader_that_leaves_early_gets_no_traceback(fleet: Fleet) -> None:
    fleet.declare(many(400))  # a --json plan of ~200 KB: more than a pipe holds
    done = subprocess.run(f"{RECONCILE} plan --json | head -c 10", shell=True, cwd=fleet.root,
                          env=_env(fleet, None), capture_output=True, text=True, timeout=120)
    assert done.stdout == "{\n  \"revis"
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    status = subprocess.run(f"{RECONCILE} plan --json | head -c 10; exit ${{PIPESTATUS[0]}}",
                            shell=True, executable="bash", cwd=fleet.root,
                            env=_env(fleet, None), capture_output=True, text=True, timeout=120)
    assert status.returncode == 141  # 128 + SIGPIPE, as a shell reports a killed writer
