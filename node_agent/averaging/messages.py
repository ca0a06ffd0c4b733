"""Wire formats of the averaging protocol (one definition each); every decoder raises only MessageError.

* `Declaration` (`records`): the DHT record a peer looking for a group stores under the group key.
* `JoinRequest` / join reply (`Roster` or a refusal): a follower asks the leader for a place in its group;
  the leader answers once the group is complete. Both carry each peer's relays when it is behind a NAT
  (the rule of `node_agent.dht.endpoints.checked_relays`): members signal to each other through them.
* `ReduceRequest` / reduce reply: a member sends one piece of its values to the piece's reducer and gets the
  group's average of that piece back (reduce-scatter and all-gather in one call per piece).

Tensors travel as `node_agent.tensor_codec` headers, checked against the expected piece size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from node_agent.averaging.records import (
    MAX_CREDENTIAL_CHARS,
    MAX_ENDPOINT_CHARS,
    MAX_THROUGHPUT,
    Declaration,
    MessageError,
    _bytes,
    _credential,
    _map,
    _number,
    _relays,
    _text,
    _with_relays,
)
from node_agent.dht.api import ID_BYTES
from node_agent.dht.endpoints import checked_relays
from node_agent.tensor_codec import TensorCodecError, TensorSchema, decode_tensor

__all__ = ["Declaration", "JoinRequest", "Member", "MessageError", "ReduceRequest", "Roster"]

GROUP_ID_BYTES = 16
MAX_GROUP_SIZE = 64
MAX_GROUP_KEY_CHARS = 256
MAX_WEIGHT = 1e12
MAX_PIECES = 2**24


@dataclass(frozen=True, slots=True)
class JoinRequest:
    group_key: str
    endpoint: str
    throughput: float
    credential: str | None = None
    relays: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {
            "key": self.group_key,
            "ep": self.endpoint,
            "tp": self.throughput,
            "cred": self.credential,
        }
        return _with_relays(wire, self.relays)

    @classmethod
    def from_wire(cls, data: Any, owner: bytes) -> JoinRequest:
        """`owner`: the verified caller (its relays must be other nodes)."""
        data = _map(data, "join request")
        return cls(
            _text(data, "key", MAX_GROUP_KEY_CHARS, "join request"),
            _text(data, "ep", MAX_ENDPOINT_CHARS, "join request"),
            _number(data.get("tp"), 1.0, MAX_THROUGHPUT, "join request throughput"),
            _credential(data, "join request"),
            _relays(data, owner, "join request"),
        )


@dataclass(frozen=True, slots=True)
class Member:
    node_id: bytes
    endpoint: str
    throughput: float
    credential: str | None = None
    #: Where to send a connection offer when the member is behind a NAT (empty: to `endpoint`).
    relays: tuple[str, ...] = ()

    def to_wire(self) -> list[Any]:
        """`[node id, endpoint, throughput, credential]`, plus the relays when it has some."""
        wire: list[Any] = [self.node_id, self.endpoint, self.throughput, self.credential]
        return [*wire, list(self.relays)] if self.relays else wire


@dataclass(frozen=True, slots=True)
class Roster:
    """A formed group: who is in it, in which order (part i belongs to member i), and the leader's
    measured connection set-up time (part of the round's deadline)."""

    group_id: bytes
    members: tuple[Member, ...]
    connect_allowance: float

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.group_id,
            "members": [m.to_wire() for m in self.members],
            "cc": self.connect_allowance,
        }

    def index_of(self, node_id: bytes) -> int | None:
        return next((i for i, m in enumerate(self.members) if m.node_id == node_id), None)

    @classmethod
    def from_wire(cls, data: Any) -> Roster:
        data = _map(data, "roster")
        group_id = _bytes(data.get("id"), GROUP_ID_BYTES, "roster id")
        raw = data.get("members")
        if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_GROUP_SIZE:
            raise MessageError(f"roster: 'members' must be a list of 1..{MAX_GROUP_SIZE}")
        members = []
        for item in raw:
            if not isinstance(item, list) or len(item) not in (4, 5):
                raise MessageError(
                    "roster: each member is [node id, endpoint, throughput, credential(, relays)]"
                )
            node_id = _bytes(item[0], ID_BYTES, "roster member id")
            endpoint = item[1]
            if not isinstance(endpoint, str) or not 0 < len(endpoint) <= MAX_ENDPOINT_CHARS:
                raise MessageError("roster: bad member endpoint")
            credential = item[3]
            if credential is not None and (
                not isinstance(credential, str) or len(credential) > MAX_CREDENTIAL_CHARS
            ):
                raise MessageError("roster: bad member credential")
            throughput = _number(item[2], 1.0, MAX_THROUGHPUT, "roster member throughput")
            relays: tuple[str, ...] = ()
            if len(item) == 5:
                try:
                    relays = checked_relays(item[4], node_id)
                except ValueError as exc:
                    raise MessageError(f"roster: member relays: {exc}") from None
            members.append(Member(node_id, endpoint, throughput, credential, relays))
        if len({m.node_id for m in members}) != len(members):
            raise MessageError("roster: a member is listed twice")
        allowance = _number(data.get("cc"), 0.0, 600.0, "roster connect allowance")
        return cls(group_id, tuple(members), allowance)


def parse_join_reply(data: Any) -> Roster | str:
    """The leader's answer: the formed group, or the reason it refused us."""
    data = _map(data, "join reply")
    if "refused" in data:
        reason = data["refused"]
        if not isinstance(reason, str):
            raise MessageError("join reply: 'refused' must be a string")
        return reason[:200]
    return Roster.from_wire(data.get("group"))


@dataclass(frozen=True, slots=True)
class ReduceRequest:
    group_id: bytes
    piece: int
    weight: float
    tensor: dict[str, Any]  # an encoded header; decoded by `values` against the piece's size

    def to_wire(self) -> dict[str, Any]:
        return {"g": self.group_id, "k": self.piece, "w": self.weight, "t": self.tensor}

    @classmethod
    def from_wire(cls, data: Any) -> ReduceRequest:
        data = _map(data, "reduce request")
        piece = data.get("k")
        if type(piece) is not int or not 0 <= piece < MAX_PIECES:
            raise MessageError("reduce request: bad piece index")
        tensor = data.get("t")
        if not isinstance(tensor, dict):
            raise MessageError("reduce request: 't' must be an encoded tensor")
        return cls(
            _bytes(data.get("g"), GROUP_ID_BYTES, "reduce request group id"),
            piece,
            _number(data.get("w"), 0.0, MAX_WEIGHT, "reduce request weight"),
            tensor,
        )


def decode_piece(header: Any, size: int, what: str) -> torch.Tensor:
    """A float32 piece of exactly `size` values (any compression); MessageError otherwise.

    Non-finite values decode fine: screening them is the reducer's job (it penalises the sender)."""
    try:
        return decode_tensor(header, TensorSchema("float32", (size,)), what=what)
    except TensorCodecError as exc:
        raise MessageError(str(exc)) from None


def parse_reduce_reply(data: Any, size: int) -> torch.Tensor:
    data = _map(data, "reduce reply")
    return decode_piece(data.get("t"), size, "reduce reply")
