"""What ``--region NAME`` may name, said so a person can act on it (issue 15).

Why a module of its own: a region agent (``reconcile --region NAME``, ``agent.check``)
refuses a region ``tenants.yaml`` does not declare. The hint it gives must never
suggest writing something ``tenants.yaml`` itself would refuse (``regions: {EU: …}``,
``regions: {eu;rm: …}``): a region name is a lowercase DNS label (the rule
``yamlnodes.LABEL`` that ``desired`` applies to every region name).

Invariants:
* a hint only ever names valid region names: a declared one, or the name given when it
  is itself a valid label (then declaring it is a real option);
* an invalid name is said to be invalid, with the declared regions listed.
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.errors import Problem
from reconciler.yamlnodes import LABEL, suggest_label

OPTION = "--region"
_RULE = "a lowercase DNS label: a-z, 0-9 and '-', 1–63 characters, not starting or " \
        "ending with '-'"


def undeclared(region: str, declared: Iterable[str], source: str) -> Problem:
    """The problem with ``--region region`` when ``source`` (tenants.yaml) declares only
    ``declared``: what is wrong, and a hint naming only valid region names."""
    known = sorted(declared)
    listed = ", ".join(known) or "none"
    if LABEL.match(region):
        return Problem(OPTION, None, None,
                       f"region {region!r} is not declared in {source} (declared: {listed})",
                       f"write one of those, or declare `regions: {{{region}: "
                       "{path: ...}}` first")
    fixed = suggest_label(region)
    message = f"{region!r} is not a valid region name ({_RULE})"
    if fixed is not None and fixed in known:
        return Problem(OPTION, None, None, message, f"write `{OPTION} {fixed}`")
    if known:
        return Problem(OPTION, None, None, message,
                       f"write one of the regions {source} declares: {listed}")
    return Problem(OPTION, None, None, message,
                   f"{source} declares no region: declare one first, e.g. "
                   "`regions: {eu: {path: ...}}`")
