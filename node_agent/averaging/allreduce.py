"""One butterfly all-reduce round inside a formed group, over the peers' WebRTC links.

Member i reduces part i of the flattened tensors (parts sized by throughput, `partition`). For every piece
of every other member's part, a member sends its values in one call and the reply is the group's average of
that piece: reduce-scatter and all-gather are one pipelined stream of <= 64 KiB messages, up to `window`
calls in flight per reducer, paced by the channel's back-pressure.

Failures never make anyone wait past the round's deadline:
* a silent or dead sender: at the deadline (or as soon as its link drops) the reducer averages what it has;
* a silent, dead or implausible reducer: that part of ours stays local (our own values);
* a sender whose values are non-finite or outliers (`aggregation.screen`): refused for the rest of the round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from node_agent.averaging.aggregation import aggregate, plausible_average, screen
from node_agent.averaging.messages import (
    MessageError,
    ReduceRequest,
    Roster,
    decode_piece,
    parse_reduce_reply,
)
from node_agent.averaging.partition import Piece, split
from node_agent.rtc.rpc import ChannelRPC, RPCError, RPCHandlerError
from node_agent.tensor_codec import Compression, encode_tensor

logger = logging.getLogger(__name__)

REDUCE_METHOD = "reduce"

LinkGetter = Callable[[int], Awaitable[ChannelRPC]]


@dataclass(frozen=True, slots=True)
class RoundSettings:
    outlier_factor: float = 10.0
    clip_tau: float | None = None
    plausibility_factor: float = 10.0
    window: int = 8


@dataclass(slots=True)
class RoundOutcome:
    """What happened, by member index: who was refused (and why), who stayed silent, which reducers failed."""

    refused: dict[int, str] = field(default_factory=dict)
    silent: set[int] = field(default_factory=set)
    failed_reducers: dict[int, str] = field(default_factory=dict)
    #: Members that broke the protocol or sent bad values (refused, implausible answers): to penalise.
    misbehaved: dict[int, str] = field(default_factory=dict)
    bytes_sent: int = 0
    bytes_received: int = 0

    @property
    def complete(self) -> bool:
        return not (self.refused or self.silent or self.failed_reducers)


class ButterflyRound:
    def __init__(
        self,
        roster: Roster,
        index: int,
        flat: torch.Tensor,
        sizes: list[int],
        compressions: list[Compression],
        weight: float,
        deadline: float,
        settings: RoundSettings,
        method: str,
        refused: dict[int, str] | None = None,
    ) -> None:
        self.roster = roster
        self.index = index
        self.weight = weight
        self.deadline = deadline  # time.monotonic()
        self.settings = settings
        self.method = method
        self.compressions = compressions
        self.flat = flat
        self.output = flat.clone()
        self.parts = split(sizes, [m.throughput for m in roster.members], compressions)
        self.mine = self.parts[index]
        self.outcome = RoundOutcome(refused=dict(refused or {}))
        self._contributions: list[dict[int, tuple[torch.Tensor, float]]] = [{} for _ in self.mine]
        loop = asyncio.get_running_loop()
        self._done: list[asyncio.Future[torch.Tensor]] = [loop.create_future() for _ in self.mine]
        self._replies: list[dict[str, Any]] = [{} for _ in self.mine]
        self._others = [i for i in range(len(roster.members)) if i != index]

    # ---- reducer side --------------------------------------------------------------------------------

    async def handle_reduce(self, sender: int, request: ReduceRequest) -> dict[str, Any]:
        if sender == self.index or not 0 <= sender < len(self.roster.members):
            raise RPCHandlerError("not_member", "caller is not another member of this group")
        if sender in self.outcome.refused:
            raise RPCHandlerError("excluded", self.outcome.refused[sender])
        if request.piece >= len(self.mine):
            raise RPCHandlerError("bad_request", f"piece {request.piece} of {len(self.mine)}")
        piece = self.mine[request.piece]
        try:
            values = decode_piece(request.tensor, piece.size, "reduce request")
        except MessageError as exc:
            self._refuse(sender, f"undecodable piece: {exc}")
            raise RPCHandlerError("bad_request", str(exc)) from None
        self.outcome.bytes_received += _payload_bytes(request.tensor)
        done = self._done[request.piece]
        if not done.done():
            contributions = self._contributions[request.piece]
            if sender in contributions:
                raise RPCHandlerError("bad_request", "piece sent twice")
            contributions[sender] = (values, request.weight)
            self._try_finish(request.piece)
        remaining = self.deadline - time.monotonic()
        try:
            average = await asyncio.wait_for(asyncio.shield(done), max(0.0, remaining))
        except TimeoutError:
            self.finish_at_deadline()
            average = done.result()
        del average
        if sender in self.outcome.refused:
            raise RPCHandlerError("excluded", self.outcome.refused[sender])
        reply = self._replies[request.piece]
        self.outcome.bytes_sent += _payload_bytes(reply["t"])
        return reply

    def _expected(self) -> set[int]:
        return set(self._others) - set(self.outcome.refused) - self.outcome.silent

    def _try_finish(self, position: int) -> None:
        if not self._done[position].done() and self._expected() <= set(self._contributions[position]):
            self._finish(position)

    def _finish(self, position: int) -> None:
        if self._done[position].done():
            return
        piece = self.mine[position]
        contributions = {
            sender: pair
            for sender, pair in self._contributions[position].items()
            if sender not in self.outcome.refused
        }
        contributions[self.index] = (self.flat[piece.start : piece.stop], self.weight)
        verdict = screen({s: v for s, (v, _w) in contributions.items()}, self.settings.outlier_factor)
        refused = {s: r for s, r in verdict.refused.items() if s != self.index}
        accepted = [s for s in contributions if s not in refused]
        values = [contributions[s][0] for s in accepted]
        weights = [contributions[s][1] for s in accepted]
        if sum(weights) <= 0:
            values, weights = [contributions[self.index][0]], [1.0]
        average = aggregate(values, weights, self.settings.clip_tau)
        # every member, the reducer too, keeps the value that travels (compressed and decoded once), so a
        # group ends with identical tensors; the encoded answer is shared by all senders
        header = encode_tensor(average, self.compressions[piece.tensor])
        if self.compressions[piece.tensor] is not Compression.NONE:
            average = decode_piece(header, piece.size, "own average")
        self._replies[position] = {"t": header}
        self.output[piece.start : piece.stop] = average
        self._done[position].set_result(average)
        for sender, reason in refused.items():
            self._refuse(sender, reason)

    def _refuse(self, sender: int, reason: str) -> None:
        if sender not in self.outcome.refused:
            logger.warning(
                "averaging: refusing %s's values for this round: %s",
                self.roster.members[sender].node_id.hex()[:8],
                reason,
            )
            self.outcome.refused[sender] = reason
            self.outcome.misbehaved[sender] = reason
            self._recheck()

    def _recheck(self) -> None:
        for position in range(len(self.mine)):
            self._try_finish(position)

    def mark_silent(self, sender: int) -> None:
        """The sender's link dropped: stop waiting for it."""
        if sender in self._others and sender not in self.outcome.silent:
            waiting = any(
                sender not in c for c, d in zip(self._contributions, self._done, strict=True) if not d.done()
            )
            if waiting:
                self.outcome.silent.add(sender)
                self._recheck()

    def finish_at_deadline(self) -> None:
        for position, done in enumerate(self._done):
            if not done.done():
                missing = self._expected() - set(self._contributions[position])
                self.outcome.silent.update(missing)
                self._finish(position)

    @property
    def reduced(self) -> bool:
        return all(d.done() for d in self._done)

    # ---- sender side ---------------------------------------------------------------------------------

    async def send_part(self, reducer: int, link: LinkGetter) -> None:
        """Send our values of `reducer`'s part piece by piece and write back the averages it returns."""
        pieces = self.parts[reducer]
        if not pieces:
            return
        try:
            rpc = await asyncio.wait_for(link(reducer), max(0.01, self.deadline - time.monotonic()))
        except Exception as exc:
            self._reducer_failed(reducer, f"no link: {exc or type(exc).__name__}")
            return
        window = asyncio.Semaphore(self.settings.window)

        async def one(piece: Piece) -> None:
            async with window:
                if reducer in self.outcome.failed_reducers:
                    return
                own = self.flat[piece.start : piece.stop]
                header = encode_tensor(own, self.compressions[piece.tensor])
                request = ReduceRequest(self.roster.group_id, piece.index, self.weight, header)
                self.outcome.bytes_sent += _payload_bytes(header)
                timeout = max(0.01, self.deadline - time.monotonic())
                try:
                    reply = await rpc.call(self.method, request.to_wire(), timeout=timeout)
                    average = parse_reduce_reply(reply, piece.size)
                except (RPCError, MessageError) as exc:
                    self._reducer_failed(reducer, str(exc))
                    return
                self.outcome.bytes_received += _payload_bytes(
                    reply.get("t") if isinstance(reply, dict) else None
                )
                if not plausible_average(average, own, self.settings.plausibility_factor):
                    reason = "implausible average (non-finite or far from every input)"
                    self.outcome.misbehaved[reducer] = reason
                    self._reducer_failed(reducer, reason)
                    return
                self.output[piece.start : piece.stop] = average

        results = await asyncio.gather(*(one(p) for p in pieces), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                logger.error("averaging: sending a piece failed", exc_info=result)

    def _reducer_failed(self, reducer: int, reason: str) -> None:
        if reducer not in self.outcome.failed_reducers:
            logger.info(
                "averaging: part of %s stays local: %s",
                self.roster.members[reducer].node_id.hex()[:8],
                reason,
            )
            self.outcome.failed_reducers[reducer] = reason
            # pieces it already averaged for us keep the average; the rest keep our own values

    async def run(self, link: LinkGetter, link_alive: Callable[[int], bool]) -> RoundOutcome:
        """Send to every other reducer and reduce our part; return by the deadline whatever happened."""
        for j in self._others:
            if j in self.outcome.refused:  # refused from the start: it gets none of our values
                self.outcome.failed_reducers[j] = self.outcome.refused[j]
        sending = {
            j: asyncio.ensure_future(self.send_part(j, link))
            for j in self._others
            if j not in self.outcome.failed_reducers
        }
        senders = list(sending.values())
        self._recheck()  # pieces nobody else contributes to (a group of one, all others refused) finish now
        try:
            while time.monotonic() < self.deadline:
                if all(s.done() for s in senders) and self.reduced:
                    break
                for j in self._others:
                    if (
                        j not in self.outcome.silent
                        and not link_alive(j)
                        and (j in self.outcome.failed_reducers)
                    ):
                        self.mark_silent(j)
                await asyncio.sleep(0.05)
        finally:
            for task in senders:
                task.cancel()
            for task in senders:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for j, task in sending.items():
            if not task.cancelled() and task.exception() is None:
                continue
            self._reducer_failed(j, "deadline passed")
        self.finish_at_deadline()
        return self.outcome


def _payload_bytes(header: Any) -> int:
    if not isinstance(header, dict):
        return 0
    return sum(len(v) for v in header.values() if isinstance(v, bytes))
