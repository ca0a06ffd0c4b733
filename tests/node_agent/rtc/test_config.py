from __future__ import annotations

import aioice.ice
import pytest

from node_agent.rtc.config import (
    IceServer,
    RTCOptions,
    apply_process_settings,
    parse_ice_server,
    rtc_configuration,
)


def test_explicit_empty_ice_servers_by_default():
    config = rtc_configuration(RTCOptions())
    assert config.iceServers == []  # never None: None would contact a public STUN server


def test_parse_ice_servers():
    assert parse_ice_server("stun:stun.example.org:3478") == IceServer("stun:stun.example.org:3478")
    assert parse_ice_server("turn:user:pw@turn.example.org:3478") == IceServer(
        "turn:turn.example.org:3478", "user", "pw"
    )
    with pytest.raises(ValueError):
        parse_ice_server("http://x")


def test_loopback_host_candidates():
    apply_process_settings(RTCOptions.for_loopback())
    assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
