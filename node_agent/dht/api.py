"""Public contract of the trustless Kademlia DHT (code against this module, not the internals).

How it is used::

    from node_agent.dht import DHTNode

    node = await DHTNode.create(initial_peers=["127.0.0.1:31337"], listen="0.0.0.0:0")
    print(node.endpoint)                       # "host:port": what other nodes pass as an initial peer
    await node.store("experts:ffn.3", {"endpoint": node.endpoint}, time.time() + 60,
                     subkey=owner_subkey("ffn.3.14", node.node_id))
    found = await node.get("experts:ffn.3", latest=True)   # {subkey: ValueWithExpiration}
    await node.shutdown()

Endpoints are ``"host:port"`` strings (IPv6 as ``"[::1]:port"``). An initial peer may also be written as
``"host:port/<node id hex>"``; then the answer must come from that exact node id (pinning).

Keys are ``str``; subkeys ``str | None``; values any msgpack-serialisable structure (dict, list, str, bytes,
int, float, bool, None); expirations are unix times (``time.time()`` based, records cross machines).

Records are signed by their owner (the storing node's identity) automatically. **Owner-protected subkeys**:
a subkey that ends in ``"@" + <owner node id as 40 lowercase hex chars>`` (see :func:`owner_subkey`) can only
be written by the node whose id it names; everyone else's write is refused by every honest peer. Other
subkeys (and plain values, subkey ``None``) may be written by anyone; the later expiration wins.

A per-namespace :class:`RecordValidator` (``node.register_validator("experts:", MyValidator())``) adds schema,
size and expiry rules for keys starting with that prefix; the longest registered prefix applies.

App-level RPC rides on the same signed UDP protocol (WebRTC signalling uses it)::

    async def on_offer(peer: PeerInfo, payload: dict) -> dict: ...
    node.register_rpc("rtc.offer", on_offer)
    peer, answer = await node.call_rpc("127.0.0.1:4000", "rtc.offer", {"sdp": ...}, timeout=5.0)

Payloads up to :data:`MAX_RPC_PAYLOAD` bytes (packed) fit in one datagram.

The node class itself lives in :mod:`node_agent.dht.node`; its public methods are listed in
:class:`DHTNodeAPI` below (``DHTNode`` implements it exactly).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from node_agent.identity import Identity

#: Kademlia ids are 160 bits (Maymounkov & Mazieres 2002, section 2.1): node id = sha256(public key)[:20].
ID_BYTES = 20
#: Packed size of an app-level RPC payload that is guaranteed to fit (the datagram limit is >= 32 KiB).
MAX_RPC_PAYLOAD = 24 * 1024

_OWNER_SUFFIX = re.compile(r"@([0-9a-f]{40})$")


class DHTError(Exception):
    """Base class of every error the DHT raises to callers."""


class DHTTimeoutError(DHTError):
    """A request got no valid answer in time (peer gone, packets lost, or the answer failed verification)."""


class DHTRPCError(DHTError):
    """The remote peer answered with an error (unknown RPC name, handler exception, refused request)."""


class DHTBootstrapError(DHTError):
    """None of the initial peers answered, so the node cannot join the swarm."""


class DHTNodeStoppedError(DHTError):
    """The node stopped itself after a fatal fault (its socket was lost, a background task kept failing)."""


class DHTValidationError(DHTError):
    """A record broke a rule (signature, owner, schema, size, expiry); it is never stored."""


class DHTRecordRefused(DHTValidationError):
    """Refused for want of context an honest relayer may lack (a credential policy, a revocation list, the
    project's portal key, a namespace it does not know): dropped, and whoever passed it on is not
    penalised, since only what every honest node would reject (signature, schema, size) proves malice."""


@dataclass(frozen=True, slots=True)
class ValueWithExpiration:
    """One live value found in the DHT; ``owner`` is the node id that signed it (``None`` if unknown)."""

    value: Any
    expiration: float
    owner: bytes | None = None


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """A peer whose identity was verified: it signed the message with the key whose hash is ``node_id``."""

    node_id: bytes
    public_key: bytes
    endpoint: str


@dataclass(frozen=True, slots=True)
class RecordView:
    """What a validator sees of a record; ``owner`` is the signer's node id (signature already checked)."""

    key: str
    subkey: str | None
    value: Any
    expiration: float
    owner: bytes
    value_size: int


class RecordValidator:
    """Rules for one key namespace; subclass and register with ``DHTNode.register_validator(prefix, v)``.

    The DHT always checks the owner signature and owner-protected subkeys itself, before any validator.
    Then, for records whose key starts with the registered prefix, it calls:

    * :meth:`validate` when a peer stores a record to us, when a lookup brings records back to us, and
      before our own ``store`` sends anything (so callers learn about a bad record early);
    * :meth:`prefers` when a record arrives for a (key, subkey) we already hold, to decide which one stays.

    A validator must be pure and fast (it runs on every datagram carrying that namespace) and may not await.
    """

    #: Largest packed value accepted in this namespace (bytes); ``None`` keeps the node-wide limit.
    max_value_size: int | None = None
    #: How far in the future an expiration may be (seconds); ``None`` keeps the node-wide limit.
    max_expiration_ahead: float | None = None

    def validate(self, record: RecordView, now: float) -> None:
        """Raise :class:`DHTValidationError` with a clear reason if ``record`` is not acceptable."""

    def prefers(self, new: RecordView, old: RecordView) -> bool:
        """Return True if ``new`` should replace ``old`` for the same (key, subkey): later expiration wins."""
        return new.expiration > old.expiration


RPCHandler = Callable[[PeerInfo, dict[str, Any]], Awaitable[dict[str, Any]]]


def owner_subkey(name: str, node_id: bytes) -> str:
    """Build an owner-protected subkey ``"<name>@<node id hex>"`` that only ``node_id`` may write."""
    return f"{name}@{node_id.hex()}"


def subkey_owner(subkey: str | None) -> bytes | None:
    """Return the node id an owner-protected subkey names, or None for an unprotected subkey."""
    if subkey is None:
        return None
    match = _OWNER_SUFFIX.search(subkey)
    return bytes.fromhex(match.group(1)) if match else None


class DHTNodeAPI(Protocol):
    """The methods ``node_agent.dht.node.DHTNode`` provides (build it with ``await DHTNode.create(...)``).

    ``DHTNode.create(initial_peers: Sequence[str] = (), listen: str = "127.0.0.1:0",
    identity: Identity | None = None, client_mode: bool = False, validators=None, **options)`` registers
    ``validators`` (namespace prefix -> :class:`RecordValidator`), binds the UDP socket,
    pings the initial peers (raising :class:`DHTBootstrapError` if some were given and none answered, unless
    ``require_initial_peer=False``: then it starts anyway and keeps pinging them with backoff until one does)
    and looks up its own id to fill the routing table. ``options`` are the fields of
    ``node_agent.dht.config.DHTConfig`` (bucket_size, alpha, num_replicas, rpc_timeout, ...).
    A client-mode node queries and stores into the swarm but stores nothing for others and is never
    added to other nodes' routing tables (for peers that cannot accept inbound traffic).
    """

    identity: Identity
    node_id: bytes
    client_mode: bool

    @property
    def endpoint(self) -> str:
        """``"host:port"`` of the bound socket: what other nodes pass as an initial peer."""

    @property
    def joined(self) -> bool:
        """Whether the node has a live contact (False while none of its initial peers has answered)."""

    async def set_initial_peers(self, initial_peers: Sequence[str]) -> None:
        """Replace the peers pinged to (re)join, reset the rejoin backoff, and join now if not joined."""

    async def shutdown(self) -> None:
        """Stop background tasks and close the socket; pending requests fail with DHTTimeoutError.

        A node also stops itself, logging at CRITICAL level, when its socket is lost or its maintenance
        keeps failing; every public method then raises :class:`DHTNodeStoppedError`. Network-caused
        failures of public methods are always :class:`DHTError` subclasses.
        """

    async def store(self, key: str, value: Any, expiration: float, subkey: str | None = None) -> bool:
        """Sign and store on the ``num_replicas`` nearest nodes; True if at least one node accepted it."""

    async def store_many(self, items: Iterable[tuple[str, str | None, Any, float]]) -> list[bool]:
        """Bulk ``store`` of ``(key, subkey, value, expiration)`` items; one bool per item, same order."""

    async def get(self, key: str, latest: bool = False) -> dict[str | None, ValueWithExpiration]:
        """All live validated subkeys for ``key`` (plain value under ``None``); ``{}`` when nothing.

        ``latest=False`` stops at the first node that has the key; ``latest=True`` asks all the nearest
        replicas and merges, keeping for each subkey the value its validator prefers.
        """

    async def get_many(
        self, keys: Sequence[str], latest: bool = False
    ) -> dict[str, dict[str | None, ValueWithExpiration]]:
        """Bulk ``get``; lookups run concurrently."""

    def register_validator(self, namespace_prefix: str, validator: RecordValidator) -> None:
        """Apply ``validator`` to every key starting with ``namespace_prefix`` (longest prefix wins)."""

    def register_rpc(self, name: str, handler: RPCHandler) -> None:
        """Serve app-level RPC ``name``; a handler exception is answered as DHTRPCError, never crashes."""

    async def call_rpc(
        self,
        endpoint: str,
        name: str,
        payload: dict[str, Any],
        timeout: float,
        expected_node_id: bytes | None = None,
    ) -> tuple[PeerInfo, dict[str, Any]]:
        """Signed request/response to ``endpoint``; returns the verified responder and its payload.

        Raises DHTRPCError when the remote handler failed or the name is unknown or ``endpoint`` cannot be
        parsed, resolved (in 5 s) or reached from this socket's address family, DHTTimeoutError when no
        valid answer came in time (an answer from another address or another node id than
        ``expected_node_id`` is ignored, so it also ends as a timeout).
        """

    async def call_rpc_via_relay(
        self, relay: str, target_id: bytes, name: str, payload: dict[str, Any], timeout: float
    ) -> tuple[PeerInfo, dict[str, Any]]:
        """``call_rpc`` to ``target_id`` (an unreachable node) through ``relay`` (``host:port/<id hex>``, one
        of the relays its announcement names); signalling RPCs only. The request and the answer are sealed
        end to end: a relay that alters or forges the answer makes this raise DHTRPCError."""

    @property
    def relays(self) -> list[str]:
        """Our relays (``host:port/<id hex>``) while this node is unreachable from outside; else empty."""

    def add_relay_listener(self, listener: Callable[[list[str]], None]) -> None:
        """Call ``listener(relays)`` whenever the set of relays changes (announcements must follow)."""
