"""The last guard: each action checks its paths against the fleet's directories just
before touching a file, whatever the plan said (a real registry and real files)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import structlog

from reconciler import archive, engine, relocate
from reconciler.actions import Action, Kind
from reconciler.context import Context
from reconciler.errors import PermanentError
from reconciler.registry import Registry
from tests.conftest import Fleet, make_db


def _ctx(fleet: Fleet, registry: Registry) -> Context:
    inputs = engine.load(fleet.config)
    return Context(inputs.desired, inputs.catalog, registry, inputs.revision,
                   structlog.get_logger())


def test_relocate_and_archive_refuse_a_registered_file_outside_the_fleet(
        fleet: Fleet, tmp_path: Path) -> None:
    fleet.declare({"aaron": {"region": "us"}})
    other = make_db(tmp_path / "other-fleet" / "eu" / "aaron.db", 3, rows=5)
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    registry = Registry.open(fleet.central)
    try:
        with registry.transaction():
            registry.upsert_tenant("aaron", "eu", other, 3, "active")
        ctx = _ctx(fleet, registry)
        move = Action(Kind.RELOCATE, "aaron", "us", from_region="eu",
                      path=fleet.path("aaron", "us"), source=other)
        with pytest.raises(PermanentError, match="outside the directories"):
            relocate.run(move, ctx)
        with pytest.raises(PermanentError, match="outside the directories"):
            archive.archive(Action(Kind.ARCHIVE, "aaron", "eu", source=other), ctx)
        with registry.transaction():  # an unfinished relocation naming the other fleet
            registry.journal_set("aaron", "relocate", "copy", source=str(other),
                                 dest=str(fleet.path("aaron", "us")),
                                 temp=str(fleet.data / "us" / ".aaron.db.relocating"))
        with pytest.raises(PermanentError, match="unfinished relocate names"):
            relocate.run(move, ctx)
        assert registry.tenant("aaron") is not None
        assert registry.tenant("aaron").status == "active"  # type: ignore[union-attr]
    finally:
        registry.close()
    assert hashlib.sha256(other.read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in other.parent.iterdir()) == ["aaron.db"]
    assert not fleet.path("aaron", "us").exists()
