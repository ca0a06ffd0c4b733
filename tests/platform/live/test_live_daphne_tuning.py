"""live.daphne_tuning over real TCP: writes sent at once keep Twisted's order, back-pressure and errors.

Each case runs a real Twisted reactor (on uvloop, as live.serve does) in a subprocess, since a reactor
is process-wide state.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PLATFORM = Path(__file__).resolve().parents[3] / "platform"

PUSH_TO_A_SLOW_READER = """
import hashlib, json, socket, threading, time
import live.serve as serve
serve.use_uvloop()
from live import daphne_tuning
assert daphne_tuning.send_writes_at_once()
from twisted.internet import asyncioreactor
asyncioreactor.install()
from twisted.internet import protocol, reactor, tcp

queued = 0
start_writing = tcp.Server.startWriting
def counting_start_writing(self):
    global queued
    queued += 1
    start_writing(self)
tcp.Server.startWriting = counting_start_writing

chunks = [bytes([i % 251]) * (1000 + i) for i in range(3000)]  # ~7.5 MB: more than the socket buffers hold
expected = hashlib.sha256(b"".join(chunks)).hexdigest()

class Pusher(protocol.Protocol):
    def connectionMade(self):
        for chunk in chunks[:100]:  # small writes to a reader that keeps up: sent at once
            self.transport.write(chunk)
        reactor.callLater(0.3, self.rest)
    def rest(self):
        for chunk in chunks[100:]:  # the reader has stopped: partial sends, then Twisted's queue
            self.transport.write(chunk)
        self.transport.loseConnection()  # only after everything queued has gone out

port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(Pusher), interface="127.0.0.1")
result = {}

def reader():
    sock = socket.create_connection(("127.0.0.1", port.getHost().port))
    digest, total = hashlib.sha256(), 0
    first = sock.recv(1 << 20)
    digest.update(first); total += len(first)
    time.sleep(1.0)  # stop reading while the server writes megabytes
    while True:
        data = sock.recv(1 << 16)
        if not data:
            break
        digest.update(data); total += len(data)
    result.update(same=digest.hexdigest() == expected, total=total)
    reactor.callFromThread(reactor.stop)

threading.Thread(target=reader, daemon=True).start()
reactor.callLater(60, reactor.stop)
reactor.run()
print(json.dumps({**result, "writes": len(chunks), "queued": queued}))
"""

WRITE_AFTER_THE_PEER_LEFT = """
import json, socket, threading, time
import live.serve as serve
serve.use_uvloop()
from live import daphne_tuning
assert daphne_tuning.send_writes_at_once()
from twisted.internet import asyncioreactor
asyncioreactor.install()
from twisted.internet import protocol, reactor

events = []

class Writer(protocol.Protocol):
    def connectionMade(self):
        self.transport.stopReading()  # so that only a write can find out that the peer has gone
        reactor.callLater(0.5, self.write_on)
    def write_on(self):
        for _ in range(200):
            self.transport.write(b"x" * 10000)  # the peer has reset the connection meanwhile
        events.append("wrote")
    def connectionLost(self, reason):
        events.append("lost")
        reactor.callLater(0.1, reactor.stop)

port = reactor.listenTCP(0, protocol.ServerFactory.forProtocol(Writer), interface="127.0.0.1")

def leave():
    sock = socket.create_connection(("127.0.0.1", port.getHost().port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00")
    sock.close()  # an RST: the server's next sends fail

threading.Thread(target=leave, daemon=True).start()
reactor.callLater(30, reactor.stop)
reactor.run()
print(json.dumps(events))
"""


def run(script: str) -> object:
    pytest.importorskip("uvloop")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=PLATFORM, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_writes_go_out_at_once_in_order_and_the_rest_through_twisteds_queue() -> None:
    outcome = run(PUSH_TO_A_SLOW_READER)
    assert outcome["same"] and outcome["total"] == sum(1000 + i for i in range(3000))
    # Most writes skipped Twisted's queue, but a full socket buffer still queued (back-pressure kept).
    assert 0 < outcome["queued"] < outcome["writes"] / 2


def test_a_write_to_a_connection_the_peer_reset_is_reported_as_a_lost_connection() -> None:
    assert run(WRITE_AFTER_THE_PEER_LEFT) == ["wrote", "lost"]
