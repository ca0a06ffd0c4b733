"""Tunable limits of a DHT node, in one place so ``DHTNode.create(**options)`` can override any of them."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from node_agent.wire import DEFAULT_MAX_DATAGRAM


@dataclass(frozen=True, slots=True)
class DHTConfig:
    # Kademlia parameters (Maymounkov & Mazieres 2002, sections 2.2-2.3).
    bucket_size: int = 20  # k
    alpha: int = 3  # concurrent requests per lookup
    num_replicas: int = 5  # nodes a record is stored on; also the beam a value lookup must cover
    # Timeouts (seconds). Lookup RPCs use an adaptive timeout (RFC 6298 style) within [min, rpc_timeout],
    # doubled after each timeout until an answer comes.
    rpc_timeout: float = 2.0
    min_rpc_timeout: float = 0.2
    bootstrap_timeout: float = 5.0
    lookup_timeout: float = 15.0
    max_failures: int = 2  # timeouts in a row before a contact is stale (replaced once a live one shows up)
    # The initial peers are pinged again when no contact is live or a lookup reached nobody: at most once per
    # interval, which doubles from min to max while none answers.
    rejoin_min_interval: float = 1.0
    rejoin_max_interval: float = 30.0
    # False: a node none of whose initial peers answers starts anyway (logging why) and keeps pinging them
    # with the rejoin backoff until one answers, then joins; for agents that must outlive a bootstrap restart.
    require_initial_peer: bool = True
    # Trust.
    max_clock_skew: float = 30.0  # a signed message older or newer than this is refused (replay window)
    offence_threshold: int = 3  # invalid messages or records before a peer is ignored
    # Bans are per node id and per source key (/24 IPv4, /48 IPv6, loopback per address), never per port.
    ban_seconds: float = 60.0
    max_penalised: int = 65_536  # peers with offences or bans remembered at once (oldest forgotten first)
    # Signature checks a store costs (one for the datagram, one per record) are paid from a token bucket per
    # source key: excess stores are dropped before any check (answers to others go on). Pings, finds and
    # responses are not charged. ``rate_limited_sources`` buckets are remembered (LRU).
    store_checks_per_second: float = 500.0
    store_checks_burst: float = 2048.0
    rate_limited_sources: int = 65_536
    max_routing_checks: int = 64  # concurrent pings that verify a new contact or address (more are skipped)
    # Routing table caps per IP prefix (/24 IPv4, /64 IPv6); loopback is exempt unless told otherwise.
    max_per_prefix_bucket: int = 2
    max_per_prefix_table: int = 10
    exempt_loopback: bool = True
    # Records.
    max_datagram: int = DEFAULT_MAX_DATAGRAM
    max_value_size: int = 16 * 1024
    max_records_per_owner: int = 4096
    # Storage caps per source (address prefix, as for bans) and in total; bytes are estimated memory
    # (see storage.footprint: the packed value, its decoded Python objects, plus 1 KiB per record).
    max_records_per_source: int = 8192
    max_bytes_per_source: int = 16 * 1024 * 1024
    max_store_records: int = 65_536
    max_store_bytes: int = 48 * 1024 * 1024
    max_expiration_ahead: float = 24 * 3600.0
    cache_on_get: bool = True
    # Maintenance (Kademlia sections 2.3 and 2.5).
    refresh_interval: float = 600.0
    republish_interval: float = 300.0
    # A maintenance round that fails unexpectedly is retried after 1, 2, 4 ... s (at most the round's period);
    # after this many failures in a row the node stops loudly (callers then get DHTNodeStoppedError).
    max_task_failures: int = 5
    # Reachability (node_agent.dht.nat): "auto" asks peers for dial-backs; "public" and "private" skip the
    # check (an operator who knows, or a test). An unreachable node acts as a client and keeps relays.
    reachability: str = "auto"
    observed_min_votes: int = 3  # distinct responders that must agree on our address before we use it
    dial_back_interval: float = 300.0  # between checks once an answer is known
    dial_back_retry: float = 30.0  # between checks while the answer is unknown
    dial_back_wait: float = 2.0  # how long a probe may take to arrive after the helpers confirmed it
    dial_backs_per_second: float = 0.2  # per source key, at the asked peer and at the helper
    dial_back_burst: float = 4.0
    # Relays: an unreachable node keeps `relay_count` reservations, renewed every `relay_keepalive`
    # seconds (more often than the 30 s a NAT keeps an unanswered UDP mapping).
    relay_count: int = 2
    relay_keepalive: float = 15.0
    relay_forward_timeout: float = 8.0  # a relay waits this long for the relayed node's answer
    relay_max_reservations: int = 16
    relay_ttl: float = 45.0
    relay_window: float = 60.0
    relay_max_messages: int = 64
    relay_max_bytes: int = 256 * 1024
    relay_max_message: int = 24 * 1024

    @classmethod
    def from_options(cls, **options: Any) -> DHTConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(options) - known
        if unknown:
            raise TypeError(f"unknown DHT options: {sorted(unknown)}")
        config = cls(**options)
        if config.reachability not in ("auto", "public", "private"):
            raise ValueError("reachability must be 'auto', 'public' or 'private'")
        return config
