"""DecentralizedAverager: find a group through the DHT, average tensors with it over WebRTC, report.

    averager = await DecentralizedAverager.create(dht, pool, "my-model", tensors, options)
    report = await averager.step(weight=samples_seen)   # tensors now hold the group's average
    await averager.shutdown()

One `step` = matchmaking (`matchmaking`: declare under the current group key, follow the leader chosen by
(expiration, node id) or lead) + one butterfly round (`allreduce`). Deadlines come from measurements:
the round's from the members' measured throughputs and the leader's measured connection set-up time. A
step never waits past `timeout`. Peers refused in a round (non-finite or outlying values, implausible
averages, bad credentials) are penalised: ignored in matchmaking and refused as joiners for
`penalty_rounds` of our steps.

A peer behind a NAT names its relays (`dht.relays`) in its declaration, its join request and its roster
entry: the join and every link of the round signal to it through them (ICE then finds a direct or a TURN
path, as for experts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from node_agent.averaging.allreduce import REDUCE_METHOD, ButterflyRound, RoundSettings
from node_agent.averaging.matchmaking import (
    Candidate,
    Decision,
    choose_leader,
    leader_decision,
    next_group_bits,
)
from node_agent.averaging.messages import (
    GROUP_ID_BYTES,
    Declaration,
    JoinRequest,
    Member,
    MessageError,
    ReduceRequest,
    Roster,
    parse_join_reply,
)
from node_agent.averaging.partition import traffic_bytes
from node_agent.averaging.records import NAMESPACE, AveragingRecordsValidator, own_relays
from node_agent.dht.api import (
    DHTError,
    DHTNodeAPI,
    owner_subkey,
    subkey_owner,
)
from node_agent.rtc.pool import ConnectionPool, CredentialChecker
from node_agent.rtc.rpc import ChannelRPC, RPCHandlerError, current_caller
from node_agent.tensor_codec import Compression

logger = logging.getLogger(__name__)

JOIN_METHOD = "join"
#: How long a reduce call for a group we have not started yet waits for our own join reply.
ROUND_START_GRACE = 10.0
#: A measured time is never trusted below these (a lucky first measurement must not make deadlines absurd).
MIN_CONNECT_ALLOWANCE = 0.5
MIN_ROUND_SECONDS = 1.0


class AveragingError(Exception):
    """A step could not average (no group formed in time, shut down)."""


@dataclass(slots=True)
class AveragingOptions:
    target_group_size: int = 4
    min_group_size: int = 2
    #: How long a peer waits for a group to fill before starting with fewer (at least `min_group_size`).
    matchmaking_time: float = 5.0
    #: Bits of the rotating group key (Moshpit); 0: one key for everyone.
    group_bits: str = ""
    compression: Compression | Sequence[Compression] = Compression.FLOAT16
    #: Measured throughput starts here (bytes/s) and moves towards what rounds achieve (EWMA).
    initial_throughput: float = 2e6
    initial_connect_time: float = 1.0
    #: Round deadline = set-up allowance + `deadline_slack` x the slowest member's traffic / throughput.
    deadline_slack: float = 3.0
    outlier_factor: float = 10.0
    clip_tau: float | None = None
    plausibility_factor: float = 10.0
    penalty_rounds: int = 10
    window: int = 8
    #: Gated projects: our credential (carried in declarations and joins) and the checker for others'.
    credential: str | None = None
    credentials: CredentialChecker | None = None
    #: Install the `avg:` validator on the DHT node (project nodes already have it: `project_validators`).
    register_validator: bool = True


@dataclass(slots=True)
class RoundReport:
    """What one `step` did; `complete` means every part was averaged by its reducer with every member."""

    group_id: bytes
    members: list[bytes]
    index: int
    weight: float
    complete: bool
    matchmaking_s: float
    allreduce_s: float
    refused: dict[bytes, str] = field(default_factory=dict)
    silent: list[bytes] = field(default_factory=list)
    failed_reducers: dict[bytes, str] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0

    @property
    def group_size(self) -> int:
        return len(self.members)


@dataclass(slots=True)
class _Leading:
    key: str
    deadline: float  # wall time (the declaration's expiration)
    followers: list[tuple[bytes, JoinRequest]] = field(default_factory=list)
    formed: asyncio.Future[Roster] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    open: bool = True


class DecentralizedAverager:
    def __init__(
        self,
        dht: DHTNodeAPI,
        pool: ConnectionPool,
        prefix: str,
        tensors: Sequence[torch.Tensor],
        options: AveragingOptions,
    ) -> None:
        if prefix == "progress" or not prefix or ":" in prefix:
            raise ValueError("the prefix must be non-empty, without ':' and not 'progress'")
        if not tensors or any(not t.is_floating_point() for t in tensors):
            raise ValueError("average floating-point tensors only")
        self.dht = dht
        self.pool = pool
        self.prefix = prefix
        self.tensors = list(tensors)
        self.options = options
        choice = options.compression
        self.compressions = (
            [Compression(choice)] * len(self.tensors)
            if isinstance(choice, str)
            else [Compression(c) for c in choice]
        )
        if len(self.compressions) != len(self.tensors):
            raise ValueError("need one compression per tensor")
        self.group_bits = options.group_bits
        self.throughput = options.initial_throughput
        self.connect_time = options.initial_connect_time
        self.rounds_completed = 0
        self.rounds_failed = 0
        self.penalties: dict[bytes, int] = {}
        self._route = f"avg.{prefix}."
        self._leading: _Leading | None = None
        self._rounds: dict[bytes, tuple[ButterflyRound, Roster]] = {}
        self._round_started = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tag = ""
        self._background: set[asyncio.Task[Any]] = set()
        self._closed = False

    @classmethod
    async def create(
        cls,
        dht: DHTNodeAPI,
        pool: ConnectionPool,
        prefix: str,
        tensors: Sequence[torch.Tensor],
        options: AveragingOptions | None = None,
    ) -> DecentralizedAverager:
        options = options or AveragingOptions()
        averager = cls(dht, pool, prefix, tensors, options)
        if options.register_validator:
            dht.register_validator(NAMESPACE, AveragingRecordsValidator(options.credentials))
        pool.add_route(averager._route, averager._handle)
        return averager

    async def shutdown(self) -> None:
        self.pool.remove_route(self._route)
        self._closed = True  # a step still ending spawns nothing more (its clean-up would outlive the loop)
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def group_key(self) -> str:
        return f"{NAMESPACE}{self.prefix}:{self._tag}.{self.group_bits}"

    # ---- one step ------------------------------------------------------------------------------------

    async def step(self, weight: float = 1.0, timeout: float | None = None, tag: str = "") -> RoundReport:
        """Find a group and average with it; tensors are updated in place. AveragingError if no group.

        `tag` (letters, digits, '-'): peers group only with peers stepping with the same tag, e.g. an epoch.
        """
        if not weight >= 0:
            raise ValueError("weight must be >= 0")
        if not all(c.isalnum() or c == "-" for c in tag) or len(tag) > 40:
            raise ValueError("a tag holds at most 40 letters, digits or '-'")
        async with self._lock:
            self._tag = tag
            budget = timeout if timeout is not None else 3 * self.options.matchmaking_time + 60.0
            started = time.monotonic()
            end = started + budget
            roster: Roster | None = None
            while roster is None:
                if time.monotonic() >= end:
                    self.rounds_failed += 1
                    raise AveragingError(f"no group formed within {budget:.1f} s under {self.group_key}")
                roster = await self._matchmake(end)
            try:
                return await self._average(roster, weight, started, end)
            finally:
                self._tick_penalties()

    # ---- matchmaking ---------------------------------------------------------------------------------

    async def _matchmake(self, end: float) -> Roster | None:
        key = self.group_key
        deadline = time.time() + min(self.options.matchmaking_time, max(0.1, end - time.monotonic()))
        me = self.dht.node_id
        declaration = Declaration(
            self.dht.endpoint, self.throughput, self.options.credential, relays=own_relays(self.dht)
        )
        leading = _Leading(key, deadline)
        self._leading = leading
        try:
            await self._declare(key, declaration, deadline)
            skip: set[bytes] = set()
            while True:
                now = time.time()
                candidates = await self._candidates(key)
                candidates.append(Candidate(me, deadline, declaration))
                leader = choose_leader(candidates, now, frozenset(skip))
                if leader is None or leader.node_id == me or leading.followers:
                    roster = await self._lead(leading, end)
                    if roster is not None or time.time() >= leading.deadline:
                        return roster
                    continue  # a better leader appeared while nobody had joined us
                leading.open = False  # we follow: joiners are told to look again
                roster_or_reason = await self._join(leader, key, end)
                if isinstance(roster_or_reason, Roster):
                    return roster_or_reason
                skip.add(leader.node_id)
                leading.open = True
                if time.time() >= deadline and not any(
                    c.node_id not in skip and c.node_id != me and c.expiration > time.time()
                    for c in candidates
                ):
                    return await self._lead(leading, end)
        finally:
            leading.open = False
            if not leading.formed.done():
                leading.formed.set_exception(AveragingError("the leader stopped matchmaking"))
                leading.formed.exception()
            self._leading = None
            self._spawn(self._declare(key, replace(declaration, taken=True), deadline + 0.001))

    async def _declare(self, key: str, declaration: Declaration, expiration: float) -> None:
        try:
            await self.dht.store(
                key, declaration.to_wire(), expiration, subkey=owner_subkey("peer", self.dht.node_id)
            )
        except DHTError as exc:
            logger.warning("averaging: could not declare under %s: %s", key, exc)

    async def _candidates(self, key: str) -> list[Candidate]:
        try:
            found = await self.dht.get(key, latest=True)
        except DHTError as exc:
            logger.info("averaging: looking up %s failed: %s", key, exc)
            return []
        candidates = []
        for subkey, item in found.items():
            owner = subkey_owner(subkey)
            if owner is None or owner != item.owner or owner == self.dht.node_id or owner in self.penalties:
                continue
            try:
                declaration = Declaration.from_wire(item.value, owner)
            except MessageError:
                continue
            if not self._credential_ok(declaration.credential, owner):
                continue
            candidates.append(Candidate(owner, item.expiration, declaration))
        return candidates

    def _credential_ok(self, token: str | None, owner: bytes) -> bool:
        if self.options.credentials is None:
            return True
        try:
            self.options.credentials.check(token, owner=owner, now=time.time())
            return True
        except ValueError as exc:
            logger.info("averaging: %s has no valid credential: %s", owner.hex()[:8], exc)
            return False

    async def _lead(self, leading: _Leading, end: float) -> Roster | None:
        """Admit joiners until the group is full or our deadline; None if a better leader should be tried."""
        options = self.options
        while True:
            size = 1 + len(leading.followers)
            decision = leader_decision(
                size, options.target_group_size, options.min_group_size, time.time(), leading.deadline
            )
            if decision is Decision.BEGIN:
                return self._form(leading)
            if decision is Decision.FAIL:
                leading.open = False
                if not leading.formed.done():
                    leading.formed.set_exception(
                        AveragingError(f"only {size} of {options.min_group_size} peers")
                    )
                    leading.formed.exception()
                return None
            leading.changed.clear()
            wait = min(leading.deadline - time.time(), end - time.monotonic(), 0.5)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(leading.changed.wait(), max(0.01, wait))
            if not leading.followers and time.time() < leading.deadline:
                better = choose_leader(await self._candidates(leading.key), time.time())
                if (
                    better is not None
                    and (better.expiration, better.node_id)
                    < (
                        leading.deadline,
                        self.dht.node_id,
                    )
                    and not leading.followers
                ):
                    return None

    def _form(self, leading: _Leading) -> Roster:
        leading.open = False
        me = Member(
            self.dht.node_id,
            self.dht.endpoint,
            self.throughput,
            self.options.credential,
            own_relays(self.dht),
        )
        members = [me] + [
            Member(node_id, join.endpoint, join.throughput, join.credential, join.relays)
            for node_id, join in leading.followers
        ]
        roster = Roster(
            secrets.token_bytes(GROUP_ID_BYTES), tuple(members), max(MIN_CONNECT_ALLOWANCE, self.connect_time)
        )
        if not leading.formed.done():
            leading.formed.set_result(roster)
        return roster

    async def _join(self, leader: Candidate, key: str, end: float) -> Roster | str:
        request = JoinRequest(
            key, self.dht.endpoint, self.throughput, self.options.credential, own_relays(self.dht)
        )
        timeout = max(
            0.1, min(leader.expiration - time.time() + 2 * self.connect_time + 1.0, end - time.monotonic())
        )
        try:
            started = time.monotonic()
            link = await self.pool.connect(
                leader.node_id, leader.declaration.endpoint, timeout, leader.declaration.relays
            )
            self._note_connect(time.monotonic() - started)
            reply = await link.rpc.call(self._route + JOIN_METHOD, request.to_wire(), timeout=timeout)
            answer = parse_join_reply(reply)
        except Exception as exc:
            logger.info("averaging: joining %s failed: %s", leader.node_id.hex()[:8], exc)
            return str(exc)
        if isinstance(answer, str):
            logger.debug("averaging: %s refused us: %s", leader.node_id.hex()[:8], answer)
            return answer
        if answer.index_of(self.dht.node_id) is None or answer.members[0].node_id != leader.node_id:
            return "roster without us or led by someone else"
        return answer

    def _note_connect(self, seconds: float) -> None:
        self.connect_time = 0.7 * self.connect_time + 0.3 * seconds

    # ---- serving -------------------------------------------------------------------------------------

    async def _handle(self, method: str, body: Any) -> Any:
        caller = current_caller()
        if caller is None:
            raise RPCHandlerError("unknown_caller", "caller not verified")
        name = method[len(self._route) :]
        if name == JOIN_METHOD:
            return await self._serve_join(caller, body)
        if name == REDUCE_METHOD:
            return await self._serve_reduce(caller, body)
        raise RPCHandlerError("unknown_method", f"no averaging method {name[:40]!r}")

    async def _serve_join(self, caller: bytes, body: Any) -> Any:
        try:
            request = JoinRequest.from_wire(body, caller)
        except MessageError as exc:
            raise RPCHandlerError("bad_request", str(exc)) from None
        leading = self._leading
        if leading is None or not leading.open or request.group_key != leading.key:
            return {"refused": "not leading this group"}
        if caller in self.penalties:
            return {"refused": "penalised"}
        if not self._credential_ok(request.credential, caller):
            return {"refused": "no valid credential"}
        if any(node_id == caller for node_id, _ in leading.followers):
            return {"refused": "already joined"}
        if 1 + len(leading.followers) >= self.options.target_group_size:
            return {"refused": "group full"}
        leading.followers.append((caller, request))
        leading.changed.set()
        try:
            roster = await asyncio.wait_for(
                asyncio.shield(leading.formed), max(0.1, leading.deadline - time.time() + 1.0)
            )
        except (TimeoutError, AveragingError) as exc:
            return {"refused": f"group did not form: {exc}"}
        return {"group": roster.to_wire()}

    async def _serve_reduce(self, caller: bytes, body: Any) -> Any:
        try:
            request = ReduceRequest.from_wire(body)
        except MessageError as exc:
            raise RPCHandlerError("bad_request", str(exc)) from None
        entry = self._rounds.get(request.group_id)
        waited_until = time.monotonic() + ROUND_START_GRACE
        while entry is None and time.monotonic() < waited_until:
            self._round_started.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._round_started.wait(), waited_until - time.monotonic())
            entry = self._rounds.get(request.group_id)
        if entry is None:
            raise RPCHandlerError("unknown_group", "no such averaging round here")
        round_, roster = entry
        sender = roster.index_of(caller)
        if sender is None:
            raise RPCHandlerError("not_member", "caller is not in this group")
        return await round_.handle_reduce(sender, request)

    # ---- the round -----------------------------------------------------------------------------------

    def _deadline_seconds(self, roster: Roster, sizes: list[int]) -> float:
        shares = [m.throughput for m in roster.members]
        traffic = traffic_bytes(sizes, shares, self.compressions)
        slowest = max(t / m.throughput for t, m in zip(traffic, roster.members, strict=True))
        return 2 * roster.connect_allowance + self.options.deadline_slack * max(MIN_ROUND_SECONDS, slowest)

    async def _average(self, roster: Roster, weight: float, started: float, end: float) -> RoundReport:
        index = roster.index_of(self.dht.node_id)
        assert index is not None
        matchmaking_s = time.monotonic() - started
        sizes = [t.numel() for t in self.tensors]
        flat = torch.cat([t.detach().reshape(-1).float().cpu() for t in self.tensors])
        deadline = time.monotonic() + min(
            self._deadline_seconds(roster, sizes), max(0.1, end - time.monotonic())
        )
        refused = {
            i: "no valid credential"
            for i, m in enumerate(roster.members)
            if i != index and not self._credential_ok(m.credential, m.node_id)
        }
        refused.update({i: "penalised" for i, m in enumerate(roster.members) if m.node_id in self.penalties})
        settings = RoundSettings(
            self.options.outlier_factor,
            self.options.clip_tau,
            self.options.plausibility_factor,
            self.options.window,
        )
        round_ = ButterflyRound(
            roster,
            index,
            flat,
            sizes,
            self.compressions,
            weight,
            deadline,
            settings,
            self._route + REDUCE_METHOD,
            refused,
        )
        self._rounds[roster.group_id] = (round_, roster)
        self._round_started.set()
        transfer_started = time.monotonic()
        try:
            outcome = await round_.run(
                lambda j: self._link(roster, index, j, deadline), lambda j: self._alive(roster, j)
            )
        finally:
            self._spawn(self._forget_round(roster.group_id, deadline))
        elapsed = time.monotonic() - transfer_started
        self._write_back(round_.output)
        for i in outcome.misbehaved:
            if roster.members[i].node_id in self.penalties or i == index:
                continue  # refused from the start (penalised, no credential): the count runs on
            self.penalties[roster.members[i].node_id] = self.options.penalty_rounds
        if outcome.complete:
            self.rounds_completed += 1
            moved = outcome.bytes_sent + outcome.bytes_received
            if elapsed > 0 and moved > 0:
                self.throughput = max(1.0, 0.5 * self.throughput + 0.5 * moved / elapsed)
        else:
            self.rounds_failed += 1
        self.group_bits = next_group_bits(self.group_bits, index, len(roster.members))
        ids = [m.node_id for m in roster.members]
        return RoundReport(
            group_id=roster.group_id,
            members=ids,
            index=index,
            weight=weight,
            complete=outcome.complete,
            matchmaking_s=matchmaking_s,
            allreduce_s=elapsed,
            refused={ids[i]: r for i, r in outcome.refused.items()},
            silent=[ids[i] for i in sorted(outcome.silent)],
            failed_reducers={ids[i]: r for i, r in outcome.failed_reducers.items()},
            bytes_sent=outcome.bytes_sent,
            bytes_received=outcome.bytes_received,
        )

    def _write_back(self, flat: torch.Tensor) -> None:
        offset = 0
        with torch.no_grad():
            for tensor in self.tensors:
                count = tensor.numel()
                tensor.copy_(flat[offset : offset + count].view_as(tensor).to(tensor.dtype))
                offset += count

    async def _link(self, roster: Roster, me: int, other: int, deadline: float) -> ChannelRPC:
        """One connection per pair: the lower index dials, the higher waits for it (then dials itself)."""
        member = roster.members[other]
        if me > other:
            wait_until = time.monotonic() + min(
                roster.connect_allowance * 2, max(0.0, deadline - time.monotonic())
            )
            while time.monotonic() < wait_until:
                link = self.pool.live_link(member.node_id)
                if link is not None:
                    return link.rpc
                await asyncio.sleep(0.02)
        link = self.pool.live_link(member.node_id)
        if link is not None:
            return link.rpc
        started = time.monotonic()
        link = await self.pool.connect(
            member.node_id, member.endpoint, max(0.1, deadline - time.monotonic()), member.relays
        )
        self._note_connect(time.monotonic() - started)
        return link.rpc

    def _alive(self, roster: Roster, index: int) -> bool:
        return self.pool.live_link(roster.members[index].node_id) is not None

    async def _forget_round(self, group_id: bytes, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 1.0)
        self._rounds.pop(group_id, None)

    def _tick_penalties(self) -> None:
        for node_id in list(self.penalties):
            self.penalties[node_id] -= 1
            if self.penalties[node_id] <= 0:
                del self.penalties[node_id]

    def _spawn(self, coroutine: Any) -> None:
        if self._closed:
            coroutine.close()
            return
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
