from __future__ import annotations

import pytest

from node_agent.rtc.config import (
    IceServer,
    RTCOptions,
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
