"""A WebRTC peer for the network lab: node_agent's `ConnectionPool` (real aiortc peer connections, STUN and
TURN from `--ice-server`) whose signalling is carried by the test harness instead of the DHT.

The pool needs two things from a DHT node: `register_rpc` (to answer `rtc.offer`) and `call_rpc` (to send
one). `HarnessSignalling` provides both over this process's stdin/stdout as JSON lines, and the harness
(`switchboard.py`) passes offers and answers between peer processes in different namespaces. That isolates
the data path (ICE through the lab's NATs, DTLS, SCTP) from how the offer travels, so the path can be tested
on its own; the agents' real signalling (over the DHT and its relays) is tested end to end elsewhere.

    python -m tests.netlab.rtc_peer [--ice-server URL]...

stdin commands: {"op": "connect", "peer": hex, "id": n}, {"op": "send", "peer": hex, "id": n, "size": bytes,
"count": calls, "parallel": k}, {"op": "links", "id": n}, {"op": "offer"|"answer", ...} (signalling), and
{"op": "quit"}. Events on stdout: {"event": "ready", "node_id": hex}, replies carrying the command's id, and
{"event": "offer"|"answer", ...} for the harness to pass on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from typing import Any

from node_agent.dht.api import DHTTimeoutError, PeerInfo, RPCHandler
from node_agent.identity import Identity
from node_agent.rtc.config import RTCOptions, parse_ice_server
from node_agent.rtc.paths import selected_path
from node_agent.rtc.pool import ConnectionPool, PeerLink
from node_agent.rtc.record_probing import sctp_chunk_size

SIGNALLING_ENDPOINT = "harness:1"


def emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


class HarnessSignalling:
    """The two DHT-node methods `ConnectionPool` uses, carried over stdin/stdout by the harness."""

    def __init__(self, identity: Identity) -> None:
        self.identity = identity
        self.handlers: dict[str, RPCHandler] = {}
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0

    def register_rpc(self, name: str, handler: RPCHandler) -> None:
        self.handlers[name] = handler

    async def call_rpc(
        self,
        endpoint: str,
        name: str,
        payload: dict[str, Any],
        timeout: float,
        expected_node_id: bytes | None = None,
    ) -> tuple[PeerInfo, dict[str, Any]]:
        if expected_node_id is None:
            raise DHTTimeoutError("the harness routes by node id only")
        self._next_id += 1
        request_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        emit(
            {
                "event": "offer",
                "to": expected_node_id.hex(),
                "id": request_id,
                "name": name,
                "payload": payload,
            }
        )
        try:
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError:
            raise DHTTimeoutError(
                f"no answer from {expected_node_id.hex()[:8]} through the harness"
            ) from None
        finally:
            self._pending.pop(request_id, None)
        return PeerInfo(expected_node_id, b"", SIGNALLING_ENDPOINT), reply

    def answered(self, request_id: int, payload: dict[str, Any]) -> None:
        future = self._pending.get(request_id)
        if future is not None and not future.done():
            future.set_result(payload)

    async def offered(self, sender: bytes, name: str, payload: dict[str, Any]) -> dict[str, Any]:
        handler = self.handlers.get(name)
        if handler is None:
            return {"refused": f"no handler for {name}"}
        return await handler(PeerInfo(sender, b"", SIGNALLING_ENDPOINT), payload)


async def serve_call(method: str, body: Any) -> Any:
    """What this peer serves on its data channel: `sink` counts the bytes it got (upload throughput)."""
    if method == "sink":
        return len(body) if isinstance(body, bytes | bytearray) else 0
    if method == "echo":
        return body
    raise ValueError(f"unknown method {method!r}")


def describe_link(link: PeerLink) -> dict[str, Any]:
    path = selected_path(link.peer_connection)
    return {
        "peer": link.node_id.hex(),
        "outbound": link.outbound,
        "path": None
        if path is None
        else {
            "local_type": path.local_type,
            "local": list(path.local_address),
            "remote_type": path.remote_type,
            "remote": list(path.remote_address),
            "relayed": path.relayed,
        },
        "chunk_size": sctp_chunk_size(link.peer_connection),
    }


async def send_calls(
    pool: ConnectionPool, peer: bytes, size: int, count: int, parallel: int
) -> dict[str, Any]:
    link = await pool.connect(peer, SIGNALLING_ENDPOINT)
    body = b"\x5a" * size
    queue = list(range(count))
    answered = 0

    async def worker() -> None:
        nonlocal answered
        while queue:
            queue.pop()
            if await link.rpc.call("sink", body, timeout=60) == size:
                answered += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(parallel)))
    seconds = time.monotonic() - started
    return {"answered": answered, "seconds": seconds, "mb_per_s": answered * size / seconds / 1e6}


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests.netlab.rtc_peer")
    parser.add_argument("--ice-server", action="append", default=[])
    parser.add_argument("--connect-timeout", type=float, default=20)
    args = parser.parse_args(argv)
    identity = Identity.generate()
    signalling = HarnessSignalling(identity)
    options = RTCOptions(
        ice_servers=tuple(parse_ice_server(text) for text in args.ice_server),
        connect_timeout=args.connect_timeout,
    )
    pool = await ConnectionPool.create(signalling, serve_call, options)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    emit({"event": "ready", "node_id": identity.node_id.hex()})
    tasks: set[asyncio.Task[None]] = set()

    async def run(command: dict[str, Any]) -> None:
        op, request_id = command.get("op"), command.get("id")
        try:
            if op == "connect":
                started = time.monotonic()
                link = await pool.connect(bytes.fromhex(command["peer"]), SIGNALLING_ENDPOINT)
                emit({"id": request_id, "seconds": time.monotonic() - started, **describe_link(link)})
            elif op == "send":
                result = await send_calls(
                    pool,
                    bytes.fromhex(command["peer"]),
                    command["size"],
                    command["count"],
                    command["parallel"],
                )
                emit({"id": request_id, **result})
            elif op == "links":
                emit({"id": request_id, "links": [describe_link(link) for link in pool.links]})
            elif op == "offer":
                reply = await signalling.offered(
                    bytes.fromhex(command["from"]), command["name"], command["payload"]
                )
                emit({"event": "answer", "to": command["from"], "id": request_id, "payload": reply})
        except Exception as exc:  # reported to the harness, which fails the test with it
            emit({"id": request_id, "error": f"{type(exc).__name__}: {exc}"})

    while line := await reader.readline():
        command = json.loads(line)
        if command.get("op") == "quit":
            break
        if command.get("op") == "answer":
            signalling.answered(command["id"], command["payload"])
            continue
        task = asyncio.create_task(run(command))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await pool.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    asyncio.run(main())
