"""Sans-IO protocol core: turns datagrams into verified events and answers ping/store/find (no I/O).

The asyncio adapter (:mod:`node_agent.dht.node`) feeds bytes, an address and ``now`` into
:meth:`ProtocolCore.receive` and sends whatever bytes come back. Every check that makes the DHT
trustless lives here: signature and id binding, clock skew and replays, responses only from the address
the request went to, record validation and penalties for senders of invalid data.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass
from typing import Any

from node_agent.dht.answers import answer_page, cursor_from_wire, cursor_to_wire, wire_size
from node_agent.dht.api import ID_BYTES, DHTRecordRefused, DHTValidationError, PeerInfo, RecordView
from node_agent.dht.config import DHTConfig
from node_agent.dht.endpoints import format_endpoint, numeric_address, source_key
from node_agent.dht.messages import (
    REQUEST_KINDS,
    RESPONSE_KINDS,
    RID_BYTES,
    BadSignature,
    Envelope,
    PeerPenalties,
    ReplayGuard,
    Unverified,
    seal,
    unseal,
    verify_sealed,
)
from node_agent.dht.ratelimit import CostBuckets
from node_agent.dht.reachability import AddressVotes
from node_agent.dht.records import SignedRecord, key_id
from node_agent.dht.routing import AddResult, Contact, RoutingTable
from node_agent.dht.storage import LOCAL_SOURCE, RecordStore, StoreLimits
from node_agent.dht.validation import ExpiredRecordError, ValidatorRegistry
from node_agent.identity import Identity
from node_agent.wire import DropCounter, WireError

logger = logging.getLogger(__name__)

Address = tuple[str, int]
MAX_QUERIES_PER_FIND = 64
MAX_RECORDS_PER_STORE = 256
_ENVELOPE_OVERHEAD = 400  # bytes of header, signature and framing around a payload
_CURSOR_RESERVE = 64  # an answer's cursor and truncated flag


def _is_ip_literal(host: object) -> bool:
    if not isinstance(host, str):
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Request:
    peer: PeerInfo
    address: Address
    rid: bytes
    kind: str
    payload: dict[str, Any]
    client_mode: bool


@dataclass(frozen=True, slots=True)
class Response:
    peer: PeerInfo
    address: Address
    rid: bytes
    kind: str  # "ok" or "err"
    payload: dict[str, Any]
    observed: Address | None = None  # where the responder saw our request come from


@dataclass(frozen=True, slots=True)
class RoutingAction:
    """Something the adapter must do for the routing table: ping ``contact`` (oldest or challenged)."""

    reason: AddResult
    contact: Contact
    candidate_address: Address


class ProtocolCore:
    def __init__(self, identity: Identity, config: DHTConfig, client_mode: bool = False) -> None:
        self.identity = identity
        self.config = config
        self.client_mode = client_mode
        self.routing = RoutingTable(
            identity.node_id,
            config.bucket_size,
            config.max_per_prefix_bucket,
            config.max_per_prefix_table,
            config.exempt_loopback,
            config.max_failures,
        )
        self.store = RecordStore(
            config.max_records_per_owner,
            StoreLimits(
                config.max_records_per_owner,
                config.max_records_per_source,
                config.max_bytes_per_source,
                config.max_store_records,
                config.max_store_bytes,
            ),
        )
        self.validators = ValidatorRegistry(config.max_value_size, config.max_expiration_ahead)
        self.replay = ReplayGuard(config.max_clock_skew)
        self.penalties = PeerPenalties(config.offence_threshold, config.ban_seconds, config.max_penalised)
        self.store_checks = CostBuckets(
            config.store_checks_per_second, config.store_checks_burst, config.rate_limited_sources
        )
        self.ip_version = 4  # of the node's socket: contacts of the other family cannot be reached
        self.drops = DropCounter(logger)
        self.actions: list[RoutingAction] = []
        #: Where responders saw our requests come from (reachability.AddressVotes).
        self.observed = AddressVotes(config.observed_min_votes)
        self._pending: dict[bytes, tuple[Address, bytes | None]] = {}
        #: This machine's own non-loopback addresses as the node knows them (set by the asyncio adapter);
        #: see `_same_host_reply`.
        self.own_hosts: frozenset[str] = frozenset()

    # -- outgoing ---------------------------------------------------------------------------------------
    def request(
        self, kind: str, payload: dict[str, Any], address: Address, expected_id: bytes | None, now: float
    ) -> tuple[bytes, bytes]:
        """Build a signed request; remember where it went so only that address may answer."""
        rid = os.urandom(RID_BYTES)
        data = seal(
            self.identity,
            kind,
            rid,
            now,
            expected_id or b"",
            self.client_mode,
            payload,
            self.config.max_datagram,
        )
        self._pending[rid] = (address, expected_id)
        return rid, data

    def forget(self, rid: bytes) -> None:
        self._pending.pop(rid, None)

    def respond(self, request: Request, kind: str, payload: dict[str, Any], now: float) -> bytes:
        return seal(
            self.identity,
            kind,
            request.rid,
            now,
            request.peer.node_id,
            self.client_mode,
            payload,
            self.config.max_datagram,
            observed=request.address,
        )

    # -- incoming ---------------------------------------------------------------------------------------
    def receive(self, data: bytes, address: Address, now: float) -> Request | Response | None:
        """Verify a datagram; None means dropped (logged at debug level and counted in ``drops``)."""
        source = source_key(address[0])
        if self.penalties.is_banned(source, now):
            self.drops.drop("banned address", source=address)
            return None
        try:
            sealed = unseal(data, self.config.max_datagram)
            if not self._worth_verifying(sealed, address, source, now):
                return None
            envelope = verify_sealed(sealed)
        except BadSignature as exc:
            self.drops.drop("bad signature", exc, address)
            self.penalties.offend(source, now)
            return None
        except WireError as exc:
            self.drops.drop("malformed", exc, address)
            self.penalties.offend(source, now)
            return None
        if self.penalties.is_banned(envelope.node_id, now):
            self.drops.drop("banned node", envelope.node_id.hex()[:12], address)
            return None
        if envelope.node_id == self.identity.node_id:
            self.drops.drop("own id", source=address)
            return None
        peer = PeerInfo(envelope.node_id, envelope.public_key, format_endpoint(address))
        if envelope.kind in RESPONSE_KINDS:
            return self._receive_response(envelope, peer, address, now)
        assert envelope.kind in REQUEST_KINDS
        if envelope.recipient not in (b"", self.identity.node_id):
            self.drops.drop("meant for another node", source=address)
            return None
        reason = self.replay.check(envelope.node_id, envelope.rid, envelope.timestamp, now)
        if reason is not None:
            self.drops.drop(reason, source=address)
            return None
        if envelope.kind == "ping" and "n" in envelope.payload:
            pass  # a dial-back probe comes from a throwaway port: it says nothing about the sender
        elif not envelope.client_mode:
            self._observe(envelope.node_id, address, now, address_proven=False)
        elif self.routing.remove(envelope.node_id):
            logger.debug("%s is a client now; dropped from the routing table", peer.endpoint)
        return Request(peer, address, envelope.rid, envelope.kind, envelope.payload, envelope.client_mode)

    def _worth_verifying(self, sealed: Unverified, address: Address, source: str, now: float) -> bool:
        """Cheap drops before the signature check: responses nobody waits for, and stores over the source's
        budget of signature checks (one per datagram and one per record; no penalty: a busy NAT is no
        offence)."""
        if sealed.kind in RESPONSE_KINDS:
            if sealed.rid not in self._pending:
                self.drops.drop("unexpected or late response", source=address)
                return False
            return True
        if sealed.kind == "store":
            records = sealed.payload.get("r")
            cost = 1 + (min(len(records), MAX_RECORDS_PER_STORE) if isinstance(records, list) else 0)
            if not self.store_checks.take(source, cost, now):
                self.drops.drop("store over the source's rate", source=address)
                return False
        return True

    def _receive_response(
        self, envelope: Any, peer: PeerInfo, address: Address, now: float
    ) -> Response | None:
        pending = self._pending.get(envelope.rid)
        if pending is None:
            self.drops.drop("unexpected or late response", source=address)
            return None
        expected_address, expected_id = pending
        if address != expected_address and not self._same_host_reply(expected_address, address):
            self.drops.drop("response from another address", f"expected {expected_address}", address)
            return None
        if expected_id is not None and envelope.node_id != expected_id:
            self.drops.drop("response from another node id", source=address)
            return None
        if abs(envelope.timestamp - now) > self.config.max_clock_skew:
            self.drops.drop("response timestamp outside the clock skew", source=address)
            return None
        del self._pending[envelope.rid]
        if not envelope.client_mode:
            self._observe(envelope.node_id, address, now, address_proven=True)
        elif self.routing.remove(envelope.node_id):
            logger.debug("%s is a client now; dropped from the routing table", peer.endpoint)
        if envelope.observed is not None:
            self.observed.add(self.accountable_key(envelope.node_id, address), envelope.observed, now)
        return Response(peer, address, envelope.rid, envelope.kind, envelope.payload, envelope.observed)

    def accountable_key(self, node_id: bytes, address: Address) -> object:
        """Who one observed-address vote belongs to: an address prefix (one operator, one voice), except on
        loopback when it is exempt from prefix caps (a same-machine swarm), where it is the node id."""
        if self.config.exempt_loopback and ipaddress.ip_address(address[0].partition("%")[0]).is_loopback:
            return node_id
        return source_key(address[0])

    # -- relayed messages (node_agent.dht.nat) ----------------------------------------------------------
    def receive_relayed(self, data: bytes, source: Address, now: float) -> Request | None:
        """A request another node sealed for us and a relay passed on: verified end to end (signature,
        addressed to us by id, fresh, not replayed). ``source`` is where the relay saw it come from."""
        try:
            envelope = verify_sealed(unseal(data, self.config.max_datagram))
        except WireError as exc:
            self.drops.drop("bad relayed request", exc, source)
            return None
        if envelope.kind != "rpc" or envelope.recipient != self.identity.node_id:
            self.drops.drop("relayed message is not an rpc for us", source=source)
            return None
        reason = self.replay.check(envelope.node_id, envelope.rid, envelope.timestamp, now)
        if reason is not None:
            self.drops.drop(f"relayed: {reason}", source=source)
            return None
        peer = PeerInfo(envelope.node_id, envelope.public_key, format_endpoint(source))
        return Request(peer, source, envelope.rid, envelope.kind, envelope.payload, envelope.client_mode)

    def open_relayed_response(self, data: object, rid: bytes, expected_id: bytes, now: float) -> Envelope:
        """The answer to our relayed request ``rid``: signed by ``expected_id``, for us, fresh; else WireError
        (a relay that forged, altered or replayed an answer)."""
        if not isinstance(data, bytes):
            raise WireError("relayed answer must be a datagram")
        envelope = verify_sealed(unseal(data, self.config.max_datagram))
        if envelope.kind not in RESPONSE_KINDS or envelope.rid != rid:
            raise WireError("relayed answer is not the answer to our request")
        if envelope.node_id != expected_id or envelope.recipient != self.identity.node_id:
            raise WireError("relayed answer comes from another node or is meant for another")
        if abs(envelope.timestamp - now) > self.config.max_clock_skew:
            raise WireError("relayed answer's timestamp is outside the clock skew")
        return envelope

    def _same_host_reply(self, expected: Address, actual: Address) -> bool:
        """A reply from 127.0.0.1 (or ::1) to a request sent to one of this machine's own addresses.

        A node bound to the wildcard answers a request that arrived over loopback from the loopback
        address (the kernel picks the source by the route back), so a same-machine caller bound to
        127.0.0.1 that sent to the node's advertised address sees the reply come "from another address".
        Only this host can send from a loopback source (the kernel drops such packets arriving on other
        interfaces), and the reply is still signed by the expected node id, so accepting it admits nobody
        new; the port must match as well."""
        if actual[1] != expected[1] or expected[0] not in self.own_hosts:
            return False
        try:
            return ipaddress.ip_address(actual[0]).is_loopback
        except ValueError:
            return False

    def _observe(self, node_id: bytes, address: Address, now: float, address_proven: bool) -> None:
        result, contact = self.routing.observe(node_id, address[0], address[1], now, address_proven)
        if result in (AddResult.PING_OLDEST, AddResult.CHALLENGE, AddResult.VERIFY) and contact is not None:
            self.actions.append(RoutingAction(result, contact, address))

    # -- records ----------------------------------------------------------------------------------------
    def check_records(
        self, raw_records: Any, sender: PeerInfo | None, now: float
    ) -> list[tuple[SignedRecord, RecordView] | None]:
        """Validate records from the network; invalid ones become None and count against the sender."""
        if not isinstance(raw_records, list):
            raw_records = []
        results: list[tuple[SignedRecord, RecordView] | None] = []
        offences = 0
        for raw in raw_records[:MAX_RECORDS_PER_STORE]:
            try:
                record = SignedRecord.from_wire(raw)
                results.append(self.store.same(record, now) or (record, self.validators.check(record, now)))
            except ExpiredRecordError:
                results.append(None)  # expired in transit: not the sender's fault
            except DHTRecordRefused as exc:  # needs context an honest relayer may lack: drop, do not blame
                self.drops.drop("record refused without blame", exc, sender and sender.endpoint)
                results.append(None)
            except (WireError, DHTValidationError) as exc:
                logger.debug("invalid record from %s: %s", sender and sender.endpoint, exc)
                results.append(None)
                offences += 1
        if offences and sender is not None:
            self._blame(sender, "invalid records", offences, now)
        return results

    def parse_contacts(self, raw_nodes: Any, sender: PeerInfo, now: float) -> list[tuple[bytes, Address]]:
        """Contacts named in a find answer that we can and may send to: ``(node id, numeric address)``.

        Only unicast IP literals of our socket's family with ports 1..65535 are kept. An entry that is not
        even that shape (a host name, a null byte, a wrong type) is one offence against the sender for the
        whole answer; an address of the other family or a non-unicast one is dropped without blame (an honest
        dual-stack peer may know it).
        """
        if not isinstance(raw_nodes, list):
            return []
        contacts: list[tuple[bytes, Address]] = []
        malformed = 0
        for entry in raw_nodes[: 2 * self.config.bucket_size]:
            if (
                not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], bytes))
                or len(entry[0]) != ID_BYTES
            ):
                malformed += 1
                continue
            node_id, host, port = entry
            try:
                contacts.append((node_id, numeric_address(host, port, self.ip_version)))
            except ValueError:
                if not _is_ip_literal(host) or type(port) is not int or not 0 < port < 65536:
                    malformed += 1
        if malformed:
            self._blame(sender, "malformed contacts", malformed, now)
        return contacts

    def _blame(self, sender: PeerInfo, what: str, count: int, now: float) -> None:
        """Count `count` dropped items of kind `what` and one offence of `sender` (a ban once repeated)."""
        self.drops.drop(what, count, sender.endpoint)
        if self.penalties.offend(sender.node_id, now):
            logger.info("ignoring %s for %.0fs: repeated %s", sender.endpoint, self.config.ban_seconds, what)

    def store_locally(
        self, record: SignedRecord, view: RecordView, now: float, source: str | None = LOCAL_SOURCE
    ) -> bool:
        """Store a validated record, charged to ``source`` (a source key; None for our own records)."""
        try:
            return self.store.put(record, view, now, self.validators.prefers, source)
        except DHTValidationError as exc:
            logger.debug("not storing %r: %s", record.key, exc)
            return False

    # -- request handlers (pure: payload in, payload out) -----------------------------------------------
    def handle_ping(self, request: Request, now: float) -> tuple[str, dict[str, Any]]:
        return "ok", {}

    def handle_store(self, request: Request, now: float) -> tuple[str, dict[str, Any]]:
        if self.client_mode:
            return "err", {"e": "client-mode node stores nothing for others"}
        checked = self.check_records(request.payload.get("r"), request.peer, now)
        source = source_key(request.address[0])
        return "ok", {
            "ok": [entry is not None and self.store_locally(*entry, now, source) for entry in checked]
        }

    def handle_find(self, request: Request, now: float) -> tuple[str, dict[str, Any]]:
        """Merged find-node / find-value (section 2.3): nearest contacts plus records under the key.

        A query is ``[target, key]``, or ``[target, key, cursor]`` for the next page of a truncated answer
        (:mod:`node_agent.dht.answers`); an answer is ``[nodes, records, truncated, cursor or nil]``.
        """
        queries = request.payload.get("q")
        if not isinstance(queries, list) or len(queries) > MAX_QUERIES_PER_FIND:
            return "err", {"e": "find needs a list of at most 64 queries"}
        budget = self.config.max_datagram - _ENVELOPE_OVERHEAD
        answers: list[list[Any]] = []
        for query in queries:
            if not (isinstance(query, list) and len(query) in (2, 3) and isinstance(query[0], bytes)):
                return "err", {"e": "each query is [target id, key or nil, cursor?]"}
            target, key = query[0], query[1]
            if len(target) != ID_BYTES or (
                key is not None and (not isinstance(key, str) or key_id(key) != target)
            ):
                return "err", {"e": "target id must be 20 bytes and match the key"}
            try:
                after = cursor_from_wire(query[2]) if len(query) == 3 else None
            except WireError as exc:
                return "err", {"e": str(exc)}
            nodes = []
            if after is None:  # a continuation only wants more records
                nodes = [
                    [c.node_id, c.host, c.port]
                    for c in self.routing.nearest(
                        target, self.config.bucket_size, exclude=request.peer.node_id
                    )
                ]
            budget -= 40 * len(nodes) + 8
            records: list[Any] = []
            cursor: list[Any] | None = None
            truncated = False
            if key is not None and not self.client_mode:
                page, next_cursor, truncated = answer_page(
                    (record for record, _ in self.store.get(target, now) if record.key == key),
                    after,
                    budget - _CURSOR_RESERVE,
                    self.config.max_datagram - _ENVELOPE_OVERHEAD - _CURSOR_RESERVE,
                )
                budget -= sum(wire_size(record) for record in page)
                records = [record.to_wire() for record in page]
                cursor = cursor_to_wire(next_cursor) if next_cursor is not None else None
            answers.append([nodes, records, truncated, cursor])
        return "ok", {"a": answers}
