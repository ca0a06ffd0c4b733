"""STUN/TURN from the portal (issue 14 point 2): the operator's servers in the project config, and short-lived
TURN credentials (coturn's REST scheme) only for nodes, in join and renew replies."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from node_agent.identity import Identity
from node_agent.portal.ice import parse_turn_grant, turn_password
from node_agent.portal.project_config import parse_project_config
from projects.models import Project

pytestmark = pytest.mark.django_db

SECRET = "operator-turn-secret"


@pytest.fixture
def ice_settings(settings: Any) -> Any:
    settings.ICE_STUN_URLS = ["stun:turn.example.org:3478"]
    settings.ICE_TURN_URLS = ["turn:turn.example.org:3478", "turn:turn.example.org:3478?transport=tcp"]
    settings.ICE_TURN_SECRET = SECRET
    settings.ICE_TURN_TTL = 3600
    return settings


def test_no_ice_servers_and_no_turn_credential_unless_the_operator_configures_them(
    client: Any, project: Project, joined: dict[str, Any]
) -> None:
    config = parse_project_config(client.get(f"/api/v1/projects/{project.slug}/config").json())
    assert config.ice_servers == []  # no public STUN server by default
    assert joined["turn"] is None


def test_the_project_config_lists_the_servers_but_never_a_credential(
    client: Any, project: Project, ice_settings: Any
) -> None:
    raw = client.get(f"/api/v1/projects/{project.slug}/config").json()
    config = parse_project_config(raw)
    assert [spec.urls for spec in config.ice_servers] == [
        ice_settings.ICE_STUN_URLS,
        ice_settings.ICE_TURN_URLS,
    ]
    assert SECRET not in str(raw) and "username" not in str(raw)


def test_join_and_renew_hand_the_node_a_short_lived_turn_credential(
    signed_post: Any,
    join_code: Any,
    node_key: Identity,
    project: Project,
    ice_settings: Any,
    wheel_settings: Any,
) -> None:
    before = time.time()
    joined = signed_post(
        "/api/v1/agent/join",
        node_key,
        {"code": join_code(project), "agent_version": "0.1.0", "platform": "Linux"},
    ).json()
    grant = parse_turn_grant(joined["turn"])
    assert grant is not None
    expiry, _, node_id = grant.username.partition(":")
    assert node_id == node_key.node_id.hex()
    assert before + 3600 - 1 <= int(expiry) <= time.time() + 3600 and grant.expires_at == int(expiry)
    assert grant.credential == turn_password(SECRET, grant.username)  # what coturn computes from the secret

    renewed = signed_post("/api/v1/agent/renew", node_key, {"credential": joined["credential"]})
    assert renewed.status_code == 201
    again = parse_turn_grant(renewed.json()["turn"])
    assert again is not None and again.credential == turn_password(SECRET, again.username)


def test_only_a_node_with_a_valid_credential_gets_one(
    signed_post: Any, joined: dict[str, Any], ice_settings: Any
) -> None:
    stranger = signed_post("/api/v1/agent/renew", Identity.generate(), {"credential": joined["credential"]})
    assert stranger.status_code == 401 and "turn" not in stranger.json()


@pytest.mark.parametrize(
    ("variables", "complaint"),
    [
        ({"COLEARN_STUN_URLS": "http://x"}, "COLEARN_STUN_URLS"),
        ({"COLEARN_TURN_URLS": "stun:x:3478", "COLEARN_TURN_SECRET": "s"}, "COLEARN_TURN_URLS"),
        ({"COLEARN_TURN_URLS": "turn:x:3478"}, "COLEARN_TURN_SECRET"),
    ],
)
def test_a_misconfigured_server_list_stops_the_portal_at_start_up(
    variables: dict[str, str], complaint: str
) -> None:
    platform_dir = Path(__file__).resolve().parents[3] / "platform"
    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "config.settings", **variables}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=platform_dir, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0 and complaint in result.stderr


def test_the_observer_probes_with_the_operators_servers_and_a_turn_credential_of_its_own(
    ice_settings: Any,
) -> None:
    from node_agent.rtc.config import RTCOptions
    from swarm.observer import SwarmObserver

    identity = Identity.generate()
    options = SwarmObserver(identity)._with_operator_ice(RTCOptions())
    stun, turn, turn_tcp = options.ice_servers
    assert stun.urls == "stun:turn.example.org:3478" and stun.username is None
    assert turn.urls == "turn:turn.example.org:3478" and turn_tcp.username == turn.username
    expiry, node = str(turn.username).split(":")
    assert node == identity.node_id.hex() and 3500 < int(expiry) - time.time() <= 3600
    assert turn.credential == turn_password(SECRET, str(turn.username))


def test_the_observer_uses_no_ice_server_unless_configured() -> None:
    from node_agent.rtc.config import RTCOptions
    from swarm.observer import SwarmObserver

    assert SwarmObserver(Identity.generate())._with_operator_ice(RTCOptions()).ice_servers == ()
