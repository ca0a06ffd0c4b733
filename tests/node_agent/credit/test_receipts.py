"""Signed answers, receipts, the trainer's book and the server's store (pure; hostile bytes included)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.credit.receipts import (
    MAX_RECEIPT_BYTES,
    MAX_UIDS,
    Receipt,
    ReceiptBook,
    ReceiptError,
    ReceiptStore,
    answer_digest,
    decode_receipt,
    encode_receipt,
    receipt_from_text,
    receipt_to_text,
    sign_answer,
    verify_answer,
)
from node_agent.identity import Identity
from node_agent.wire import pack
from tests.node_agent.msgpack_strategies import msgpack_values

TRAINER = Identity.generate()
SERVER = Identity.generate()
NONCES = [bytes([i]) * 16 for i in range(8)]


def _book_receipt(minute_time: float = 600.0) -> Receipt:
    book = ReceiptBook(TRAINER, "cid-1")
    for index, kind in enumerate(["forward", "backward", "forward"]):
        sig = sign_answer(SERVER, NONCES[index], "ffn.0", kind, 4, b"d" * 32)
        book.record(SERVER.node_id, "ffn.0", kind, 4, NONCES[index], sig, minute_time + index)
    (receipt,) = book.take_all()
    return receipt


def test_answer_signature_binds_every_field():
    digest = answer_digest([{"data": b"xyz"}])
    sig = sign_answer(SERVER, NONCES[0], "ffn.1", "forward", 3, digest)
    assert verify_answer(SERVER.public_key_bytes, NONCES[0], "ffn.1", "forward", 3, digest, sig)
    changed = [
        (TRAINER.public_key_bytes, NONCES[0], "ffn.1", "forward", 3, digest),
        (SERVER.public_key_bytes, NONCES[1], "ffn.1", "forward", 3, digest),
        (SERVER.public_key_bytes, NONCES[0], "ffn.2", "forward", 3, digest),
        (SERVER.public_key_bytes, NONCES[0], "ffn.1", "backward", 3, digest),
        (SERVER.public_key_bytes, NONCES[0], "ffn.1", "forward", 30, digest),
        (SERVER.public_key_bytes, NONCES[0], "ffn.1", "forward", 3, answer_digest([{"data": b"xyw"}])),
    ]
    for args in changed:
        assert not verify_answer(*args, sig)
    assert not verify_answer(SERVER.public_key_bytes, NONCES[0], "ffn.1", "forward", 3, digest, b"short")


def test_book_makes_one_cumulative_receipt_per_server_and_minute():
    book = ReceiptBook(TRAINER, "cid-1")
    other = Identity.generate()
    for index, (server, now) in enumerate([(SERVER, 60.0), (SERVER, 70.0), (other, 80.0), (SERVER, 125.0)]):
        sig = sign_answer(server, NONCES[index], f"ffn.{index}", "forward", 2, b"d" * 32)
        book.record(server.node_id, f"ffn.{index}", "forward", 2, NONCES[index], sig, now)
    closed = book.take_closed(now=130.0)  # minute 1 closed, minute 2 still open
    assert sorted((r.server, r.minute, r.forward, r.answers) for r in closed) == sorted(
        [(SERVER.node_id, 1, 4, 2), (other.node_id, 1, 2, 1)]
    )
    first = next(r for r in closed if r.server == SERVER.node_id)
    assert (first.first_nonce, first.last_nonce, first.uids) == (NONCES[0], NONCES[1], ("ffn.0", "ffn.1"))
    assert all(r.signature_valid() and r.trainer == TRAINER.node_id for r in closed)
    assert book.take_closed(now=130.0) == []
    assert [r.minute for r in book.take_all()] == [2]


def test_receipt_round_trips_and_stays_small():
    receipt = _book_receipt()
    data = encode_receipt(receipt)
    assert decode_receipt(data) == receipt
    assert decode_receipt(receipt_from_text(receipt_to_text(data))) == receipt
    assert len(receipt_to_text(data)) < 500  # a server's minute of work from one trainer
    assert (receipt.forward, receipt.backward, receipt.answers) == (8, 4, 3)


def test_forged_or_altered_receipts_fail_the_signature():
    receipt = _book_receipt()
    inflated = dataclasses.replace(receipt, forward=receipt.forward * 100)
    assert not inflated.signature_valid()
    forged = dataclasses.replace(receipt, trainer_key=Identity.generate().public_key_bytes)
    assert not forged.signature_valid()


def test_store_keeps_only_valid_receipts_of_the_caller_for_this_server():
    store = ReceiptStore(SERVER.node_id, capacity=2)
    receipt = _book_receipt()
    now = 700.0
    data = encode_receipt(receipt)
    refusals = {
        "wrong_trainer": (data, Identity.generate().node_id),
        "wrong_server": (encode_receipt(dataclasses.replace(receipt, server=b"x" * 20)), TRAINER.node_id),
        "bad_signature": (encode_receipt(dataclasses.replace(receipt, backward=99)), TRAINER.node_id),
        "malformed": (b"\xc1", TRAINER.node_id),
        "clock": (encode_receipt(_book_receipt(now + 600.0)), TRAINER.node_id),
    }
    for reason, (body, caller) in refusals.items():
        with pytest.raises(ReceiptError) as info:
            store.add(body, caller, now)
        assert info.value.reason == reason
    store.add(data, TRAINER.node_id, now)
    with pytest.raises(ReceiptError, match="duplicate"):
        store.add(data, TRAINER.node_id, now)
    assert store.peek(10) == [data] and store.refused == 6
    store.acknowledge([data])
    assert len(store) == 0
    for minute in (1, 2, 3):  # bounded: the oldest goes first
        store.add(encode_receipt(_book_receipt(minute * 60.0)), TRAINER.node_id, now)
    assert len(store) == 2 and store.evicted == 1


def test_one_trainer_cannot_push_out_the_others():
    store = ReceiptStore(SERVER.node_id, capacity=100, per_trainer=3)
    for minute in range(1, 5):
        body = encode_receipt(_book_receipt(minute * 60.0))
        if minute <= 3:
            store.add(body, TRAINER.node_id, 400.0)
        else:
            with pytest.raises(ReceiptError, match="too_many"):
                store.add(body, TRAINER.node_id, 400.0)
    store.acknowledge(store.peek(1))
    store.add(encode_receipt(_book_receipt(4 * 60.0)), TRAINER.node_id, 400.0)  # room again
    assert len(store) == 3


def test_uids_are_capped_but_counts_are_not():
    book = ReceiptBook(TRAINER, "cid-1")
    for index in range(MAX_UIDS + 5):
        book.record(SERVER.node_id, f"ffn.{index}", "forward", 1, NONCES[0], b"s" * 64, 60.0)
    (receipt,) = book.take_all()
    assert len(receipt.uids) == MAX_UIDS and receipt.forward == MAX_UIDS + 5
    assert len(encode_receipt(receipt)) <= MAX_RECEIPT_BYTES


@settings(max_examples=60, deadline=None)
@given(msgpack_values)
def test_decoder_refuses_arbitrary_msgpack_cleanly(value):
    with pytest.raises(ReceiptError):
        decode_receipt(pack(value))


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=2 * MAX_RECEIPT_BYTES))
def test_decoder_refuses_arbitrary_bytes_cleanly(data):
    """Only ReceiptError escapes (never a crash of another type)."""
    try:
        receipt = decode_receipt(data)
    except ReceiptError:
        return
    assert isinstance(receipt, Receipt)


_VALID = {
    "v": 1, "c": "cid", "k": b"k" * 32, "s": b"s" * 20, "m": 5, "u": ["ffn.0"], "f": 1, "b": 0, "n": 1,
    "a": b"a" * 16, "z": b"z" * 16, "h": b"h" * 32, "sig": b"g" * 64,
}  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(sorted(_VALID)), msgpack_values)
def test_decoder_checks_every_field(name, value):
    """One field replaced by anything: either still a valid shape or a clean ReceiptError."""
    try:
        receipt = decode_receipt(pack({**_VALID, name: value}))
    except ReceiptError:
        return
    assert isinstance(receipt, Receipt)
    assert decode_receipt(encode_receipt(receipt)) == receipt


@given(st.text(max_size=50))
def test_text_decoder_refuses_non_base64url(text):
    try:
        data = receipt_from_text(text)
    except ReceiptError:
        return
    assert isinstance(data, bytes) and len(data) <= len(text)
