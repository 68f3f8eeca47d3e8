"""Unit tests of a region agent's planning rules (xplan): constructed values only."""

from __future__ import annotations

import dataclasses
import json
from types import MappingProxyType
from typing import Any

from reconciler import agent, render
from reconciler.actions import Kind, Plan
from reconciler.state import Handoff, JournalRow, Observed, PeerTenant, PeerView
from reconciler.xplan import HANDED_OFF, IN, OUT, RETIRE, holder, plan_agent
from tests.test_plan import DATA, catalog, desired, observed, row

STALE = 30.0
HANDOFF = Handoff("aaron", "us", "file:///replica/eu/aaron", 42, 3, "d1g", 2)


def peer(region: str = "us", age: float | None = 1.0, tenants: dict[str, tuple[int, str]]
         | None = None, handoffs: tuple[Handoff, ...] = (), revision: str = "rev",
         seq: int = 1, taken: str | None = None) -> PeerView:
    """``tenants``: name → (generation, status) held in ``region``, registered at seq 0
    with content ``taken``; ``seq``: the copy's ``agent.seq`` (1: every row confirmed)."""
    held = {n: PeerTenant(n, region, f"/{region}/{n}.db", 3, status, gen, 0, taken)
            for n, (gen, status) in (tenants or {}).items()}
    return PeerView(region, None, age, revision, MappingProxyType(held),
                    MappingProxyType({}), MappingProxyType({h.tenant: h for h in handoffs}),
                    seq=seq)


def with_peers(obs: Observed, *views: PeerView) -> Observed:
    return dataclasses.replace(obs, peers=MappingProxyType({v.region: v for v in views}))


def journal(action: str, phase: str, h: Handoff = HANDOFF, **extra: Any) -> JournalRow:
    detail = {**dataclasses.asdict(h), **extra}
    del detail["tenant"]
    return JournalRow(h.tenant, action, phase, None, None, None, "t0", json.dumps(detail))


def agent_plan(tenants: dict[str, dict[str, Any]], obs: Observed, region: str = "eu",
               revision: str = "rev") -> Plan:
    whole = desired(tenants)
    return plan_agent(whole, agent.scoped(whole, region), obs, catalog(), region,
                      stale_after=STALE, revision=revision)


def acts(p: Plan) -> dict[str, str]:
    return {a.tenant: a.kind.value for a in p.actions}


def test_a_tenant_declared_in_another_region_and_absent_here_is_not_this_agents_business(
        ) -> None:
    p = agent_plan({"acme": {"region": "us"}}, with_peers(observed(), peer()))
    assert p.actions == ()
    assert p.is_empty


def test_created_here_only_when_every_peer_view_is_fresh_and_none_holds_it() -> None:
    p = agent_plan({"aaron": {"region": "eu"}}, with_peers(observed(), peer(age=3.0)))
    assert acts(p) == {"aaron": "create"}
    assert p.actions[0].path == DATA / "eu" / "aaron.db"


def test_a_stale_or_missing_peer_view_makes_it_wait_naming_the_peer_and_its_age() -> None:
    for view, words in ((peer(age=31.0), "its registry view is 31 s old"),
                        (peer(age=None), "its registry view is missing")):
        p = agent_plan({"aaron": {"region": "eu"}}, with_peers(observed(), view))
        assert acts(p) == {"aaron": "wait"}
        assert f"cannot know whether us holds aaron: {words}" in p.actions[0].detail
        assert p.is_empty and not p.problems  # a wait is neither a change nor an error


def test_held_by_a_peer_without_a_handoff_it_waits_for_that_peer() -> None:
    p = agent_plan({"aaron": {"region": "eu"}},
                   with_peers(observed(), peer(tenants={"aaron": (4, "active")})))
    assert acts(p) == {"aaron": "wait"}
    assert "waiting for us to hand off aaron (held there at generation 4" in \
        p.actions[0].detail
    assert "its view is 1 s old)" in p.actions[0].detail


def test_waiting_on_a_stale_view_says_it_is_stale_and_what_may_be_down() -> None:
    p = agent_plan({"aaron": {"region": "eu"}},
                   with_peers(observed(), peer(age=65.0, tenants={"aaron": (4, "active")})))
    assert acts(p) == {"aaron": "wait"}
    assert "its view is 65 s old, stale past 30 s: is us's agent or the replica store " \
           "down?" in p.actions[0].detail


def test_a_stale_view_that_shows_the_tenant_still_forbids_creating_it() -> None:
    p = agent_plan({"aaron": {"region": "eu"}},
                   with_peers(observed(), peer(age=900.0, tenants={"aaron": (1, "active")})))
    assert acts(p) == {"aaron": "wait"}


def test_a_handoff_to_this_region_is_taken_over_from_the_highest_generation() -> None:
    h = dataclasses.replace(HANDOFF, to_region="eu", generation=6)
    views = (peer("us", tenants={"aaron": (5, "relocating")}, handoffs=(h,)),
             peer("ap", tenants={"aaron": (2, "active")}))
    p = agent_plan({"aaron": {"region": "eu"}}, with_peers(observed(), *views))
    assert acts(p) == {"aaron": "takeover"}
    a = p.actions[0]
    assert a.handoff == h and a.from_region == "us" and a.to_version == 3
    held = holder("aaron", {v.region: v for v in views})
    assert held is not None and held[0].region == "us"


def test_a_handoff_no_later_commit_confirmed_is_not_taken_over_yet() -> None:
    # Litestream may ship a commit whose writer was killed before SQLite published it;
    # the source's registry then loses it: only a row a later commit follows is acted on
    h = dataclasses.replace(HANDOFF, to_region="eu", generation=6, seq=7)
    held = {"aaron": (5, "relocating")}
    for seq, kind in ((7, "wait"), (8, "takeover")):
        p = agent_plan({"aaron": {"region": "eu"}}, with_peers(
            observed(), peer("us", tenants=held, handoffs=(h,), seq=seq)))
        assert acts(p) == {"aaron": kind}
    p = agent_plan({"aaron": {"region": "eu"}}, with_peers(
        observed(), peer("us", tenants=held, handoffs=(h,), seq=7)))
    assert "no later commit of its registry has confirmed yet" in p.actions[0].detail
    assert "txid 42" in p.actions[0].detail and p.is_empty


def test_holder_is_the_highest_generation_never_the_first_region() -> None:
    views = {"ap": peer("ap", tenants={"aaron": (2, "active")}),
             "us": peer("us", tenants={"aaron": (3, "active")}),
             "sa": peer("sa", tenants={"aaron": (9, "archived")})}
    held = holder("aaron", views)
    assert held is not None and held[0].region == "us"


def test_held_here_and_declared_in_a_fresh_peer_region_is_handed_off() -> None:
    obs = with_peers(observed([row("aaron")], files={"eu/aaron.db": 3}), peer())
    p = agent_plan({"aaron": {"region": "us"}}, obs)
    assert acts(p) == {"aaron": "handoff"}
    assert p.actions[0].region == "us" and p.actions[0].status == "relocating"


def test_no_handoff_while_the_destination_agent_is_not_seen() -> None:
    obs = with_peers(observed([row("aaron")], files={"eu/aaron.db": 3}), peer(age=None))
    p = agent_plan({"aaron": {"region": "us"}}, obs)
    assert acts(p) == {"aaron": "wait"}
    assert "keeps serving here" in p.actions[0].detail


def test_a_leaving_tenant_keeps_its_domains_and_gets_no_other_action() -> None:
    obs = with_peers(observed([row("aaron", version=1)], files={"eu/aaron.db": 1}), peer())
    p = agent_plan({"aaron": {"region": "us"}}, obs)
    assert acts(p) == {"aaron": "handoff"}  # not migrated, not orphaned, not archived
    assert {c.key: c.new for c in p.registry if c.table == "domains"} == {
        "aaron.yoursaas.com": "aaron"}


def test_an_interrupted_handoff_is_resumed() -> None:
    obs = with_peers(observed([row("aaron", status="relocating")], files={"eu/aaron.db": 3},
                              journal={"aaron": journal(OUT, "fence")}), peer())
    p = agent_plan({"aaron": {"region": "us"}}, obs)
    assert acts(p) == {"aaron": "handoff"}
    assert "resume, phase fence" in p.actions[0].detail


def test_handed_off_waits_until_the_destination_holds_it_then_releases() -> None:
    rows = [row("aaron", status="relocating")]
    j = {"aaron": journal(OUT, HANDED_OFF)}
    waiting = agent_plan({"aaron": {"region": "us"}}, with_peers(
        observed(rows, files={"eu/aaron.db": 3}, journal=j), peer()))
    assert acts(waiting) == {"aaron": "wait"}
    assert "waiting for us to take it over" in waiting.actions[0].detail
    older = agent_plan({"aaron": {"region": "us"}}, with_peers(
        observed(rows, files={"eu/aaron.db": 3}, journal=j),
        peer(tenants={"aaron": (1, "active")})))
    assert acts(older) == {"aaron": "wait"}  # a generation below the handoff's: not it
    done = agent_plan({"aaron": {"region": "us"}}, with_peers(
        observed(rows, files={"eu/aaron.db": 3}, journal=j),
        peer(tenants={"aaron": (2, "active")})))
    assert acts(done) == {"aaron": "release"}
    assert done.actions[0].handoff == HANDOFF


def test_the_source_retires_its_copy_only_for_a_confirmed_registration_of_this_handoff(
        ) -> None:
    rows = [row("aaron", status="relocating")]
    j = {"aaron": journal(OUT, HANDED_OFF)}

    def decided(view: PeerView) -> tuple[str, str]:
        p = agent_plan({"aaron": {"region": "us"}}, with_peers(
            observed(rows, files={"eu/aaron.db": 3}, journal=j), view))
        return acts(p)["aaron"], p.actions[0].detail

    held = {"aaron": (2, "active")}
    kind, why = decided(peer(tenants=held, seq=0))  # registered at seq 0, copy at 0
    assert kind == "wait" and "not yet confirmed by a later commit" in why
    assert decided(peer(tenants=held, taken="d1g"))[0] == "release"
    kind, why = decided(peer(tenants=held, taken="other"))  # another handoff's content
    assert kind == "wait" and "not this handoff's d1g (txid 42)" in why
    assert decided(peer(tenants={"aaron": (3, "active")}, taken="other"))[0] == "release"
    assert decided(peer(tenants=held, taken=None))[0] == "release"  # an older agent's row


def test_declared_back_before_anything_was_published_is_cancelled_at_once() -> None:
    obs = with_peers(observed([row("aaron", status="relocating")], files={"eu/aaron.db": 3},
                              journal={"aaron": journal(OUT, "sync")}), peer(age=None))
    p = agent_plan({"aaron": {"region": "eu"}}, obs)
    assert acts(p) == {"aaron": "cancel-handoff"}


def test_declared_back_after_the_handoff_cancels_only_once_the_destination_saw_it() -> None:
    rows = [row("aaron", status="relocating")]
    j = {"aaron": journal(OUT, HANDED_OFF)}

    def with_view(view: PeerView) -> str:
        p = agent_plan({"aaron": {"region": "eu"}}, with_peers(
            observed(rows, files={"eu/aaron.db": 3}, journal=j), view), revision="rev2")
        return acts(p)["aaron"]

    assert with_view(peer(revision="rev")) == "wait"  # us may still act on the old state
    assert with_view(peer(age=None, revision="rev2")) == "wait"
    assert with_view(peer(revision="rev2")) == "cancel-handoff"
    # us registered it meanwhile: ours is retired (and later handed back by us)
    assert with_view(peer(revision="rev2", tenants={"aaron": (2, "active")})) == "release"


def test_an_interrupted_takeover_resumes_while_the_source_still_hands_it_off() -> None:
    h = dataclasses.replace(HANDOFF, to_region="eu")
    j = {"aaron": journal(IN, "restore", h, from_region="us")}
    resumed = agent_plan({"aaron": {"region": "eu"}}, with_peers(
        observed(journal=j), peer(tenants={"aaron": (1, "relocating")}, handoffs=(h,))))
    assert acts(resumed) == {"aaron": "takeover"}
    gone = agent_plan({"aaron": {"region": "eu"}}, with_peers(
        observed(journal=j), peer(tenants={"aaron": (1, "active")})))
    assert acts(gone) == {"aaron": "abandon-takeover"}
    unknown = agent_plan({"aaron": {"region": "eu"}}, with_peers(
        observed(journal=j), peer(age=None)))
    assert acts(unknown) == {"aaron": "wait"}


def test_an_interrupted_takeover_is_abandoned_once_the_tenant_is_declared_elsewhere(
        ) -> None:
    # the source cancels once this agent's view is at the new revision without the
    # tenant; registering it after that would leave two live copies
    h = dataclasses.replace(HANDOFF, to_region="eu")
    j = {"aaron": journal(IN, "verified", h, from_region="us")}
    for declared in ({"aaron": {"region": "us"}}, {}):
        p = agent_plan(declared, with_peers(
            observed(journal=j), peer(tenants={"aaron": (1, "relocating")}, handoffs=(h,))))
        assert acts(p) == {"aaron": "abandon-takeover"}
        assert "staged copy set aside in _retired/, not registered" in p.actions[0].detail


def test_tenants_of_this_region_at_rest_are_planned_as_on_one_host() -> None:
    obs = with_peers(observed([row("aaron", version=2)], files={"eu/aaron.db": 2}), peer())
    p = agent_plan({"aaron": {"region": "eu"}, "acme": {"region": "us"}}, obs)
    assert acts(p) == {"aaron": "migrate"}
    assert p.declared == ("aaron",)


def test_an_interrupted_release_is_finished_whatever_the_views_say() -> None:
    obs = with_peers(observed([row("aaron", status="relocating")],
                              journal={"aaron": journal(OUT, RETIRE)}), peer(age=None))
    p = agent_plan({"aaron": {"region": "us"}}, obs)
    assert acts(p) == {"aaron": "release"}


def test_every_agent_action_renders_in_the_plan() -> None:
    obs = with_peers(observed([row("aaron")], files={"eu/aaron.db": 3}), peer())
    p = agent_plan({"aaron": {"region": "us"}, "hooli": {"region": "eu"}}, obs)
    lines = render.plan_lines(p, "tenants.yaml")
    assert any(line.split()[:6] == [">", "handoff", "aaron", "eu", "→", "us"]
               for line in lines), lines
    assert p.tenant_count == 1
    assert lines[-1].startswith("Plan: 1 to create,") and "1 to hand off" in lines[-1]
    waiting = agent_plan({"aaron": {"region": "eu"}}, with_peers(observed(), peer(age=None)))
    assert render.plan_summary(waiting) == "No changes now; 1 waiting (see the wait lines)."
    for kind in Kind:
        assert kind in render.SYMBOLS, kind


def test_a_fresh_view_at_another_revision_is_not_enough_to_create() -> None:
    p = agent_plan({"aaron": {"region": "eu"}},
                   with_peers(observed(), peer(age=1.0, revision="older")), revision="rev")
    assert acts(p) == {"aaron": "wait"}
    assert "its registry view is at revision older, not rev" in p.actions[0].detail
