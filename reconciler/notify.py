"""systemd's notification protocol (``sd_notify``) over ``$NOTIFY_SOCKET``, in pure Python.

Why: with ``Type=notify`` systemd learns from these datagrams when the daemon is ready,
what it is doing (``STATUS=``, shown by ``systemctl status``), that it is still alive
(``WATCHDOG=1``) and that it is stopping. The protocol is one ``AF_UNIX`` datagram of
newline-separated ``KEY=VALUE`` lines, so a compiled ``libsystemd`` binding is not
worth its weight.

Invariants:
* without ``$NOTIFY_SOCKET`` (run by hand, in tests, in a container) every call is a
  cheap no-op, so callers never branch on "am I under systemd?";
* a failing send never raises: the notification is advisory and must not take the
  daemon down (systemd's watchdog notices a daemon that stops pinging anyway);
* a value is always one line: systemd reads ``STATUS=`` up to the first newline, so
  newlines are replaced rather than letting a multi-line error swallow later fields;
* safe to call from several threads (one datagram per call, sent atomically);
* ``Watchdog`` pings from a thread of its own, so a long pass does not get the service
  killed, and stops pinging once the main thread has died.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

MAX_STATUS = 400  # keep `systemctl status` readable; the journal holds the full text


def _address(value: str) -> str | bytes | None:
    """The socket address for ``$NOTIFY_SOCKET``: a path, or ``@name`` (abstract)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # vsock: and other transports are not used on the hosts we target


def one_line(text: str, limit: int = MAX_STATUS) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``WATCHDOG_USEC``), or None.

    ``WATCHDOG_PID`` names the process the watchdog is meant for; a child that
    inherited the variables must not ping on its parent's behalf."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID")
    if pid and pid != str(os.getpid()):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2_000_000 if value > 0 else None


class Notifier:
    """Sends notifications to one socket (or nowhere, when ``address`` is None)."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self.errors = 0
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Notifier:
        value = (os.environ if env is None else env).get("NOTIFY_SOCKET", "")
        return cls(_address(value) if value else None)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> bool:
        """One datagram holding ``KEY=value`` per field, in the order given."""
        if self._sock is None or self.address is None:
            return False
        message = "\n".join(f"{k}={one_line(str(v))}" for k, v in fields.items())
        try:
            self._sock.sendto(message.encode(), self.address)
        except OSError:
            self.errors += 1
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd (Type=notify-reload) pair this with the next READY=1
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(
            time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, status: str | None = None) -> bool:
        return self.send(STOPPING=1, **({"STATUS": status} if status else {}))

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """``WATCHDOG=1`` every half ``WATCHDOG_USEC``, from a thread of its own."""

    def __init__(self, notifier: Notifier, interval: float) -> None:
        self._notifier = notifier
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    def start(self) -> Watchdog:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if not threading.main_thread().is_alive():
                return
            self._notifier.watchdog()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
