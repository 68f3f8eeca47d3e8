"""deploy/README.md's install steps, run as written in a fresh clone and a fresh virtualenv.

The package is not on a public index, so the README installs from a checkout, or from
wheels built from one. The commands are read from the README itself (only the target
folders move into tmp_path), so the test fails when the README and the steps part ways.
The runs fetch build tools and dependencies from the package index (~20-40 s each), so
they are ``slow``; the default run checks that step 1 is still the three commands run here.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "deploy" / "README.md"


def blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README.read_text(), re.S)


def step_one() -> list[str]:
    """The commands of step 1 ("the program, in its own virtualenv")."""
    first = blocks()[0]
    lines = first.split("# 2.")[0].splitlines()
    return [ln.split("  #")[0].strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def wheel_steps() -> list[str]:
    block = next(b for b in blocks() if "python -m build" in b)
    return [ln.split("  #")[0].strip() for ln in block.splitlines()
            if ln.strip() and not ln.startswith("#")]


def clone(tmp_path: Path) -> Path:
    """A fresh clone of the committed repository (what a new machine would have)."""
    dest = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    return dest


def run(commands: list[str], cwd: Path, moves: dict[str, str]) -> list[str]:
    outputs = []
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    for command in commands:
        for old, new in moves.items():
            command = command.replace(old, new)
        done = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    return outputs


def test_step_one_names_a_venv_an_install_from_the_checkout_and_a_version_check() -> None:
    assert step_one() == ["python3 -m venv /opt/tenant-reconciler",
                          "/opt/tenant-reconciler/bin/pip install .",
                          "/opt/tenant-reconciler/bin/reconcile --version"]


@pytest.mark.slow
def test_step_one_as_written_installs_from_the_checkout(tmp_path: Path) -> None:
    checkout = clone(tmp_path)
    out = run(step_one(), checkout, {"/opt/tenant-reconciler": str(tmp_path / "opt")})
    assert re.fullmatch(r"reconcile \d+\.\d+\.\d+\n", out[-1])


@pytest.mark.slow
def test_wheels_built_with_python_m_build_install_with_no_index(tmp_path: Path) -> None:
    checkout = clone(tmp_path)
    moves = {"/opt/tenant-reconciler": str(tmp_path / "opt"),
             "/tmp/build-env": str(tmp_path / "build-env")}
    run(wheel_steps(), checkout, moves)
    wheels = sorted(p.name for p in (checkout / "wheels").iterdir())
    assert any(w.startswith("tenant_reconciler-") for w in wheels)
    out = run([f"{tmp_path}/opt/bin/reconcile --version"], checkout, {})
    assert out[0].startswith("reconcile ")
