"""Socket options for our associations, set per connection (never via pynetdicom's process-wide config)."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pynetdicom.events import Event


def set_tcp_nodelay(event: Event) -> None:
    """EVT_CONN_OPEN handler: disable Nagle so small PDUs are not held back ~40 ms by delayed ACKs."""
    event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
