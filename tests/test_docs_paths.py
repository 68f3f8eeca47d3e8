"""The READMEs point only at files a clone of this repository has.

A path in backticks or a link target whose first folder is one the repository holds
(``migrations/…``, ``deploy/…``, ``reconciler/…``) or that leaves the repository (``../``)
must name a file or folder that ``git`` tracks (or would, once committed). Placeholders
(``NNNN``, ``<name>``, ``*``) and what the tool creates at run time (``data/``,
``.venv/``, ``dist/``) are not files of the clone and are skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import PurePosixPath

from tests.conftest import REPO

DOCS = ("README.md", "deploy/README.md", "bench/README.md")
PLACEHOLDER = re.compile(r"NNNN|<|>|\*|\$|=|\s")


def clone_files() -> set[str]:
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, text=True, check=True)
    files = set(out.stdout.split())
    return files | {str(p) for f in files for p in PurePosixPath(f).parents if str(p) != "."}


def ignored(path: str) -> bool:
    """Made at run time, never committed (``bench/_fleets/``, ``data/``): .gitignore says so."""
    return any(subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", "--no-index", p],
                              capture_output=True).returncode == 0 for p in (path, path + "/"))


def mentioned(text: str) -> set[str]:
    return set(re.findall(r"`([^`\n]+)`", text)) | set(re.findall(r"\]\(([^)\s]+)\)", text))


def test_every_path_the_readmes_mention_exists_in_a_clone() -> None:
    have = clone_files()
    tops = {PurePosixPath(f).parts[0] for f in have}
    wrong = []
    for doc in DOCS:
        here = os.path.dirname(doc)
        for token in sorted(mentioned((REPO / doc).read_text())):
            path = token.split("#")[0].rstrip("/.,:;")
            if (not path or "://" in path or path.startswith("/") or PLACEHOLDER.search(path)
                    or ("/" not in path and not path.endswith(".md"))):
                continue
            readings = {os.path.normpath(path), os.path.normpath(os.path.join(here, path))}
            outside = any(r.startswith("..") for r in readings) and re.search(r"\.\w+$", path)
            first = PurePosixPath(path).parts[0]
            ours = first in tops or os.path.join(here, first) in have
            if not outside and not ours:
                continue  # not one of the repository's files: a host header, a runtime folder
            if not any(r in have or ignored(r) for r in readings):
                wrong.append(f"{doc}: `{token}`")
    assert wrong == []
