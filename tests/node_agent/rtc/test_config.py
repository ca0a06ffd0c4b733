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


def test_parse_ice_server_takes_turn_rest_usernames_with_a_colon():
    # coturn's REST scheme: username "expiry:node", password base64 (never a colon)
    parsed = parse_ice_server("turn:1767225600:ab12:c2VjcmV0K/8=@198.18.0.10:3478?transport=udp")
    assert parsed == IceServer("turn:198.18.0.10:3478?transport=udp", "1767225600:ab12", "c2VjcmV0K/8=")


@pytest.mark.parametrize(
    "text", ["turn:198.18.0.10:3478", "turn:@host:3478", "turn:user@host:3478", "turn:u:p@", "stun:", "x:y"]
)
def test_parse_ice_server_refuses_what_it_cannot_use(text):
    with pytest.raises(ValueError):
        parse_ice_server(text)
