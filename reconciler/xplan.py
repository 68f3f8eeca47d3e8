"""What a region agent plans (issue 15 items 1 and 3): pure, like ``plan``.

Why a module of its own: an agent (``--region NAME``) decides for three kinds of
tenants that a single host never meets — declared here but held by no local row
(create only when it is known that no other region holds it; else take it over from
the region handing it off, or wait), held here but declared in another region (hand
it off through the replica, then retire the local copy once the destination holds it),
and tenants in the middle of such a move. Everything else is ``plan.plan`` as on one
host, on the region's tenants only. No I/O: ``observed.peers`` (each other region's
followed registry, ``peers.read_views``) is what the agent knows of the others.

Rules (SPEC-15 "Agents and cross-host relocation"):
* A tenant declared in another region and absent here is not this agent's business.
* Declared here, absent here: held by a peer (highest generation wins) with a handoff
  to this region → ``takeover``; held without one → wait for that peer to hand it off;
  held by none while every peer view is fresh and at this revision → planned as on
  one host (``create``); otherwise wait: "cannot know whether <peer> holds <tenant>".
  (A fresh view at an older revision is not enough: the peer may have created the
  tenant under that revision a moment ago, after the copy was taken; once its copy
  shows this revision, every pass of the older one had committed, and under this one
  the tenant is not its to create.)
* Held here, declared in region R: ``handoff`` once R's view is fresh (its agent is up:
  a tenant is never fenced for an absent destination); after the handoff, ``release``
  (retire the local copy) once R's view shows it at a generation ≥ the handoff's.
* Declared back here (or elsewhere) after a handoff, before any peer registered it →
  ``cancel-handoff``: at once while nothing was published (phases before
  ``handed-off``), else once the destination's view is fresh, at this revision and
  without the tenant (its agent has seen the same desired state, so it will not take
  the tenant over).
* A takeover journaled here whose handoff the source no longer shows (cancelled), or
  whose tenant is now declared in another region → ``abandon`` (its staged copy is
  kept aside; nothing was registered).
* Confirmed facts only (``PeerView.confirmed``): a handoff is taken over, and a
  destination's registration retires the source's copy, only once the copy shows a
  later commit of that registry — Litestream may ship a commit its writer's crash then
  discards. A registration at the handoff's generation must also carry the handoff's
  content digest (else both copies are kept and the wait says so).
Waits are actions of kind ``wait``: reported, never errors, never a change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from reconciler.actions import Action, Kind, Plan
from reconciler.desired import Desired, TenantSpec
from reconciler.migrations import Catalog
from reconciler.plan import plan
from reconciler.state import Handoff, JournalRow, Observed, PeerTenant, PeerView

OUT, IN = "xmove-out", "xmove-in"  # journal actions: the source's and the destination's
HANDED_OFF = "handed-off"  # the source's phase once its ``handoffs`` row is written
RETIRE = "retire"  # the source's phase once the destination was seen holding the tenant


def plan_agent(whole: Desired, scoped: Desired, observed: Observed, catalog: Catalog,
               region: str, *, stale_after: float, revision: str = "",
               retry_failed: bool = False) -> Plan:
    """The plan of the agent of ``region``. ``whole``: every region's desired state;
    ``scoped``: ``agent.scoped(whole, region)`` (what ``observed`` was read for);
    ``stale_after``: seconds after which a peer view is not trusted."""
    peers: Mapping[str, PeerView] = observed.peers or MappingProxyType({})
    reg = observed.registry
    moves: list[Action] = []
    owned: set[str] = set()  # tenants decided here, none of plan()'s business
    pinned: dict[str, TenantSpec] = {}  # held here, declared elsewhere: kept as they are
    for name, row in reg.tenants.items():
        spec = whole.tenants.get(name)
        journal = reg.journal.get(name)
        out = journal if journal is not None and journal.action == OUT else None
        if row.status == "archived" or (spec is None and out is None):
            continue  # archived, or undeclared everywhere: plan() as on one host
        if spec is not None and spec.region == region and out is None:
            continue  # ours, and staying: plan() as on one host
        owned.add(name)
        if spec is not None and spec.region != region:
            pinned[name] = dataclasses.replace(spec, region=region)
        moves.append(_leaving(name, row.region, row.schema_version, row.status, spec, out,
                              peers, region, stale_after, revision))
    for name, journal in reg.journal.items():
        if journal.action == IN and name not in reg.tenants:
            owned.add(name)
            spec = whole.tenants.get(name)
            moves.append(_arriving(name, journal, spec.region if spec else None, peers,
                                   stale_after))
    for name, spec in scoped.tenants.items():
        if name in owned or name in reg.tenants:
            continue
        decided = _absent(spec, peers, stale_after, revision)
        if decided is not None:
            owned.add(name)
            moves.append(decided)
    admitted = dataclasses.replace(scoped, tenants=MappingProxyType(
        {**{n: s for n, s in scoped.tenants.items() if n not in owned}, **pinned}))
    quiet = dataclasses.replace(observed, registry=dataclasses.replace(
        reg, journal=MappingProxyType({n: j for n, j in reg.journal.items()
                                       if j.action not in (OUT, IN)})))
    base = plan(admitted, quiet, catalog, revision=revision, retry_failed=retry_failed)
    return dataclasses.replace(
        base, actions=(*(a for a in base.actions if a.tenant not in owned), *moves),
        declared=tuple(scoped.tenants), tenant_count=len(scoped.tenants))


def holder(name: str, peers: Mapping[str, PeerView]) -> tuple[PeerView, PeerTenant] | None:
    """The peer region holding ``name`` at the highest generation (archived rows hold
    nothing), or None. Ties go to the region named first, so every host agrees."""
    best: tuple[PeerView, PeerTenant] | None = None
    for view in sorted(peers.values(), key=lambda v: v.region):
        t = view.tenants.get(name)
        if t is not None and t.status != "archived" and (
                best is None or t.generation > best[1].generation):
            best = (view, t)
    return best


def _age(view: PeerView) -> str:
    return "missing" if view.age is None else f"{view.age:.0f} s old"


def _wait(name: str, region: str | None, why: str) -> Action:
    return Action(Kind.WAIT, name, region, detail=why)


def _absent(spec: TenantSpec, peers: Mapping[str, PeerView], stale_after: float,
            revision: str) -> Action | None:
    """Declared here, no local row: take over, wait, or (None) plan it as on one host."""
    name = spec.name
    held = holder(name, peers)
    if held is not None:
        view, tenant = held
        handoff = view.handoffs.get(name)
        if (handoff is not None and handoff.to_region == spec.region
                and not view.confirmed(handoff.seq)):
            return _wait(name, spec.region, f"{view.region} shows a handoff of {name} at "
                         f"txid {handoff.txid} that no later commit of its registry has "
                         "confirmed yet (its agent may have been killed while writing it:"
                         " taken over once confirmed, within a heartbeat; its view is "
                         f"{_age(view)})")
        if handoff is not None and handoff.to_region == spec.region:
            return Action(Kind.TAKEOVER, name, spec.region, from_region=view.region,
                          from_version=handoff.schema_version,
                          to_version=handoff.schema_version, status="active",
                          handoff=handoff, protected=spec.protected,
                          detail=f"{view.region} → {spec.region} at txid {handoff.txid}, "
                          f"generation {handoff.generation}")
        return _wait(name, spec.region, f"waiting for {view.region} to hand off {name} "
                     f"(held there at generation {tenant.generation}, {tenant.status}; its "
                     f"view is {_age(view)}"
                     + ("" if view.fresh(stale_after) else
                        f", stale past {stale_after:g} s: is {view.region}'s agent or the "
                        "replica store down?") + ")")
    unsure = [v for v in sorted(peers.values(), key=lambda v: v.region)
              if not v.fresh(stale_after)]
    if unsure:
        v = unsure[0]
        return _wait(name, spec.region, f"cannot know whether {v.region} holds {name}: its "
                     f"registry view is {_age(v)} — not created until it is fresh "
                     f"(within {stale_after:g} s)")
    behind = [v for v in sorted(peers.values(), key=lambda v: v.region)
              if v.revision != revision]
    if behind:  # it may have created the tenant under an earlier desired state
        v = behind[0]
        return _wait(name, spec.region, f"cannot know whether {v.region} holds {name}: its "
                     f"registry view is at revision {(v.revision or 'none')[:12]}, not "
                     f"{revision[:12]} — not created until {v.region} has applied it")
    return None


def _leaving(name: str, here: str, version: int, status: str, spec: TenantSpec | None,
             out: JournalRow | None, peers: Mapping[str, PeerView], region: str,
             stale_after: float, revision: str) -> Action:
    """Held here and declared elsewhere, or in the middle of a handoff."""
    to = spec.region if spec is not None else None
    base = Action(Kind.WAIT, name, here, from_region=here, from_version=version,
                  to_version=version)
    if out is not None and out.phase == RETIRE:  # decided before a crash: finished
        return dataclasses.replace(base, kind=Kind.RELEASE, status="archived",
                                   handoff=handoff_of(out), region=handoff_of(out).to_region,
                                   detail="resume interrupted release (phase retire)")
    if out is not None and out.phase == HANDED_OFF:
        handed = handoff_of(out)
        dest = peers.get(handed.to_region)
        there = dest.tenants.get(name) if dest is not None else None
        if there is not None and there.generation >= handed.generation:
            assert dest is not None
            if not dest.confirmed(there.seq):
                return dataclasses.replace(
                    base, region=handed.to_region, handoff=handed, detail=f"{handed.to_region}"
                    f" shows {name} at generation {there.generation}, not yet "
                    "confirmed by a later commit of its registry (its agent may have been "
                    "killed while writing it): retired here once confirmed")
            if (there.generation == handed.generation and there.taken_digest is not None
                    and there.taken_digest != handed.digest):  # None: an older agent's
                return dataclasses.replace(
                    base, region=handed.to_region, handoff=handed, detail=f"{handed.to_region}"
                    f" holds {name} at generation {there.generation} with content"
                    f" {there.taken_digest[:12]}, not this handoff's "
                    f"{handed.digest[:12]} (txid {handed.txid}): both copies are kept; an "
                    "operator compares them (README: cross-host relocation)")
            return dataclasses.replace(
                base, kind=Kind.RELEASE, region=handed.to_region, status="archived",
                handoff=handed, detail=f"{handed.to_region} holds it at generation "
                f"{there.generation} ({there.status}) — the copy here is retired")
        if to == handed.to_region:
            return dataclasses.replace(
                base, region=to, handoff=handed, detail=f"handed off to {to} at txid "
                f"{handed.txid}; waiting for {to} to take it over (its view is "
                f"{_age(dest) if dest is not None else 'missing'})")
        if (dest is not None and dest.fresh(stale_after) and dest.revision == revision
                and there is None):
            return dataclasses.replace(
                base, kind=Kind.CANCEL, region=here, handoff=handed, status="active",
                detail=f"{handed.to_region} never took it over and now declares it "
                f"{'in ' + to if to else 'nowhere'} — back in service here")
        return dataclasses.replace(
            base, handoff=handed, detail=f"handed off to {handed.to_region}, now declared "
            f"{'in ' + to if to else 'nowhere'}: cancelled once {handed.to_region}'s view "
            f"is fresh at this revision (it is "
            f"{_age(dest) if dest is not None else 'missing'})")
    if to is None or to == region:  # fenced, nothing published yet: simply cancelled
        assert out is not None
        return dataclasses.replace(base, kind=Kind.CANCEL, region=here, status="active",
                                   detail=f"unfinished handoff (phase {out.phase}) "
                                   f"cancelled: {name} is declared "
                                   f"{'here' if to else 'nowhere'} again")
    dest = peers.get(to)
    if out is None and status != "active":
        return dataclasses.replace(base, region=to, detail=f"declared in {to}, status "
                                   f"{status}: handed off once it is active")
    if out is None and (dest is None or not dest.fresh(stale_after)):
        return dataclasses.replace(
            base, region=to, detail=f"declared in {to}, whose registry view is "
            f"{_age(dest) if dest is not None else 'missing'}: keeps serving here until "
            f"{to}'s agent is seen (within {stale_after:g} s)")
    return dataclasses.replace(
        base, kind=Kind.HANDOFF, region=to, status="relocating",
        detail=f"{here} → {to}" + (f" (resume, phase {out.phase})" if out else ""))


def _arriving(name: str, journal: JournalRow, declared: str | None,
              peers: Mapping[str, PeerView], stale_after: float) -> Action:
    """A takeover journaled here and not registered: resumed while the source still
    shows its handoff and the tenant is still ``declared`` in this region; abandoned
    once it is declared elsewhere (the source cancels its handoff once this agent's
    view is at that revision without the tenant: registering it then would make two
    live copies) or the source (fresh) shows the handoff no more."""
    handed = handoff_of(journal)
    source = journal.details().get("from_region")
    view = peers.get(source) if isinstance(source, str) else None
    shown = view.handoffs.get(name) if view is not None else None
    base = Action(Kind.TAKEOVER, name, handed.to_region, from_region=source,
                  from_version=handed.schema_version, to_version=handed.schema_version,
                  status="active", handoff=handed,
                  detail=f"resume takeover (phase {journal.phase})")
    if declared != handed.to_region:
        return dataclasses.replace(base, kind=Kind.ABANDON, status=None,
                                   detail=f"{name} is now declared "
                                   f"{'in ' + declared if declared else 'nowhere'} — staged"
                                   " copy set aside in _retired/, not registered")
    if shown == handed:
        return base
    if view is not None and view.fresh(stale_after):
        return dataclasses.replace(base, kind=Kind.ABANDON, status=None,
                                   detail=f"{source} no longer hands {name} off at txid "
                                   f"{handed.txid} — staged copy set aside in _retired/, "
                                   "not registered")
    return dataclasses.replace(base, kind=Kind.WAIT, status=None,
                               detail=f"takeover interrupted (phase {journal.phase}); "
                               f"waiting for {source}'s view (it is "
                               f"{_age(view) if view is not None else 'missing'})")


def handoff_of(journal: JournalRow) -> Handoff:
    """The handoff a journal row of either side carries in its detail."""
    d = journal.details()
    return Handoff(journal.tenant, str(d["to_region"]), str(d["replica_url"]), int(d["txid"]),
                   int(d["schema_version"]), str(d["digest"]), int(d["generation"]))
