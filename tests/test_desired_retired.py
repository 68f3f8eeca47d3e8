"""``retired: [name, …]`` in tenants.yaml: acknowledged orphans, validated like every
other setting (file:line:column, what to write instead)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_desired import BASE, load, problems


def test_retired_names_load_as_a_set(tmp_path: Path) -> None:
    assert load(tmp_path, BASE + "retired: [oldco, initech]\n").retired == frozenset(
        {"oldco", "initech"})
    assert load(tmp_path, BASE + "retired:\n").retired == frozenset()
    assert load(tmp_path, BASE).retired == frozenset()


@pytest.mark.parametrize(("text", "where", "message", "hint"), [
    ("retired: oldco\n", (15, 10), "retired must be a list of tenant names, got 'oldco'",
     "write `retired: [oldco, initech]`"),
    ("retired: [OldCo]\n", (15, 11), "retired tenant name 'OldCo' is not a lowercase DNS "
     "label", "write 'oldco'"),
    ("retired: [oldco, oldco]\n", (15, 18), "tenant 'oldco' is listed twice under retired:",
     "list each retired tenant once"),
    ("retired: [aaron]\n", (15, 11), "tenant 'aaron' is declared under tenants: and listed "
     "under retired:", "remove 'aaron' from retired:"),
])
def test_bad_retired_lists_are_located_and_say_what_to_write(
        tmp_path: Path, text: str, where: tuple[int, int], message: str, hint: str) -> None:
    [problem] = problems(tmp_path, BASE + text)
    assert (problem.line, problem.column) == where
    assert problem.message == message and problem.hint.startswith(hint)
