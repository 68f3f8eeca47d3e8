"""Issue 15 item 1 in pull mode: an invalid head makes every agent apply the newest valid
commit before it, so hosts that pulled at different moments converge on one revision.
Real hosts (``hostkit``: a clone, data root and ``reconcile daemon --git-pull --region R``
each), a real bare remote, a ``file://`` replica store."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from tests.e2e.hostkit import Host, Hosts, git, wait_for
from tests.e2e.test_multihost import hosts  # noqa: F401 - the two-host fixture (file://)


def at_revision(host: Host, sha: str) -> bool:
    return host.registry("SELECT revision FROM agent") == [(sha,)]


def events(host: Host, since: int) -> list[dict[str, Any]]:
    """The agent's JSON log lines from line ``since`` on."""
    out = []
    for line in host.log().splitlines()[since:]:
        with contextlib.suppress(ValueError):  # Litestream's lines, a line being written
            out.append(json.loads(line))
    return [e for e in out if isinstance(e, dict)]


def tenants(host: Host) -> set[str]:
    return {r[0] for r in host.registry("SELECT name FROM tenants")}


def test_agent_started_after_a_valid_then_an_invalid_push_applies_the_valid_one(
        hosts: Hosts) -> None:  # noqa: F811 - the fixture imported above
    eu, us = hosts.host("eu"), hosts.host("us")
    first = hosts.push({"aaron": {"region": "eu"}, "acme": {"region": "us"}}, "two tenants")
    eu.start()
    us.start()
    wait_for(lambda: at_revision(eu, first) and at_revision(us, first), what="both at first")
    us.stop()  # us is down while A and B are pushed

    a = hosts.push({"aaron": {"region": "eu"}, "acme": {"region": "us"},
                    "bravo": {"region": "eu"}, "bella": {"region": "us"}}, "A: two more")
    wait_for(lambda: at_revision(eu, a), what="eu applies A")
    b = hosts.push({"aaron": {"region": "eu"}, "acme": {"region": "us"},
                    "bravo": {"region": "eu"}, "bella": {"region": "us"},
                    "Gina": {"region": "eu"}}, "B: an invalid name")
    wait_for(lambda: git(eu.root, "rev-parse", "HEAD") == b, what="eu pulls B")

    us.start()  # pulls straight to B: must apply A, as eu does, not keep `first`
    wait_for(lambda: at_revision(us, a), what="us applies A, the newest valid commit")
    wait_for(lambda: tenants(us) == {"acme", "bella"}, what="us creates bella")
    wait_for(lambda: tenants(eu) == {"aaron", "bravo"}, what="eu creates bravo")
    assert at_revision(eu, a)
    assert {r[0] for r in us.registry("SELECT revision FROM events WHERE tenant = 'bella'")} \
        == {a}

    # B is reported as before: a failed load naming it, and the note in `status`
    for host in (eu, us):
        failed = host.registry("SELECT revision, detail FROM events "
                               "WHERE action = 'load' AND outcome = 'failed'")
        assert failed and all(r[0] == b for r in failed)
        assert "Gina" in json.loads(failed[-1][1])["problems"][0]
        shown = host.run("status")
        assert f"still applying rev {a[:7]}" in shown.stdout, shown.stdout + shown.stderr
        # the work tree stays at the head, clean: the next pull fast-forwards
        assert git(host.root, "rev-parse", "HEAD") == b
        assert git(host.root, "status", "--porcelain") == ""
    fell_back = '"applying the newest valid commit before the invalid head"'
    assert us.log().count(fell_back) == 1 and eu.log().count(fell_back) == 0
    # each walk happened once, not at every 1 s resync since
    assert us.log().count('"commit invalid too') == 1 and eu.log().count('"commit invalid too') == 1

    # restarted on the invalid head itself (nothing loaded yet): it walks back to A again
    us.stop()
    before = len(us.log().splitlines())
    us.start()
    wait_for(lambda: us.log().count(fell_back) == 2, what="us falls back to A after restart")
    wait_for(lambda: any(e.get("event") == "pass starting" and e.get("revision") == a
                         for e in events(us, since=before)), what="us passes at A again")
    assert not any(e.get("event") == "pass starting" and e.get("revision") != a
                   for e in events(us, since=before))

    fixed = hosts.push({"aaron": {"region": "eu"}, "acme": {"region": "us"},
                        "bravo": {"region": "eu"}, "bella": {"region": "us"},
                        "gina": {"region": "eu"}}, "C: fixed")
    wait_for(lambda: at_revision(eu, fixed) and at_revision(us, fixed), what="both at C")
    wait_for(lambda: "gina" in tenants(eu), what="eu creates gina")
