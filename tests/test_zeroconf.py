"""Zeroconf on loopback only: announce, browse, resolve, connect, withdraw on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import uuid

import pytest
from helpers import TIMEOUT, describe, stop_server
from wyoming.info import Info
from zeroconf import ServiceListener, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from wyoming_bark.discovery import SERVICE_TYPE, ZeroconfAdvertiser, default_service_name, is_wildcard

pytestmark = pytest.mark.slow  # waits, builds or soaks: left out of the quick loop


class _Events(ServiceListener):
    def __init__(self) -> None:
        self.changes: asyncio.Queue[tuple[str, ServiceStateChange]] = asyncio.Queue()

    def _put(self, name: str, change: ServiceStateChange) -> None:
        self.changes.put_nowait((name, change))

    def add_service(self, zc, type_, name):
        self._put(name, ServiceStateChange.Added)

    def remove_service(self, zc, type_, name):
        self._put(name, ServiceStateChange.Removed)

    def update_service(self, zc, type_, name):
        self._put(name, ServiceStateChange.Updated)


async def _wait_for(events: _Events, name: str, change: ServiceStateChange) -> None:
    while True:
        seen = await asyncio.wait_for(events.changes.get(), TIMEOUT)
        if seen == (name, change):
            return


async def test_server_is_found_on_loopback_and_withdraws_on_sigterm(server_factory, tiny_model):
    name = f"bark-test-{uuid.uuid4().hex[:8]}"
    service = f"{name}.{SERVICE_TYPE}"
    zeroconf = AsyncZeroconf(interfaces=["127.0.0.1"])  # never multicast on real networks
    events = _Events()
    browser = AsyncServiceBrowser(zeroconf.zeroconf, SERVICE_TYPE, listener=events)
    try:
        server = server_factory("--model", str(tiny_model), "--zeroconf", name)
        await _wait_for(events, service, ServiceStateChange.Added)

        info = AsyncServiceInfo(SERVICE_TYPE, service)
        assert await info.async_request(zeroconf.zeroconf, 5000)
        addresses = info.parsed_addresses()
        assert addresses == ["127.0.0.1"], "the bound address, not 0.0.0.0"
        assert f"tcp://127.0.0.1:{info.port}" == server.uri
        answer = Info.from_event(await describe(f"tcp://{addresses[0]}:{info.port}"))
        assert answer.tts[0].name == "bark"

        server.process.send_signal(signal.SIGTERM)
        await _wait_for(events, service, ServiceStateChange.Removed)
        assert await asyncio.to_thread(server.process.wait, 15) == 0
        assert "Zeroconf: withdrew" in server.log_text()
    finally:
        await browser.async_cancel()
        await zeroconf.async_close()
        if server.process.poll() is None:
            stop_server(server)


def test_announced_address_is_never_the_wildcard(monkeypatch):
    assert is_wildcard("0.0.0.0") and is_wildcard("") and not is_wildcard("127.0.0.1")
    monkeypatch.setattr("wyoming_bark.discovery.outgoing_ipv4", lambda: "192.0.2.10")
    wildcard = ZeroconfAdvertiser("bark", 10200, "0.0.0.0")
    assert wildcard.host == "192.0.2.10"
    assert ZeroconfAdvertiser("bark", 10200, "0.0.0.0", host="198.51.100.7").host == "198.51.100.7"
    bound = ZeroconfAdvertiser("bark", 10200, "127.0.0.1")
    assert bound.host == "127.0.0.1" and bound.interfaces == ["127.0.0.1"]


async def test_zeroconf_failure_leaves_the_server_serving(server_factory, tiny_model):
    # 0.0.0.0 cannot be announced: the server says so and serves anyway.
    server = server_factory("--model", str(tiny_model), "--zeroconf", "broken", "--zeroconf-host", "0.0.0.0")
    for _ in range(50):
        if "Zeroconf announcement failed" in server.log_text():
            break
        await asyncio.sleep(0.1)
    assert "Zeroconf announcement failed" in server.log_text()
    assert Info.from_event(await describe(server.uri)).tts[0].voices


async def test_a_second_server_with_the_same_name_says_why_and_withdraws_nothing(server_factory, tiny_model):
    """Two servers named alike: the second explains, and its shutdown leaves the first announced."""
    name = f"bark-test-{uuid.uuid4().hex[:8]}"
    service = f"{name}.{SERVICE_TYPE}"
    zeroconf = AsyncZeroconf(interfaces=["127.0.0.1"])
    events = _Events()
    browser = AsyncServiceBrowser(zeroconf.zeroconf, SERVICE_TYPE, listener=events)
    try:
        first = server_factory("--model", str(tiny_model), "--zeroconf", name)
        await _wait_for(events, service, ServiceStateChange.Added)
        second = server_factory("--model", str(tiny_model), "--zeroconf", name)
        for _ in range(100):
            if "Zeroconf announcement failed" in second.log_text():
                break
            await asyncio.sleep(0.1)
        assert f"another server on this network already announces {name}" in second.log_text()
        assert "--zeroconf NAME" in second.log_text()
        second.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.process.wait, 15) == 0
        assert "Zeroconf: withdrew" not in second.log_text()
        with contextlib.suppress(asyncio.TimeoutError):  # no goodbye for the first server's name
            seen = await asyncio.wait_for(events.changes.get(), 3)
            assert seen != (service, ServiceStateChange.Removed), "the first server was withdrawn"
        info = AsyncServiceInfo(SERVICE_TYPE, service)
        assert await info.async_request(zeroconf.zeroconf, 5000) and info.port == int(
            first.uri.rsplit(":", 1)[1]
        )
    finally:
        await browser.async_cancel()
        await zeroconf.async_close()


def test_default_name_is_unique_per_host():
    assert re.fullmatch(r"bark-[0-9a-f]{12}", default_service_name())
