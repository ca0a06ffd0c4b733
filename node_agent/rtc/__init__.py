"""WebRTC data path between peers (aiortc): signalling over the DHT, a connection pool, framed RPC.

* `framing`: sans-IO frames (request/response ids, chunking, reassembly, limits).
* `rpc`: request/response over one data channel with back-pressure, timeouts and cancellation.
* `config`: ICE servers, loopback candidates, UDP buffers.
* `host_candidates`: which host addresses one peer connection offers (per connection, not per process).
* `library_versions`: the exact aiortc/aioice/pyOpenSSL versions the patches below were tested with.
* `sctp_tuning`: patches of aiortc's SCTP for fewer SACKs and no reassembly walk per fragment.
* `transmit_shortcut`: aiortc's `_transmit` without its walk of the sent queue when nothing can be marked, and
  with a burst that refills what coalesced SACKs acknowledged (so the window opens).
* `plpmtu` (pure), `record_probing`, `large_records`: the largest SCTP packet each path carries, probed
  (RFC 8899) and used; whole DTLS records read on receipt.
* `fingerprint`: binding the DTLS certificate to the signed SDP.
* `pool`: one peer connection per pair of peers, offers/answers carried by signed DHT RPCs.
"""

from __future__ import annotations
