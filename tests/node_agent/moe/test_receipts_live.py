"""Receipts over real WebRTC: signed answers, the trainer's receipt handed back, kept by the server."""

from __future__ import annotations

import asyncio
import time

import torch

from node_agent.credit.receipts import decode_receipt
from node_agent.identity import Identity
from node_agent.moe.client import RemoteExpert, get_experts
from node_agent.portal.tokens import issue_credential

PORTAL = Identity.generate()


def _credential(identity: Identity) -> str:
    return issue_credential(
        PORTAL, cid="c-trainer", project="p", user=7, node_public_key=identity.public_key_bytes,
        now=time.time(), ttl=600,
    )  # fmt: skip


async def test_trainer_returns_a_signed_receipt_the_server_keeps(make_expert_server, make_caller):
    server = await make_expert_server("ffn.0.[0:2]", hidden_dim=16)
    trainer = Identity.generate()
    caller = await make_caller(identity=trainer, credential=_credential(trainer), receipt_period=3600.0)
    handles = await asyncio.wrap_future(caller.run(get_experts(caller.dht, ["ffn.0.0", "ffn.0.1"])))
    for handle, batch in zip(handles, (5, 3), strict=True):
        assert handle is not None
        expert = RemoteExpert(handle.uid, handle, caller, timeout=10)
        out = await asyncio.to_thread(expert, torch.randn(batch, 16, requires_grad=True))
        await asyncio.to_thread(out.sum().backward)
    assert caller.unsigned_answers == 0
    await asyncio.to_thread(caller.stop)  # hands back the open minute's receipt

    kept = [decode_receipt(data) for data in server.receipts.peek(10)]
    assert kept, "the server kept no receipt"
    assert sum(r.forward for r in kept) == 8 and sum(r.backward for r in kept) == 8
    assert all(r.signature_valid() and r.trainer == trainer.node_id for r in kept)
    assert all(r.server == server.dht.node_id and r.cid == "c-trainer" for r in kept)
    assert {uid for r in kept for uid in r.uids} == {"ffn.0.0", "ffn.0.1"}


async def test_uncredentialed_trainers_send_no_nonce_and_get_plain_answers(make_expert_server, make_caller):
    server = await make_expert_server("ffn.1", hidden_dim=16)
    caller = await make_caller()
    (handle,) = await asyncio.wrap_future(caller.run(get_experts(caller.dht, ["ffn.1"])))
    await asyncio.wrap_future(caller.forward(handle, [torch.randn(2, 16)], timeout=10))
    assert caller.receipts is None and len(server.receipts) == 0
