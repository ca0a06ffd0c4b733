"""The test harness's side of `rtc_peer.py`: starts lab peers on lab hosts and passes their offers and
answers between them (the signalling), so tests drive real WebRTC connections across the lab's NATs."""

from __future__ import annotations

import itertools
import json
import queue
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tests.netlab.lab import Host


class LabPeer:
    """One `rtc_peer` process on a lab host; its methods block until the peer answers (with a timeout)."""

    def __init__(
        self,
        board: Switchboard,
        host: Host,
        ice_servers: Sequence[str],
        log: Path,
        connect_timeout: float = 20,
    ) -> None:
        self.board = board
        self.host = host
        argv = [sys.executable, "-m", "tests.netlab.rtc_peer", "--connect-timeout", str(connect_timeout)]
        for server in ice_servers:
            argv += ["--ice-server", server]
        self.log = log
        with log.open("wb") as stderr:
            self.process = host.popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True
            )
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        ready: queue.Queue[dict[str, Any]] = queue.Queue()
        self._replies[0] = ready
        self._reader = threading.Thread(target=self._read, name=f"peer-{host.name}", daemon=True)
        self._reader.start()
        self.node_id = str(self._wait(ready, 60, "start")["node_id"])

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            kind = event.get("event")
            if kind == "ready":
                self._replies[0].put(event)
            elif kind in ("offer", "answer"):
                self.board.route(self, event)
            elif "id" in event:
                with self._lock:
                    waiter = self._replies.get(event["id"])
                if waiter is not None:
                    waiter.put(event)

    def _wait(self, waiter: queue.Queue[dict[str, Any]], timeout: float, what: str) -> dict[str, Any]:
        try:
            reply = waiter.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"peer on {self.host.name}: no answer to {what} in {timeout} s\n{self.log_tail()}"
            ) from None
        if "error" in reply:
            raise RuntimeError(
                f"peer on {self.host.name}: {what} failed: {reply['error']}\n{self.log_tail()}"
            )
        return reply

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def write(self, command: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        with self._lock:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()

    def request(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        request_id = next(self.board.ids)
        waiter: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._replies[request_id] = waiter
        self.write({**command, "id": request_id})
        try:
            return self._wait(waiter, timeout, str(command.get("op")))
        finally:
            with self._lock:
                self._replies.pop(request_id, None)

    def connect(self, other: LabPeer, timeout: float = 30) -> dict[str, Any]:
        """Open (or reuse) the pool's link to `other`: seconds taken, the selected path, the chunk size."""
        return self.request({"op": "connect", "peer": other.node_id}, timeout)

    def links(self) -> list[dict[str, Any]]:
        links: list[dict[str, Any]] = self.request({"op": "links"}, 10)["links"]
        return links

    def send(
        self, other: LabPeer, *, size: int, count: int, parallel: int = 1, timeout: float = 120
    ) -> dict[str, Any]:
        """`count` calls carrying `size` bytes each to `other` (answered with the size): throughput."""
        command = {"op": "send", "peer": other.node_id, "size": size, "count": count, "parallel": parallel}
        return self.request(command, timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.write({"op": "quit"})
                self.process.wait(timeout=10)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=5)


class Switchboard:
    """Passes signalling between the lab peers it started (by node id), like a rendezvous server would."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.peers: dict[str, LabPeer] = {}
        self.ids = itertools.count(1)
        self.offers_passed = 0

    def start(self, host: Host, ice_servers: Sequence[str] = (), *, connect_timeout: float = 20) -> LabPeer:
        log = self.workdir / f"rtc-peer-{host.name}-{len(self.peers)}.log"
        peer = LabPeer(self, host, ice_servers, log, connect_timeout)
        self.peers[peer.node_id] = peer
        return peer

    def route(self, sender: LabPeer, event: dict[str, Any]) -> None:
        target = self.peers.get(event.get("to", ""))
        if target is None:
            return  # unknown node: the sender's call times out, as with a peer that is not there
        if event["event"] == "offer":
            self.offers_passed += 1
            target.write({"op": "offer", "from": sender.node_id, "id": event["id"], "name": event["name"],
                          "payload": event["payload"]})  # fmt: skip
        else:
            target.write({"op": "answer", "id": event["id"], "payload": event["payload"]})

    def close(self) -> None:
        for peer in self.peers.values():
            peer.stop()

    def __enter__(self) -> Switchboard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
