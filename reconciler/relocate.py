"""Relocate a tenant database between region directories (DESIGN §5, issue 3).

Not built yet: the planner already emits ``relocate`` actions; until this module is
implemented they fail loudly for that tenant and change nothing.
"""

from __future__ import annotations

from reconciler.context import Context, Outcome
from reconciler.errors import PermanentError
from reconciler.plan import Action


def run(action: Action, ctx: Context) -> Outcome:
    raise PermanentError(f"relocating {action.tenant} ({action.detail}) is not implemented yet; "
                         "nothing was changed")
