"""``settings.notify`` of tenants.yaml: webhook targets, their schema and its checks.

Why a module of its own: the notification targets (issue 16) are one self-contained
part of the desired state; ``desired`` keeps the document's structure and mixes these
checks into its checker. The targets are sent to by ``webhooks``.

Invariants: a target never holds a secret — the URL comes from an environment variable
(``url_env``) or a file (``url_file``), both read only when sending; ``url:`` or
``token:`` in tenants.yaml is refused at its line and column. Loading does no I/O.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.yamlnodes import NodeChecker, kind

NOTIFY_EVENTS = ("rollout_halted", "tenant_failed", "tenant_missing", "drift_found",
                 "rollout_finished", "desired_state_invalid", "git_pull_refused")
NOTIFY_FORMATS = ("slack", "alertmanager")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NOTIFY_KEYS = ("name", "url_env", "url_file", "format", "events")
_SECRET_KEYS = ("url", "token")  # refused with a hint, not as unknown keys


@dataclass(frozen=True)
class NotifyTarget:
    """One webhook of ``settings.notify`` (issue 16). The URL (it holds a token) is never
    in tenants.yaml: ``url_env`` names an environment variable, ``url_file`` a file whose
    first line is the URL (``${VAR}`` in it is expanded when sending, for systemd's
    ``${CREDENTIALS_DIRECTORY}``). See ``webhooks``."""

    name: str
    events: frozenset[str]
    url_env: str | None = None
    url_file: str | None = None
    format: str = "slack"  # slack | alertmanager



class NotifyChecker(NodeChecker):
    """The checks of ``settings.notify``, mixed into tenants.yaml's checker."""

    def notify(self, node: yaml.Node) -> tuple[NotifyTarget, ...]:
        """``settings.notify``: a list of webhook targets (issue 16)."""
        example = "write for example `notify: [{url_env: SLACK_WEBHOOK_URL, events: " \
                  "[rollout_halted, tenant_failed]}]`"
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"settings.notify must be a list, got {kind(node)}", example)
            return ()
        out: list[NotifyTarget] = []
        for i, item in enumerate(node.value):
            target = self.notify_target(item, i, example)
            if target is not None:
                if any(t.name == target.name for t in out):
                    self.error(item, f"settings.notify: two targets are named '{target.name}'",
                               "give each target its own `name:`")
                    continue
                out.append(target)
        return tuple(out)

    def notify_target(self, node: yaml.Node, index: int, example: str) -> NotifyTarget | None:
        what = f"settings.notify[{index}]"
        fields: dict[str, Any] = {}
        bad = False
        for key, knode, v in self.mapping(node, what, (*_NOTIFY_KEYS, *_SECRET_KEYS),
                                          example):
            if key in _SECRET_KEYS:
                self.error(knode, f"{what}: a webhook URL or token must not be written in "
                           "tenants.yaml (it is a secret, and this file lives in git)",
                           "write `url_env: SLACK_WEBHOOK_URL` (an environment variable) "
                           "or `url_file: ${CREDENTIALS_DIRECTORY}/slack` (systemd "
                           "LoadCredential=) instead")
                bad = True
                continue
            if key == "events":
                events = self.notify_events(v, what)
                bad |= events is None
                fields["events"] = events
                continue
            text = self.text_of(v, f"{what}.{key}", example)
            if text is None:
                bad = True
            elif key == "url_env" and not _ENV_NAME.fullmatch(text):
                self.error(v, f"{what}.url_env '{text}' is not an environment variable name",
                           "write the variable's name, e.g. SLACK_WEBHOOK_URL — never the URL")
                bad = True
            elif key == "url_file" and "://" in text:
                self.error(v, f"{what}.url_file looks like a URL, not a file",
                           "write the path of a file holding the URL, e.g. "
                           "${CREDENTIALS_DIRECTORY}/slack")
                bad = True
            elif key == "format" and text not in NOTIFY_FORMATS:
                self.error(v, f"{what}.format must be one of {', '.join(NOTIFY_FORMATS)}, got "
                           f"'{text}'", "write slack (a `text` payload, for Slack-style "
                           "incoming webhooks) or alertmanager")
                bad = True
            else:
                fields[key] = text
        if not isinstance(node, yaml.MappingNode):
            return None
        if ("url_env" in fields) == ("url_file" in fields) and not bad:
            self.error(node, f"{what} needs exactly one of url_env and url_file",
                       "write `url_env: SLACK_WEBHOOK_URL` or `url_file: "
                       "${CREDENTIALS_DIRECTORY}/slack`")
            return None
        if bad:
            return None
        events = fields.pop("events", None)
        name = fields.pop("name", None) or fields.get("url_env") or fields.get("url_file")
        return NotifyTarget(name=str(name), events=frozenset(events or NOTIFY_EVENTS),
                            **fields)

    def notify_events(self, node: yaml.Node, what: str) -> frozenset[str] | None:
        hint = f"write a list of: {', '.join(NOTIFY_EVENTS)}"
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.error(node, f"{what}.events must be a non-empty list, got {kind(node)}", hint)
            return None
        out: set[str] = set()
        ok = True
        for item in node.value:
            text = self.text_of(item, f"{what}.events entry", hint)
            if text is None:
                ok = False
            elif text.replace(" ", "_").replace("-", "_") in NOTIFY_EVENTS:
                out.add(text.replace(" ", "_").replace("-", "_"))
            else:
                close = difflib.get_close_matches(text.lower(), NOTIFY_EVENTS, n=1)
                self.error(item, f"unknown event '{text}' in {what}.events",
                           (f"did you mean '{close[0]}'? " if close else "") + hint)
                ok = False
        return frozenset(out) if ok else None
