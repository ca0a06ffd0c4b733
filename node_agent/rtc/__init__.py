"""WebRTC data path between peers (aiortc): signalling over the DHT, a connection pool, framed RPC.

* `framing`: sans-IO frames (request/response ids, chunking, reassembly, limits).
* `rpc`: request/response over one data channel with back-pressure, timeouts and cancellation.
* `config`: ICE servers, loopback candidates, UDP buffers.
* `fingerprint`: binding the DTLS certificate to the signed SDP.
* `pool`: one peer connection per pair of peers, offers/answers carried by signed DHT RPCs.
"""

from __future__ import annotations
