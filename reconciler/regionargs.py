"""What ``--region NAME`` may name, said so a person can act on it (issue 15).

Why a module of its own: a region agent (``reconcile --region NAME``, ``agent.check``)
refuses a region ``tenants.yaml`` does not declare. The hint it gives must never
suggest writing something ``tenants.yaml`` itself would refuse (``regions: {EU: …}``,
``regions: {eu;rm: …}``): a region name is a lowercase DNS label (the rule
``yamlnodes.LABEL`` that ``desired`` applies to every region name).

Invariants:
* a hint only ever names valid region names: a declared one, or the name given when it
  is itself a valid label (then declaring it is a real option);
* an invalid name is said to be invalid, with the declared regions listed;
* a region agent's replica must be one every host reaches: a relative path
  (``replica: backups``) is private to each host's checkout (``shared_replica``).
"""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.desired import Desired
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


def shared_replica(desired: Desired, region: str) -> Problem | None:
    """The problem with a region agent (``--region region``) whose ``settings.backup``
    replica was written as a relative path (``backups``): it resolves against each
    host's own checkout of tenants.yaml, so every host would replicate into a private
    folder and wait for ever for the others' registries. None when the replica is a URL
    or an absolute path (a shared mount is the operator's word), or there is none."""
    backup = desired.settings.backup
    if backup is None or backup.relative_at is None:
        return None
    line, column, text = backup.relative_at
    return Problem(str(desired.source), line, column,
                   f"settings.backup.replica {text!r} is a relative path ({backup.replica}"
                   f" here): each host resolves it in its own checkout, so with {OPTION} "
                   f"{region} the "
                   "region hosts cannot reach each other's replicas (tenants and "
                   "registries travel through them)",
                   "write a replica every host reaches: nats://HOST:4222/BUCKET, "
                   "s3://BUCKET/PATH, or file:///PATH on a mount every host shares")
