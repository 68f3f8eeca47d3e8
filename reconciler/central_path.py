"""Where the registry is when ``tenants.yaml`` is invalid.

Why: an operator needs ``status``, ``history`` and ``route`` most when the desired
state is broken (issue 12, item 5), and those read only the registry. Validation
(``desired.load``) refuses the whole file at the first problem's kind, so this module
reads just ``settings.data_dir`` and ``settings.central`` leniently, with the same
defaults and the same resolution (relative to the folder of ``tenants.yaml``, ``~``
expanded) as ``desired``; when the file does not parse, the top-level ``settings:``
block is parsed alone (a syntax error is usually elsewhere); anything still unreadable
or of the wrong type falls back to the default. The result is only ever *read*
(``Registry.read``), never written: a command that writes needs a valid ``tenants.yaml``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml


def _setting(settings: dict[str, Any], key: str, base: Path, default: Path) -> Path:
    value = settings.get(key)
    if not isinstance(value, str) or not value or "\x00" in value:
        return default
    return Path(os.path.normpath(base / os.path.expanduser(value)))


def locate(config: Path) -> Path:
    """The path ``settings.central`` of ``config`` names (default
    ``<folder of config>/data/central.db``), read as leniently as possible. Never raises
    for a broken or missing file: it falls back to the defaults."""
    base = config.resolve().parent
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeError):
        text = ""
    document = _parse(text)
    if not isinstance(document, dict):  # a syntax error elsewhere: the settings block alone
        document = _parse(_settings_block(text))
    raw = document.get("settings") if isinstance(document, dict) else None
    settings: dict[str, Any] = raw if isinstance(raw, dict) else {}
    data = _setting(settings, "data_dir", base, base / "data")
    return _setting(settings, "central", base, data / "central.db")


def _parse(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _settings_block(text: str) -> str:
    """The lines of the top-level ``settings:`` mapping (up to the next top-level key)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.rstrip().startswith("settings:"):
            end = next((j for j in range(i + 1, len(lines))
                        if lines[j][:1] not in ("", " ", "\t", "#")), len(lines))
            return "\n".join(lines[i:end])
    return ""
