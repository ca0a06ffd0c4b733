"""Contract for calling remote experts (Learning@home, Ryabinin & Gusev 2020, section 3).

Trainer code (the MoE layer) builds on these names only; `node_agent.moe.client` implements them:

* `ExpertHandle(uid, node_id, endpoint)`: where one replica of an expert lives. `endpoint` is the server's
  DHT endpoint ("host:port"); the WebRTC connection to it is signalled through the DHT.
* `ExpertCaller` (in `client`): one per trainer process. Owns a background event-loop thread, a client-mode
  `DHTNode` (`.dht`) and the WebRTC connection pool. Thread-safe, returns `concurrent.futures.Future`s::

      with ExpertCaller.start(initial_peers=["127.0.0.1:4000"]) as caller:
          handles = caller.run(get_experts(caller.dht, ["ffn.0.1"])).result()
          out = caller.forward(handles[0], [x], timeout=5.0).result()
          grads = caller.backward(handles[0], [x], [grad_out], timeout=5.0).result()
          schema = caller.info(handles[0], timeout=5.0).result()

* `RemoteExpert(uid, peer, caller)` (in `client`): an `nn.Module` whose forward/backward go over the
  data channel through a `torch.autograd.Function`. The server applies its optimiser step on backward and
  returns gradients w.r.t. the inputs only.
* `get_experts(dht, uids) -> list[ExpertHandle | None]` (async, in `client`): resolves uids via the DHT
  (announcement format: `node_agent.moe.announce`).

Every failure of a call is an `ExpertError`; the MoE layer masks out experts that raise one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "ExpertError",
    "ExpertHandle",
    "ExpertProtocolError",
    "ExpertTimeoutError",
    "ExpertUnavailableError",
]


@dataclass(frozen=True, slots=True)
class ExpertHandle:
    """One replica of one expert: uid, the hosting node's id and its DHT endpoint ("host:port").

    `relays` ("host:port/<relay id hex>"): where to send the connection offer when the host announced it is
    unreachable from outside (`node_agent.dht.nat`); not part of the handle's identity.
    """

    uid: str
    node_id: bytes
    endpoint: str
    relays: tuple[str, ...] = field(default=(), compare=False)


class ExpertError(Exception):
    """Base class: any failure of a remote expert call. Callers treat the expert as dead for this step."""


class ExpertTimeoutError(ExpertError):
    """The call (or the connection set-up it needed) did not finish within its timeout."""


class ExpertUnavailableError(ExpertError):
    """The peer could not be reached, the connection dropped mid-call, or the server does not host the uid."""


class ExpertProtocolError(ExpertError):
    """The reply was malformed (bad frame, wrong shape/dtype, NaN) or the server reported an error."""
