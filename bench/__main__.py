"""``python -m bench``: run the benchmark scenarios and print ours vs the baseline.

Why one command: the numbers that matter are ratios measured in the same run on the
same noisy machine; a single entry point makes that the only way to get them.
Never part of the pytest suite (it lives outside ``tests/`` and takes minutes).
"""

from __future__ import annotations

import argparse
import compileall
import os
import platform
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import reconciler
from bench import (
    backups,
    daemon,
    drift,
    fleets,
    follow,
    migrate,
    noop,
    relocate,
    routing,
    scrape,
    walcheck,
    xmove,
)
from bench.timing import Row, markdown, print_row

SIZES = {"1k": 1_000, "10k": 10_000, "50k": 50_000, "100k": 100_000}
SCENARIOS = ("noop", "drift", "migrate", "relocate", "routing", "daemon", "scrape",
             "backups", "follow", "xmove", "walcheck")


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         platform.processor())
    except OSError:
        model = platform.processor()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({model}), {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, "
            f"SQLite {sqlite3.sqlite_version}")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--quick", action="store_true",
                   help="under a minute: 1k fleets, 100 WAL tenants migrated, 3 repeats, "
                   "10 idle daemon seconds, no relocation (1 GB per run)")
    p.add_argument("--size", default="1k",
                   help="fleet sizes for the no-op, routing, daemon and follow scenarios, "
                   "comma separated: 1k, 10k, 50k, 100k (default 1k)")
    p.add_argument("--only", default=",".join(SCENARIOS),
                   help=f"scenarios to run, comma separated (default: all of {SCENARIOS})")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per contender")
    p.add_argument("--migrate-tenants", type=int, default=1000,
                   help="tenants migrated v0 → v3 (default 1000)")
    p.add_argument("--migrate-modes", default="wal,delete",
                   help="journal modes of the migrated fleet: wal (files reconcile "
                   "creates), delete (legacy rollback-journal files); default both")
    p.add_argument("--parallel", default="2,4,8",
                   help="parallel settings tried besides 1; the best is reported")
    p.add_argument("--idle", type=float, default=30.0,
                   help="seconds the idle daemon is watched (CPU is scaled to 30 s)")
    p.add_argument("--follow-minutes", type=float, default=0.0,
                   help="follow scenario: also measure a follower after this many minutes "
                   "of 1 s heartbeats (per store; default 0: skipped)")
    p.add_argument("--xmove-rows", type=int, default=100_000,
                   help="xmove scenario: rows of ~220 bytes in the moved tenant "
                   "(default 100k, ~30 MB)")
    p.add_argument("--root", type=Path, default=fleets.DEFAULT_ROOT,
                   help=f"where generated fleets live (default {fleets.DEFAULT_ROOT}, "
                   "env RECONCILER_BENCH_ROOT)")
    p.add_argument("--no-cli", action="store_true",
                   help="skip the whole-process `reconcile --dry-run` measurement")
    p.add_argument("--profile", action="store_true",
                   help="print a pyinstrument profile of the in-process no-op pass")
    p.add_argument("--markdown", type=Path,
                   help="also write the results as a markdown table to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.repeats, args.migrate_tenants, args.idle = "1k", 3, 100, 10.0
        args.parallel, args.migrate_modes = "4", "wal"
        if args.only == ",".join(SCENARIOS):
            args.only = "noop,migrate,routing,daemon,scrape"
    bad = [s for s in args.size.split(",") if s not in SIZES]
    if bad:
        p.error(f"unknown size {bad[0]!r}; use 1k, 10k, 50k or 100k")
    unknown = [s for s in args.only.split(",") if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    return args


def runners(args: argparse.Namespace) -> list[tuple[str, Callable[[], list[Row]]]]:
    sizes = [SIZES[s] for s in args.size.split(",")]
    only = set(args.only.split(","))
    out: list[tuple[str, Callable[[], list[Row]]]] = []
    if "noop" in only:
        for size in sizes:
            out.append(("noop", partial(noop.run, size, args.repeats, args.root,
                                        cli=not args.no_cli, profiled=args.profile)))
    if "drift" in only:
        for size in sizes:
            out.append(("drift", partial(drift.run, size, max(args.repeats, 7), args.root)))
    if "migrate" in only:
        parallels = [int(x) for x in args.parallel.split(",") if x.strip()]
        for mode in args.migrate_modes.split(","):
            out.append(("migrate", partial(migrate.run, args.migrate_tenants, args.repeats,
                                           args.root, parallels, mode)))
    if "relocate" in only:
        out.append(("relocate", partial(relocate.run, 3, args.root)))
    if "routing" in only:
        for size in sizes:
            out.append(("routing", partial(routing.run, size, args.repeats, args.root)))
    if "scrape" in only:
        for size in sizes:
            out.append(("scrape", partial(scrape.run, size, args.repeats, args.root)))
    if "daemon" in only:
        for size in sizes:
            if size >= 10_000 or len(sizes) == 1:
                out.append(("daemon", partial(daemon.run, size, args.root, args.idle)))
    if "backups" in only:  # daemon starts dominate: at most 3 alternations
        for size in sizes:
            out.append(("backups", partial(backups.run, size, min(3, args.repeats),
                                           args.root)))
    if "follow" in only:  # registries followed across hosts, bare restore (issue 15)
        for size in sizes:
            out.append(("follow", partial(follow.run, size, args.repeats, args.root,
                                          minutes=args.follow_minutes)))
    if "walcheck" in only:  # the unpublished-commit check's cost per pass (issue 15)
        for size in sizes:
            out.append(("walcheck", partial(walcheck.run, size, args.repeats)))
    if "xmove" in only:  # a tenant moved between two region hosts (issue 15)
        out.append(("xmove", partial(xmove.run, args.xmove_rows, min(3, args.repeats),
                                     args.root)))
    return out


def compile_package() -> None:
    """Write the package's bytecode, as ``pip install`` does, so each ``reconcile``
    process the bench starts loads it instead of compiling every module: an editable
    install run with ``PYTHONDONTWRITEBYTECODE=1`` (as on this machine) otherwise pays
    ~30 ms per start-up that no deployment pays."""
    compileall.compile_dir(Path(reconciler.__file__).parent, quiet=1)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(argv)
    compile_package()
    print(f"machine: {machine()}")
    print(f"fleets:  {args.root}   repeats: {args.repeats}   started "
          f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC\n", flush=True)
    rows: list[Row] = []
    began = time.perf_counter()
    for name, runner in runners(args):
        print(f"[{name}]", flush=True)
        t0 = time.perf_counter()
        for row in runner():
            print_row(row)
            rows.append(row)
        print(f"  ({time.perf_counter() - t0:.0f} s)\n", flush=True)
    print(markdown(rows))
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    if args.markdown:
        args.markdown.write_text(f"machine: {machine()}\n\n{markdown(rows)}\n")
    missed = [r for r in rows if r.verdict == "MISSED"]
    if missed:
        print(f"{len(missed)} target(s) missed: " + "; ".join(r.scenario for r in missed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
