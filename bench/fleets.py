"""Generated fleets for the benchmarks: real tenants.yaml, real SQLite files, a real registry.

Why: a benchmark is only worth its ratio if it runs on what an operator has — thousands
of small tenant files across regions, each with a few hundred rows, converged by the
reconciler itself. Generating 100k files one ``sqlite3.connect`` at a time would take
longer than the benchmarks, so every tenant file is a byte copy of one template built
with SQLite (identical files are a fair fleet: the work per file is the same).

Invariants:
* fleets live outside the source tree (default ``/tmp/reconciler-bench``, or
  ``bench/_fleets/`` which is gitignored) and are reused while their marker matches
  the spec they were built from, so a second run does not pay for generation;
* a converged fleet is converged by ``engine.run_pass`` (the same pass ``reconcile``
  runs), and checked: its plan must be empty, or generation fails loudly;
* a migrate fleet can be reset to its pristine v0 state between repetitions
  (template bytes back into every file, the saved registry back into place).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

from reconciler import engine, log
from reconciler.sqltext import split_statements

BENCH = Path(__file__).resolve().parent
MIGRATIONS = BENCH / "migrations"
LATEST = len(list(MIGRATIONS.glob("*.sql")))
REGIONS = ("eu", "us", "ap")
DEFAULT_ROOT = Path(os.environ.get("RECONCILER_BENCH_ROOT", "/tmp/reconciler-bench"))
MARKER = ".bench-fleet.json"
GENERATOR = 4  # bump when the layout changes, so stale fleets are rebuilt


@dataclass(frozen=True)
class FleetSpec:
    tenants: int
    mode: str = "delete"  # SQLite journal mode of every tenant file: "delete" or "wal"
    version: int = LATEST  # the version every file is at; LATEST = converged fleet
    rows: int = 300

    @property
    def name(self) -> str:
        return f"{self.mode}-{self.tenants}-v{self.version}-r{self.rows}"


@dataclass(frozen=True)
class Fleet:
    spec: FleetSpec
    root: Path
    config: Path
    central: Path
    paths: tuple[str, ...]  # every tenant file, sorted by tenant name
    template: Path

    def config_with(self, **rollout: int | str) -> Path:
        """A sibling tenants.yaml with other rollout settings (same data dir)."""
        suffix = "-".join(f"{k}{v}" for k, v in sorted(rollout.items()))
        path = self.root / f"tenants-{suffix}.yaml"
        path.write_text(tenants_yaml(self.spec.tenants, rollout=rollout))
        return path

    def reset(self) -> None:
        """Put every file and the registry back to the state generation left them in."""
        data = self.template.read_bytes()
        for p in self.paths:
            for suffix in ("-journal", "-wal", "-shm"):
                if os.path.exists(p + suffix):
                    os.unlink(p + suffix)
            with open(p, "wb") as f:
                f.write(data)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(f"{self.central}{suffix}"):
                os.unlink(f"{self.central}{suffix}")
        shutil.copyfile(self.root / "central.pristine.db", self.central)


def tenant_name(i: int) -> str:
    return f"t{i:06d}"


def tenants_yaml(n: int, *, schema: int | str = "latest",
                 rollout: dict[str, int | str] | None = None) -> str:
    ro: dict[str, int | str] = {"canary": 1, "batch": 50, "parallel": 4, "max_failures": 0,
                                **(rollout or {})}
    lines = [
        "version: 1",
        "settings:",
        "  data_dir: data",
        "  central: data/central.db",
        "  domain: bench.example",
        f"  schema: {schema}",
        "  rollout: {" + ", ".join(f"{k}: {v}" for k, v in ro.items()) + "}",
        "globals:",
        "  support_email: help@bench.example",
        "regions:",
        *(f"  {r}: {{}}" for r in REGIONS),
        "tenants:",
        *(f"  {tenant_name(i)}: {{region: {REGIONS[i % len(REGIONS)]}}}" for i in range(n)),
    ]
    return "\n".join(lines) + "\n"


def build_template(path: Path, mode: str, version: int, rows: int) -> None:
    """One tenant database: ``rows`` documents, then the bench migrations up to ``version``."""
    if path.exists():
        path.unlink()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=" + ("WAL" if mode == "wal" else "DELETE"))
        conn.execute("BEGIN")
        conn.execute("CREATE TABLE documents (id INTEGER PRIMARY KEY, title TEXT NOT NULL, "
                     "body TEXT NOT NULL, created_at TEXT NOT NULL)")
        conn.executemany(
            "INSERT INTO documents (title, body, created_at) VALUES (?, ?, ?)",
            [(f"{('alpha', 'beta', 'gamma', 'delta')[i % 4]} document {i}",
              "lorem ipsum dolor sit amet " * 4, f"2026-01-{1 + i % 28:02d}T00:00:00Z")
             for i in range(rows)])
        conn.execute("COMMIT")
        for step in sorted(MIGRATIONS.glob("*.sql"))[:version]:
            conn.execute("BEGIN IMMEDIATE")
            for statement in split_statements(step.read_text()):
                conn.execute(statement.sql)
            conn.execute(f"PRAGMA user_version = {int(step.name[:4])}")
            conn.execute("COMMIT")
    finally:
        conn.close()  # last connection: checkpoints, the -wal file is removed


def get(spec: FleetSpec, root: Path = DEFAULT_ROOT, say: bool = True) -> Fleet:
    """The fleet for ``spec``, generated on first use and reused afterwards."""
    base = root / spec.name
    marker = base / MARKER
    fleet = _fleet(spec, base)
    want = {"spec": asdict(spec), "generator": GENERATOR}
    if marker.exists() and json.loads(marker.read_text()) == want:
        return fleet
    if say:
        print(f"  generating fleet {spec.name} in {base} …", flush=True)
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    shutil.copytree(MIGRATIONS, base / "migrations")
    build_template(fleet.template, spec.mode, spec.version, spec.rows)
    data = fleet.template.read_bytes()
    for region in REGIONS:
        (base / "data" / region).mkdir(parents=True, mode=0o700)
    for p in fleet.paths:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    # Register every file as it is (adopt) by running the reconciler itself, pinned to
    # the files' version so the pass changes no file; then declare the real target.
    fleet.config.write_text(tenants_yaml(spec.tenants, schema=spec.version))
    converge(fleet.config)
    fleet.config.write_text(tenants_yaml(spec.tenants))
    if spec.version == LATEST:
        the_plan, _ = engine.preview(engine.load(fleet.config))
        if not the_plan.is_empty:
            raise SystemExit(f"generated fleet {base} is not converged: "
                             f"{len(the_plan.actions)} actions pending")
    checkpoint(fleet.central)
    shutil.copyfile(fleet.central, base / "central.pristine.db")
    marker.write_text(json.dumps(want))
    return fleet


def _fleet(spec: FleetSpec, base: Path) -> Fleet:
    paths = tuple(str(base / "data" / REGIONS[i % len(REGIONS)] / f"{tenant_name(i)}.db")
                  for i in range(spec.tenants))
    return Fleet(spec, base, base / "tenants.yaml", base / "data" / "central.db", paths,
                 base / "template.db")


def converge(config: Path) -> None:
    """One real pass; its log lines go nowhere (they are the reconciler's, not ours)."""
    result = engine.run_pass(engine.load(config), log.configure("json", "error"))
    if not result.ok:
        raise SystemExit(f"generating {config.parent}: the converging pass did not succeed: "
                         f"{engine.summary(result)}")


def checkpoint(central: Path) -> None:
    conn = sqlite3.connect(central)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
