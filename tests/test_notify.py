"""sd_notify over a real unix datagram socket, as systemd would receive it."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.notify import Notifier, one_line, watchdog_interval


@pytest.fixture
def listener() -> Iterator[tuple[socket.socket, str]]:
    # a short directory: unix socket paths are limited to 108 bytes
    directory = tempfile.mkdtemp(prefix="rn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()
    os.unlink(path)
    os.rmdir(directory)


def test_messages_arrive_as_one_datagram_each_in_order(listener: tuple[socket.socket, str]
                                                      ) -> None:
    sock, path = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready()
    assert n.status("3 in sync, rev 3f2a9c1")
    assert n.watchdog()
    assert n.stopping("stopping")
    got = [sock.recv(4096).decode() for _ in range(4)]
    assert got == ["READY=1", "STATUS=3 in sync, rev 3f2a9c1", "WATCHDOG=1",
                   "STOPPING=1\nSTATUS=stopping"]


def test_status_is_flattened_to_one_line(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    Notifier.from_env({"NOTIFY_SOCKET": path}).status("invalid:\n  tenants.yaml:3:5: bad\n")
    assert sock.recv(4096).decode() == "STATUS=invalid: tenants.yaml:3:5: bad"
    assert len(one_line("x" * 5000)) == 400


def test_abstract_namespace_socket() -> None:
    name = f"reconciler-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        assert Notifier.from_env({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(4096) == b"READY=1"
    finally:
        sock.close()


def test_reloading_carries_monotonic_timestamp(listener: tuple[socket.socket, str]) -> None:
    sock, path = listener
    Notifier.from_env({"NOTIFY_SOCKET": path}).reloading()
    lines = sock.recv(4096).decode().splitlines()
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=") and int(lines[1].split("=")[1]) > 0


def test_without_socket_every_call_is_a_noop() -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert n.ready() is False and n.status("x") is False and n.watchdog() is False


def test_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.ready() is False
    assert n.errors == 1


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000",
                              "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_meant_for_another_process_is_ignored() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
