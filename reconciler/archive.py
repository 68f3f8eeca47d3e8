"""Archive removed tenants and restore re-declared ones (DESIGN §5, issue 3).

Not built yet: ``archive`` and ``restore`` actions fail loudly for that tenant and
change nothing.
"""

from __future__ import annotations

from reconciler.context import Context, Outcome
from reconciler.errors import PermanentError
from reconciler.plan import Action


def archive(action: Action, ctx: Context) -> Outcome:
    raise PermanentError(f"archiving {action.tenant} is not implemented yet; nothing changed")


def restore(action: Action, ctx: Context) -> Outcome:
    raise PermanentError(f"restoring {action.tenant} is not implemented yet; nothing changed")
