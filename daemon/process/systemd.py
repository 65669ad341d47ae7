"""systemd's side of the daemon, without a library: the protocols are small and stable.

- sd_notify: one datagram of ``KEY=value`` lines to ``$NOTIFY_SOCKET`` (a leading ``@``
  names an abstract socket).
- socket activation: listening sockets inherited from fd 3 on, announced by
  ``$LISTEN_PID`` and ``$LISTEN_FDS``.
- watchdog: ``$WATCHDOG_USEC`` (for ``$WATCHDOG_PID`` if set) is how long systemd waits
  between ``WATCHDOG=1`` pings before it kills and restarts the service.
"""

from __future__ import annotations

import os
import socket
import time

from qjobd.errors import QjobdError

#: the first inherited fd (SD_LISTEN_FDS_START)
LISTEN_FDS_START = 3


class ActivationError(QjobdError):
    """The sockets systemd handed over cannot serve the API."""


def notify(message: str) -> bool:
    """Send ``message`` (e.g. "READY=1", or several lines) to systemd.

    Returns False when not run under systemd or when systemd is not listening; a
    daemon must keep working when its supervisor is gone, so failures are not raised.
    """
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.connect(address)
            sock.sendall(message.encode())
        except OSError:
            return False
    return True


def reloading_message() -> str:
    """``RELOADING=1`` with the CLOCK_MONOTONIC stamp that systemd >= 253 wants with it."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return f"RELOADING=1\nMONOTONIC_USEC={usec}"


def status_message(text: str) -> str:
    # one STATUS= line: a newline would start another assignment
    return "STATUS=" + " ".join(text.split())


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None.

    None when systemd asked for no watchdog, or asked it of another process.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    # half the timeout, as sd_watchdog_enabled(3) advises: one late ping is not fatal
    return value / 2 / 1_000_000 if value > 0 else None


def listen_sockets() -> list[socket.socket]:
    """The listening sockets systemd passed to this process (socket activation).

    Empty when the process was not socket-activated. The ``LISTEN_*`` variables are
    removed so that child processes (simulator workers) do not take the sockets for
    theirs, and the fds are made close-on-exec so the children do not hold them open.
    Only Unix stream sockets are accepted: the API identifies callers by SO_PEERCRED.
    """
    pid, count = os.environ.get("LISTEN_PID"), os.environ.get("LISTEN_FDS")
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if not pid or not count:
        return []
    if not (pid.isdigit() and int(pid) == os.getpid()):
        return []  # meant for another process (we were exec'd by the real recipient)
    if not count.isdigit() or int(count) < 1:
        raise ActivationError(f"LISTEN_FDS={count!r} is not a positive number of sockets")
    sockets: list[socket.socket] = []
    for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)):
        try:
            os.set_inheritable(fd, False)
            sock = socket.socket(fileno=fd)
        except OSError as exc:
            raise ActivationError(f"inherited fd {fd} is not a socket: {exc}") from None
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
            sock.close()
            raise ActivationError(
                f"inherited fd {fd} is not a Unix stream socket; qjobd serves only on Unix "
                "sockets, where the kernel tells it who the caller is (ListenStream=/path)")
        if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            sock.close()
            raise ActivationError(f"inherited fd {fd} is not listening (Accept=no is needed)")
        sock.setblocking(False)
        sockets.append(sock)
    return sockets
