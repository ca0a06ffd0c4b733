"""One viewer's outgoing stream: sequence numbers and holding diffs back until its snapshot is out. Pure.

A viewer is registered with its project's hub before its snapshot is read, so no change can slip between
the read and the first diff; flushes that arrive meanwhile are held and sent right after the snapshot
(diffs are idempotent, so one already contained in the snapshot does no harm). If too many pile up the
held diffs are dropped and a fresh snapshot is asked for instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from live.protocol import encode_with_seq

MAX_HELD_FLUSHES = 64


@dataclass
class ViewerStream:
    seq: int = 0
    ready: bool = False
    overflowed: bool = False
    max_held: int = MAX_HELD_FLUSHES
    _held: list[tuple[str, str]] = field(default_factory=list)

    def _stamp(self, kind: str, body: str) -> str:
        self.seq += 1
        return encode_with_seq(kind, self.seq, body)

    def on_flush(self, kind: str, body: str) -> list[str]:
        """Texts to send now for one hub flush (none while a snapshot is being prepared)."""
        if self.ready:
            return [self._stamp(kind, body)]
        if len(self._held) >= self.max_held:
            self._held.clear()
            self.overflowed = True
        else:
            self._held.append((kind, body))
        return []

    def begin_snapshot(self) -> None:
        """Hold flushes from now until `on_snapshot` (a resync, or the first snapshot)."""
        self.ready = False
        self._held.clear()
        self.overflowed = False

    def on_snapshot(self, body: str) -> list[str]:
        """The snapshot, then every flush held while it was read, in order."""
        texts = [self._stamp("swarm.snapshot", body)]
        texts.extend(self._stamp(kind, held) for kind, held in self._held)
        self._held.clear()
        self.ready = True
        return texts
