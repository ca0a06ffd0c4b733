"""Cheaper messages out of Daphne, for portal processes that push to many WebSocket viewers (live.serve).

A hub flush is one small message to each of hundreds of viewers, four times a second. Measured with
cProfile on benchmarks/bench_live.py (1,000 viewers), most of a portal process's time went to three
costs per message that do nothing useful here:

- Twisted queues every write and sends it from a writability callback: the reactor registers the
  socket with the event loop, calls back, sends, and unregisters it (two epoll_ctl calls and a callback
  per message). `send_writes_at_once` sends at once when nothing is queued on the connection and falls
  back to Twisted's own path for the rest (a partial send, an error, TLS, a closing connection), so
  order, back-pressure and error reporting stay Twisted's.
- autobahn formats its debug messages for every frame sent and every connection made (terminal
  colours through click, `pprint` of its whole configuration) even when debug logging is off.
  `plain_autobahn_debug_messages` makes those formatters return plain names: debug output, if ever
  turned on, is still readable, only not coloured or pretty-printed.

Both are applied once, before Daphne starts, and check that the library code they adapt is there.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)


def send_writes_at_once() -> bool:
    """Make writes on Twisted's accepted TCP connections go out at once when nothing is queued."""
    from twisted.internet import abstract, tcp

    queued_write = tcp.Server.write
    if getattr(queued_write, "sends_at_once", False):
        return True
    needed = ("TLS", "connected", "disconnecting", "_writeDisconnected", "dataBuffer", "writeSomeData")
    if not (
        all(hasattr(tcp.Server, name) for name in needed)
        and "_tempDataBuffer" in abstract.FileDescriptor.__init__.__code__.co_names
    ):
        logger.warning("Twisted's TCP connection is not what live.daphne_tuning knows; writes stay queued")
        return False

    def write(self: Any, data: bytes) -> None:
        if (
            type(data) is bytes
            and data
            and not self.TLS
            and self.connected
            and not self.disconnecting
            and not self._writeDisconnected
            and not self._tempDataBuffer
            and not self.dataBuffer
        ):
            sent = self.writeSomeData(data)
            if isinstance(sent, int) and sent >= 0:
                if sent == len(data):
                    return
                data = data[sent:]
            # An error is left to the writability callback, which reports it the way Twisted always does.
        queued_write(self, data)

    write.sends_at_once = True  # type: ignore[attr-defined]  # a marker on the function: "already patched"
    tcp.Server.write = write  # type: ignore[method-assign]  # the patch itself: Twisted has no hook for it
    return True


def _plain_name(obj: Any, *args: Any, **kwargs: Any) -> str:
    return getattr(obj, "__qualname__", None) or str(obj)


def _plain_value(value: Any, *args: Any, **kwargs: Any) -> str:
    return f"{value}"


def plain_autobahn_debug_messages() -> bool:
    """Stop autobahn from colouring and pretty-printing debug messages that nobody logs."""
    import autobahn.twisted.websocket as twisted_websocket
    import autobahn.util
    import autobahn.websocket.protocol as websocket_protocol

    autobahn.util._HAS_CLICK = False  # any formatter we miss: no colours
    patched = False
    for module in (websocket_protocol, twisted_websocket):
        for name, plain in (("hltype", _plain_name), ("hlval", _plain_value), ("pformat", _plain_value)):
            if hasattr(module, name):
                setattr(module, name, plain)
                patched = True
    return patched
