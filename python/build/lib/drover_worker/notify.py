"""sd_notify: one datagram to $NOTIFY_SOCKET (systemd's protocol; drover speaks it too)."""

import os
import socket


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1\\nSTATUS=serving"); False when there is nobody to tell."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
        try:
            s.sendto(message.encode(), addr)
        except OSError:
            return False
    return True
