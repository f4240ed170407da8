"""Zeroconf (mDNS) announcement so Home Assistant finds the server by itself.

Registers ``NAME._wyoming._tcp.local.`` with an address clients can actually reach: the bound
address when ``--uri`` names one (multicasting on that interface only), otherwise the address of
the interface that carries outgoing traffic, never ``0.0.0.0``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import uuid

from zeroconf import DNSQuestionType, InterfaceChoice, NonUniqueNameException
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

_LOGGER = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
MDNS_GROUP = "224.0.0.251"
DEFAULT_PORT = 10200
# How long to listen for an owner of the name before probing. A responder answers a multicast
# question only after aggregating for ~0.5 s, and holds back a record it multicast in the last
# second for another second; 3 s outlasts both with room for a busy host.
NAME_QUERY_MS = 3000


def outgoing_ipv4() -> str:
    """The IPv4 address this host sends multicast from (a UDP connect sends no packet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((MDNS_GROUP, 5353))
        return sock.getsockname()[0]


def default_service_name(port: int = DEFAULT_PORT) -> str:
    """``bark-`` and this host's MAC address (as the wyoming library names its services), so two
    hosts on one network do not claim the same name; ``-PORT`` added for any port but the
    default, so two servers on one host (one per GPU) do not either."""
    name = f"bark-{uuid.getnode():012x}"
    return name if port == DEFAULT_PORT else f"{name}-{port}"


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
        self._registered = False  # withdraw only a name this server holds
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{name}.{SERVICE_TYPE}",
            addresses=[ipaddress.ip_address(self.host).packed],
            port=port,
            server=f"{socket.gethostname()}.local.",
        )

    async def start(self) -> None:
        """Ask for the name, probe and register it; a clash says why and what to do (and raises)."""
        self._zeroconf = AsyncZeroconf(interfaces=self.interfaces)
        try:
            await self._ask_for_the_name()
            # The first await probes the name (raising if it is taken); the task announces it.
            announcing = await self._zeroconf.async_register_service(self._info)
        except NonUniqueNameException as err:
            raise RuntimeError(
                f"another server on this network already announces {self.name}; "
                "give this one its own name with --zeroconf NAME"
            ) from err
        self._registered = True
        await announcing
        _LOGGER.info("Zeroconf: announced %s at %s:%d", self._info.name, self.host, self.port)

    async def _ask_for_the_name(self) -> None:
        """Raise ``NonUniqueNameException`` if anyone answers a multicast question for our name.

        The probe alone is not enough: it asks for unicast replies, and when several processes on
        one host share port 5353 (SO_REUSEPORT) the kernel hands a unicast reply to just one of
        their sockets, often not the prober's. Multicast replies reach every socket.
        """
        assert self._zeroconf is not None
        owner = AsyncServiceInfo(SERVICE_TYPE, self._info.name)
        if await owner.async_request(
            self._zeroconf.zeroconf, NAME_QUERY_MS, question_type=DNSQuestionType.QM
        ):
            raise NonUniqueNameException(self._info.name)

    async def stop(self) -> None:
        """Withdraw the service (also after an interrupted start) and close the sockets."""
        if self._zeroconf is None:
            return
        zeroconf, self._zeroconf = self._zeroconf, None
        try:
            if self._registered:  # a goodbye for a name we never held would withdraw its owner
                await (await zeroconf.async_unregister_service(self._info))
                self._registered = False
                _LOGGER.info("Zeroconf: withdrew %s", self._info.name)
        finally:
            await zeroconf.async_close()
