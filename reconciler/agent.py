"""A region agent's scope: ``reconcile daemon --region NAME`` (issue 15, DESIGN §10).

Why a module of its own: one host per region means one agent per region, each the only
writer of its region's tenants, all reading the same committed ``tenants.yaml``. What
an agent may act on — and what its fleet identity and fence cover — is decided here
once, for the daemon and the one-shot ``reconcile`` / ``--dry-run`` / ``plan`` alike.

Invariants:
* no ``--region``: nothing here applies (today's single host serving every region);
* one region per agent this round (a second ``--region`` is refused, see ``check``);
* ``--region`` needs ``settings.backup``: the replica store carries tenant data and
  registries between hosts, so without it no tenant could ever move;
* ``scoped(desired, region)`` keeps only that region: its directory (so the fence and
  the fleet identity cover only it) and the tenants declared in it. Tenants declared in
  other regions are another agent's business (cross-host moves are ``xplan``'s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import MappingProxyType

from reconciler import regionargs
from reconciler.desired import Desired
from reconciler.errors import InvalidInput, Problem

OPTION = "--region"


def single(regions: Sequence[str] | None) -> str | None:
    """The one region named on the command line (``None``: every region). Raises
    ``InvalidInput`` when it was given more than once."""
    if not regions:
        return None
    if len(regions) > 1:
        raise InvalidInput([Problem(OPTION, None, None,
                                    f"given {len(regions)} times ({', '.join(regions)}): an "
                                    "agent serves one region",
                                    f"run one agent per region host, e.g. `reconcile daemon "
                                    f"--git-pull --region {regions[0]}` on that region's "
                                    "host")])
    return regions[0]


def check(desired: Desired, region: str) -> None:
    """Refuse (``InvalidInput``) a region ``tenants.yaml`` does not declare, or an agent
    without ``settings.backup`` (the replica store is how tenants travel between hosts)."""
    problems = []
    source = str(desired.source)
    if region not in desired.regions:
        problems.append(regionargs.undeclared(region, desired.regions, source))
    if desired.settings.backup is None:
        problems.append(Problem(source, None, None,
                                f"{OPTION} {region} needs settings.backup: region hosts hand "
                                "tenants and registries to each other through the replica "
                                "store",
                                "add `settings: {backup: {replica: nats://HOST:4222/BUCKET}}` "
                                "(or an s3:// or file:// replica every host reaches)"))
    if problems:
        raise InvalidInput(problems)


def scoped(desired: Desired, region: str) -> Desired:
    """``desired`` as the agent of ``region`` acts on it: only that region's directory
    and the tenants declared in it (names keep their order)."""
    return dataclasses.replace(
        desired,
        regions=MappingProxyType({region: desired.regions[region]}),
        tenants=MappingProxyType({n: s for n, s in desired.tenants.items()
                                  if s.region == region}))
