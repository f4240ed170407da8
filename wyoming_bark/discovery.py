"""Zeroconf (mDNS) announcement so Home Assistant finds the server by itself.

Registers ``NAME._wyoming._tcp.local.`` with an address clients can actually reach: the bound
address when ``--uri`` names one (multicasting on that interface only), otherwise the address of
the interface that carries outgoing traffic, never ``0.0.0.0``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from zeroconf import InterfaceChoice
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
MDNS_GROUP = "224.0.0.251"


def outgoing_ipv4() -> str:
    """The IPv4 address this host sends multicast from (a UDP connect sends no packet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((MDNS_GROUP, 5353))
        return sock.getsockname()[0]


def is_wildcard(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "*")


class ZeroconfAdvertiser:
    """Registers the service on start and sends goodbye packets on stop."""

    def __init__(self, name: str, port: int, bind_host: str, host: str | None = None) -> None:
        if host:
            self.host = host
        elif not is_wildcard(bind_host):
            self.host = socket.gethostbyname(bind_host)
        else:
            self.host = outgoing_ipv4()
        if ipaddress.ip_address(self.host).is_unspecified:
            raise ValueError(f"Cannot advertise {self.host}: pass --zeroconf-host with this host's address")
        # Bound to one address: announce only there, so a loopback server stays on loopback.
        self.interfaces = InterfaceChoice.All if is_wildcard(bind_host) else [self.host]
        self.name = name
        self.port = port
        self._zeroconf: AsyncZeroconf | None = None
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            addresses=[ipaddress.ip_address(self.host).packed],
            port=port,
            server=f"{socket.gethostname()}.local.",
        )

    async def start(self) -> None:
        self._zeroconf = AsyncZeroconf(interfaces=self.interfaces)
        # The first await probes the name; the returned task sends the announcements.
        await (await self._zeroconf.async_register_service(self._info))
        _LOGGER.info("Zeroconf: announced %s at %s:%d", self._info.name, self.host, self.port)

    async def stop(self) -> None:
        """Withdraw the service (also after an interrupted start) and close the sockets."""
        if self._zeroconf is None:
            return
        zeroconf, self._zeroconf = self._zeroconf, None
        try:
            await (await zeroconf.async_unregister_service(self._info))  # goodbye packets out
            _LOGGER.info("Zeroconf: withdrew %s", self._info.name)
        except Exception as err:  # noqa: BLE001 - never registered (start interrupted while probing)
            _LOGGER.debug("Zeroconf: nothing to withdraw (%s)", err)
        finally:
            await zeroconf.async_close()
