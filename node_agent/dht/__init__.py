"""Trustless Kademlia DHT over UDP: see :mod:`node_agent.dht.api` for the contract.

Imports neither Django nor torch: a DHT-only node (bootstrap peer, portal observer, benchmark worker)
starts fast and small.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from node_agent.dht.api import (
    DHTBootstrapError,
    DHTError,
    DHTNodeStoppedError,
    DHTRecordRefused,
    DHTRPCError,
    DHTTimeoutError,
    DHTValidationError,
    PeerInfo,
    RecordValidator,
    RecordView,
    ValueWithExpiration,
    owner_subkey,
    subkey_owner,
)

if TYPE_CHECKING:  # the type checker sees DHTNode; at run time it loads lazily below
    from node_agent.dht.node import DHTNode

__all__ = [
    "DHTBootstrapError",
    "DHTError",
    "DHTNode",
    "DHTNodeStoppedError",
    "DHTRPCError",
    "DHTRecordRefused",
    "DHTTimeoutError",
    "DHTValidationError",
    "PeerInfo",
    "RecordValidator",
    "RecordView",
    "ValueWithExpiration",
    "owner_subkey",
    "subkey_owner",
]


def __getattr__(name: str) -> object:
    # DHTNode is loaded lazily so `import node_agent.dht` for the dataclasses stays cheap.
    if name == "DHTNode":
        from node_agent.dht.node import DHTNode

        return DHTNode
    raise AttributeError(name)
