"""The pass sequence's own behaviour (most of it is proven end to end in tests/e2e/)."""

from __future__ import annotations

import gc

import pytest

from reconciler import engine
from reconciler.errors import InvalidInput
from tests.conftest import Fleet


def test_collector_is_back_on_after_load_and_pass_even_when_they_raise(fleet: Fleet) -> None:
    fleet.declare({"aaron": {"region": "eu"}})
    assert fleet.run("apply").returncode == 0
    inputs = engine.load(fleet.config)
    assert gc.isenabled()
    engine.preview(inputs)
    assert gc.isenabled()
    # an applied migration edited since: verify_catalog raises inside the paused part
    edited = sorted(fleet.migrations.glob("0001_*.sql"))[0]
    edited.write_text(edited.read_text() + "\n-- edited\n")
    with pytest.raises(InvalidInput):
        engine.preview(engine.load(fleet.config))
    assert gc.isenabled()
    fleet.write_config("version: 1\ntenants: [not, a, mapping]\n")  # load itself raises
    with pytest.raises(InvalidInput):
        engine.load(fleet.config)
    assert gc.isenabled()


def test_collector_paused_leaves_a_disabled_collector_disabled() -> None:
    gc.disable()
    try:
        with engine.collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
    with engine.collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
