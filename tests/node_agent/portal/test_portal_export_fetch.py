"""The agent's download of its project's last export: what a hostile or broken portal answer costs.

The happy path against the real portal is in tests/platform/swarm/test_swarm_exports.py; here a local portal
sends wrong headers, oversize bodies and files that are not safetensors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from local_portal import LocalPortal

from node_agent.identity import Identity
from node_agent.portal.client import (
    MAX_EXPORT_BYTES,
    PortalClient,
    PortalRefused,
    PortalUnreachable,
    is_safetensors,
)
from node_agent.portal.latest_export import portal_export_fallback
from node_agent.portal.schemas import EXPORT_SHA256_HEADER


def safetensors_bytes() -> bytes:
    header = json.dumps({"__metadata__": {"colearn_manifest": "{}"}}).encode()
    return len(header).to_bytes(8, "little") + header


def fetch(portal: LocalPortal, dest: Path, max_bytes: int = MAX_EXPORT_BYTES) -> str | None:
    identity = Identity.generate()
    credential = portal.credential_for(identity.public_key_bytes)
    client = PortalClient(portal.url)
    return client.fetch_export(identity, credential, "demo", dest, max_bytes=max_bytes)


def test_a_verified_file_replaces_the_last_one_and_nothing_else_does(
    local_portal: LocalPortal, tmp_path: Path
) -> None:
    dest = tmp_path / "exports" / "latest.safetensors"
    assert fetch(local_portal, dest) is None and not dest.exists()  # the portal has none
    good = safetensors_bytes()
    digest = hashlib.sha256(good).hexdigest()
    local_portal.behaviour.export = (good, {EXPORT_SHA256_HEADER: digest, "Content-Length": str(len(good))})
    assert fetch(local_portal, dest) == digest and dest.read_bytes() == good
    bad_answers = {
        "no valid": (good, {"Content-Length": str(len(good))}),
        "no valid ": (good, {EXPORT_SHA256_HEADER: "not-hex", "Content-Length": str(len(good))}),
        "sha256": (good + b" ", {EXPORT_SHA256_HEADER: digest, "Content-Length": str(len(good) + 1)}),
        "over": (good, {EXPORT_SHA256_HEADER: digest, "Content-Length": str(10**12)}),
        "larger than": (b"x" * 5000, {EXPORT_SHA256_HEADER: hashlib.sha256(b"x" * 5000).hexdigest()}),
        "safetensors": (
            b"\x80\x04K\x01.",
            {EXPORT_SHA256_HEADER: hashlib.sha256(b"\x80\x04K\x01.").hexdigest()},
        ),
    }
    for reason, answer in bad_answers.items():
        local_portal.behaviour.export = answer
        with pytest.raises(PortalUnreachable, match=reason.strip()):
            fetch(local_portal, dest, max_bytes=1000)
        assert dest.read_bytes() == good and not dest.with_name(dest.name + ".part").exists()


def test_a_refusal_leaves_cells_on_their_initial_weights(local_portal: LocalPortal, tmp_path: Path) -> None:
    local_portal.behaviour.refuse = (403, "not_member")
    identity = Identity.generate()
    client = PortalClient(local_portal.url)
    with pytest.raises(PortalRefused):
        client.fetch_export(identity, "token", "demo", tmp_path / "latest.safetensors")
    said: list[str] = []
    fallback = portal_export_fallback(client, identity, lambda: "token", "demo", tmp_path, said.append)
    assert asyncio.run(fallback("ffn.0")) is None and asyncio.run(fallback("ffn.1")) is None
    assert len(said) == 1 and "not_member" in said[0]  # asked once per server, not once per cell


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_the_layout_check_never_raises(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("layout") / "file"
    path.write_bytes(raw)
    assert is_safetensors(path) in (True, False)
    assert is_safetensors(path.with_name("absent")) is False
