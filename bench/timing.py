"""Interleaved timing: ours and the baseline measured in the same run, turn by turn.

Why: these machines are shared and noisy; a ratio is only meaningful when both sides
saw the same noise. So every repetition runs each contender once, in an order that
rotates from one repetition to the next (neither side always goes first, into a warm
or a cold cache), and we report medians and the ratio of medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Contender:
    label: str
    run: Callable[[], object]
    setup: Callable[[], object] | None = None  # untimed, before every timed run


@dataclass(frozen=True)
class Row:
    scenario: str
    ours: str
    ours_median: float  # seconds
    baseline: str
    baseline_median: float
    target: str = ""  # e.g. "≤ 3×"; empty when the issue sets none
    limit: float | None = None  # the ratio the target allows (≤ limit, or ≥ when floor)
    at_least: bool = False  # True: the target is a minimum ratio (relocation vs cp)
    unit: str = "s"
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.ours_median / self.baseline_median if self.baseline_median else float("inf")

    @property
    def verdict(self) -> str:
        if self.limit is None:
            return ""
        ok = self.ratio >= self.limit if self.at_least else self.ratio <= self.limit
        return "met" if ok else "MISSED"


def measure(contenders: Sequence[Contender], repeats: int, warmup: bool = True
            ) -> dict[str, list[float]]:
    """Seconds per run for every contender, interleaved and rotated."""
    times: dict[str, list[float]] = {c.label: [] for c in contenders}
    if warmup:
        for c in contenders:
            if c.setup is not None:
                c.setup()
            c.run()
    for r in range(repeats):
        k = r % len(contenders)
        for c in [*contenders[k:], *contenders[:k]]:
            if c.setup is not None:
                c.setup()
            t0 = time.perf_counter()
            c.run()
            times[c.label].append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


def fmt_value(value: float, unit: str) -> str:
    return fmt_time(value) if unit == "s" else f"{value:.3g} {unit}"


def fmt_ratio(row: Row) -> str:
    return f"{row.ratio:.2f}×"


def print_row(row: Row) -> None:
    ours, base = fmt_value(row.ours_median, row.unit), fmt_value(row.baseline_median, row.unit)
    target = f"  target {row.target}: {row.verdict}" if row.target else ""
    print(f"  {row.scenario}\n"
          f"    ours     {row.ours:<44} {ours:>10}\n"
          f"    baseline {row.baseline:<44} {base:>10}\n"
          f"    ratio    {fmt_ratio(row)}{target}"
          + (f"\n    note     {row.note}" if row.note else ""), flush=True)


def markdown(rows: Sequence[Row]) -> str:
    out = ["| scenario | ours | baseline | ours (median) | baseline (median) | ratio | target |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.scenario} | {r.ours} | {r.baseline} | "
                   f"{fmt_value(r.ours_median, r.unit)} | "
                   f"{fmt_value(r.baseline_median, r.unit)} | {fmt_ratio(r)} | "
                   f"{(r.target + ' ' + r.verdict) if r.target else ''} |")
    return "\n".join(out)
