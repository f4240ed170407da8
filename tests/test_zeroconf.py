"""Zeroconf on loopback only: announce, browse, resolve, connect, withdraw on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import subprocess
import sys
import time
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
    """Two servers named alike on one host, three times in a row: each second server explains,
    and its shutdown leaves the first announced."""
    name = f"bark-test-{uuid.uuid4().hex[:8]}"
    service = f"{name}.{SERVICE_TYPE}"
    zeroconf = AsyncZeroconf(interfaces=["127.0.0.1"])
    events = _Events()
    browser = AsyncServiceBrowser(zeroconf.zeroconf, SERVICE_TYPE, listener=events)
    try:
        first = server_factory("--model", str(tiny_model), "--zeroconf", name)
        await _wait_for(events, service, ServiceStateChange.Added)
        for attempt in range(3):
            second = server_factory("--model", str(tiny_model), "--zeroconf", name)
            for _ in range(150):
                if "Zeroconf" in second.log_text():
                    break
                await asyncio.sleep(0.1)
            log = second.log_text()
            assert f"another server on this network already announces {name}" in log, (attempt, log)
            assert "--zeroconf NAME" in log
            second.process.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(second.process.wait, 15) == 0
            assert "Zeroconf: withdrew" not in second.log_text()
            with contextlib.suppress(asyncio.TimeoutError):  # no goodbye for the first server's name
                while True:
                    seen = await asyncio.wait_for(events.changes.get(), 2)
                    assert seen != (service, ServiceStateChange.Removed), "the first server was withdrawn"
        info = AsyncServiceInfo(SERVICE_TYPE, service)
        assert await info.async_request(zeroconf.zeroconf, 5000) and info.port == int(
            first.uri.rsplit(":", 1)[1]
        )
    finally:
        await browser.async_cancel()
        await zeroconf.async_close()


_ANNOUNCE = """
import asyncio, sys
from wyoming_bark.discovery import ZeroconfAdvertiser

async def main(name: str, hold: float) -> None:
    advertiser = ZeroconfAdvertiser(name, 10300, "127.0.0.1")
    try:
        await advertiser.start()
        print("announced", flush=True)
        await asyncio.sleep(hold)
    except RuntimeError as err:
        print(err, flush=True)
    finally:
        await advertiser.stop()

asyncio.run(main(sys.argv[1], float(sys.argv[2])))
"""


@pytest.mark.parametrize("delay", [0.0, 0.5, 1.5])
def test_two_processes_on_one_host_cannot_announce_one_name(delay):
    """Two processes, one name: the second must see the first, however soon after its announcement
    it asks (each process has its own socket on port 5353; a unicast reply reaches only one)."""
    name = f"bark-test-{uuid.uuid4().hex[:8]}"
    owner = subprocess.Popen([sys.executable, "-c", _ANNOUNCE, name, "30"], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "announced"
        time.sleep(delay)
        second = subprocess.run(
            [sys.executable, "-c", _ANNOUNCE, name, "0"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert f"another server on this network already announces {name}" in second.stdout, second
    finally:
        owner.terminate()
        owner.wait(15)


def test_default_name_is_unique_per_host_and_port():
    assert re.fullmatch(r"bark-[0-9a-f]{12}", default_service_name())
    assert default_service_name(10200) == default_service_name()
    assert default_service_name(10201) == f"{default_service_name()}-10201"


def test_behind_a_balancer_the_balancer_is_announced():
    """--zeroconf-port: a server on loopback behind a balancer announces the balancer's port from
    this host's outgoing address (one announcement for all servers)."""
    from wyoming_bark.discovery import outgoing_ipv4
    from wyoming_bark.server import make_advertiser
    from wyoming_bark.settings import ServerSettings

    behind = ServerSettings(uri="tcp://127.0.0.1:10201", zeroconf=default_service_name(), zeroconf_port=10200)
    advertiser = make_advertiser(behind)
    assert (advertiser.port, advertiser.host) == (10200, outgoing_ipv4())
    assert advertiser.name == default_service_name(10200), "the name of the port announced"
    alone = make_advertiser(ServerSettings(uri="tcp://127.0.0.1:10201", zeroconf=default_service_name()))
    assert (alone.port, alone.host) == (10201, "127.0.0.1")
