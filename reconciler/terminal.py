"""Terminal conventions: compact output and colour on a terminal only, ``NO_COLOR``.

Why: a person at a terminal wants a short, coloured answer; a pipe, a cron mail or a CI
log wants every line, uncoloured, so it can be read later or parsed. This module makes
that one decision for every command, from the stream itself and the environment:

* colour only when the stream is a terminal and ``NO_COLOR`` is unset or empty
  (https://no-color.org: "when present and not an empty string"), and never for a
  dumb terminal (``TERM=dumb``);
* compact output only on a terminal; ``--verbose`` or ``--json`` always give every line.

Styles are ANSI SGR sequences (ECMA-48), applied to whole lines by their plan symbol or
to single words, so a disabled style returns its input unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TextIO

_SGR = {"green": "32", "red": "31", "yellow": "33", "cyan": "36", "blue": "34",
        "bold": "1", "dim": "2", "bold-red": "1;31"}

# plan lines start with two spaces, a symbol and a space (render.SYMBOLS)
_PLAN_SYMBOL_COLOUR = {"+": "green", "-": "red", "~": "yellow", ">": "cyan", "<": "cyan",
                       "=": "blue", "*": "blue", "!": "bold-red", "?": "yellow"}


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def colour_wanted(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when output to ``stream`` may be coloured (a terminal, no ``NO_COLOR``)."""
    env = os.environ if environ is None else environ
    if env.get("NO_COLOR", "") != "" or env.get("TERM") == "dumb":
        return False
    return is_terminal(stream)


@dataclass(frozen=True)
class Style:
    """Paints text when enabled; a disabled style is the identity."""

    enabled: bool = False

    def paint(self, text: str, colour: str) -> str:
        if not self.enabled or not text:
            return text
        return f"\x1b[{_SGR[colour]}m{text}\x1b[0m"

    def plan_lines(self, lines: Iterable[str]) -> list[str]:
        """Colour each plan line by its symbol (``  + create …`` green, ``  ! …`` red);
        other lines (header, waves, summary) stay as they are."""
        out = []
        for line in lines:
            colour = _PLAN_SYMBOL_COLOUR.get(line[2:3]) if line[:2] == "  " and \
                line[3:4] == " " else None
            out.append(self.paint(line, colour) if colour else line)
        return out


PLAIN = Style(False)


def style_for(stream: TextIO) -> Style:
    return Style(colour_wanted(stream))
