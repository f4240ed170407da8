"""Who may hold a connection: bounds in all and per client address, so nobody locks others out.

Home Assistant opens one connection per text-to-speech request (a satellite's answer, a browser's
``tts_get_url``, a preview), plus one to describe every 30 s: a house with five satellites
answering at once holds seven. A client address may hold ``max_per_address`` (16 by default),
and the last quarter of ``max_connections`` go only to addresses holding fewer than
``NEWCOMER_CONNECTIONS``: however many addresses fill the rest, a new client, or one that holds a
describe and wants to speak, still gets in. IPv6 clients are counted per /64 (one host picks
addresses from its whole /64 at will). A connection that closed a moment ago may still be
counted (its task has not run yet): a newcomer finding the server full waits ``ADMIT_WAIT_S`` for
a slot before it is refused.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import deque
from dataclasses import dataclass, field

from .protocol import BUFFER_BUDGET, EVENT_TIMEOUT

NEWCOMER_CONNECTIONS = 2  # an address holding fewer may take a reserved slot
ADMIT_WAIT_S = 1.0
MAX_WAITING = 256  # connections waiting for a slot at once; more are refused at once


def ip_of(address: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A peer's address as an IP (its IPv6 zone dropped, IPv4-mapped IPv6 as IPv4); None if it is
    none (a unix socket) or not an IP."""
    try:
        ip = ipaddress.ip_address((address or "").split("%", 1)[0])
    except ValueError:
        return None
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip


def client_key(address: str | None) -> str | None:
    """The address as counted: IPv4 as is, IPv6 by its /64, IPv4-mapped IPv6 as IPv4."""
    if not address:
        return None
    ip = ip_of(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass
class ConnectionLimits:
    """Bounds shared by every connection of one server (``settings.ServerSettings``)."""

    max_connections: int  # --max-connections
    max_per_address: int  # --max-connections-per-address
    idle_timeout: float  # no work for this long: the connection is closed
    event_timeout: float = EVENT_TIMEOUT
    buffer_budget: int = BUFFER_BUDGET
    connections: int = 0  # open now
    by_address: dict[str, int] = field(default_factory=dict)  # open now, per client_key
    buffered: int = 0  # bytes of data and payload being read now
    _queue: deque[tuple[str | None, asyncio.Future]] = field(default_factory=deque)  # waiting for a slot

    @property
    def kept_for_new(self) -> int:
        """The last slots, kept for addresses holding fewer than ``NEWCOMER_CONNECTIONS``."""
        return self.max_connections // 4

    def refusal(self, key: str | None) -> str | None:
        """Why a connection from ``key`` cannot be taken now, or None."""
        held = self.by_address.get(key, 0) if key else 0
        if self.connections >= self.max_connections:
            return f"Too many connections ({self.max_connections}, --max-connections); try again later"
        if key and held >= self.max_per_address:
            return (
                f"Too many connections from this address ({self.max_per_address}, "
                "--max-connections-per-address); try again later"
            )
        if held >= NEWCOMER_CONNECTIONS and self.connections >= self.max_connections - self.kept_for_new:
            return (
                f"Too many connections ({self.connections} open; the last {self.kept_for_new} of "
                f"--max-connections {self.max_connections} are kept for other clients); try again later"
            )
        return None

    def refusal_reason(self, key: str | None) -> str:
        """What a refusal of ``key`` was for: ``per_address`` (its address holds its share) or
        ``busy`` (the server is full), as the metrics count them."""
        return "per_address" if key and self.by_address.get(key, 0) >= self.max_per_address else "busy"

    async def admit(self, key: str | None) -> str | None:
        """Take a slot for ``key`` (None), waiting up to ``ADMIT_WAIT_S`` for one; else why not.

        Those waiting are served first come, first served as slots free (``release``), so a burst
        of connections that closed at once cannot keep taking a slot before the one waiting."""
        why = self.refusal(key)
        if why is None:
            self._take(key)
            return None
        if len(self._queue) >= MAX_WAITING:
            return why
        granted = asyncio.get_running_loop().create_future()
        waiter = (key, granted)
        self._queue.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(granted), ADMIT_WAIT_S)
            return None
        except asyncio.TimeoutError:
            return None if granted.done() else self.refusal(key) or why
        except BaseException:  # cancelled while waiting: a slot just granted is given back
            if granted.done():
                self.release(key)
            raise
        finally:
            if waiter in self._queue:
                self._queue.remove(waiter)

    def _take(self, key: str | None) -> None:
        self.connections += 1
        if key:
            self.by_address[key] = self.by_address.get(key, 0) + 1

    def release(self, key: str | None) -> None:
        self.connections -= 1
        if key:
            self.by_address[key] -= 1
            if not self.by_address[key]:
                del self.by_address[key]
        for waiter in list(self._queue):  # the freed slot goes to the first waiting that fits
            waiting_key, granted = waiter
            if not granted.done() and self.refusal(waiting_key) is None:
                self._queue.remove(waiter)
                self._take(waiting_key)
                granted.set_result(True)
                break
