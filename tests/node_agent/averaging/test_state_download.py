"""State download: donor and downloader through msgpack (the wire), hostile donors, decoder fuzzing.

The transport here is the donor's handler behind `wire.pack`/`wire.unpack`, exactly what a data channel
carries; `tests/node_agent/moe/test_replicas.py` runs the same protocol over real WebRTC connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node_agent import wire
from node_agent.averaging.state_download import (
    CLOSE,
    OPEN,
    PART,
    Donor,
    DownloadOptions,
    Manifest,
    StateDonor,
    StateDownloadError,
    StateSchema,
    StateSnapshot,
    TensorEntry,
    decode_state,
    download_newest,
    download_state,
    parse_manifest,
    parse_part,
)
from node_agent.moe.server.backend import OptimizerConfig, create_backends
from node_agent.moe.server.state import apply_expert_state, expert_state, expert_state_schema
from node_agent.rtc.rpc import RPCHandlerError
from tests.node_agent.msgpack_strategies import msgpack_values


def trained_backend(seed: int = 0, steps: int = 3, hidden: int = 32):
    (backend,) = create_backends(["ffn.0"], "ffn", hidden, OptimizerConfig(lr=0.01), seed=seed).values()
    for _ in range(steps):
        x = torch.randn(4, hidden)
        backend.backward([x], [torch.randn(4, hidden)])
    return backend


def wire_call(donor: StateDonor, *, tamper=None):
    """A call function that goes through msgpack like a data channel; `tamper(method, reply)` may lie."""

    async def call(method: str, body: Any, timeout: float) -> Any:
        request = wire.unpack(wire.pack(body), 1 << 26)
        async with asyncio.timeout(timeout):
            reply = await donor.handle(method, request)
        if tamper is not None:
            reply = tamper(method, reply)
        return wire.unpack(wire.pack(reply), 1 << 26)

    return call


def donor_of(backend, **kwargs) -> StateDonor:
    async def snapshot(key: str):
        return expert_state(backend) if key == backend.uid else None

    return StateDonor(snapshot, **kwargs)


async def test_download_restores_parameters_moments_and_step_exactly():
    source, target = trained_backend(seed=1), trained_backend(seed=2, steps=0)
    donor = donor_of(source, part_bytes=4096)  # many parts: the window and reassembly are exercised
    got = await download_state(
        Donor("a", source.steps, wire_call(donor)),
        "ffn.0",
        expert_state_schema(target),
        DownloadOptions(compression="none"),
    )
    assert got.step == 3 and got.bytes > 8 * 4096
    apply_expert_state(target, got.tensors, got.step)
    assert target.steps == 3
    for a, b in zip(source.module.parameters(), target.module.parameters(), strict=True):
        assert torch.equal(a, b)
    x, g = torch.randn(4, 32), torch.randn(4, 32)  # same moments: the next step is identical too
    assert torch.equal(source.backward([x], [g])[0], target.backward([x], [g])[0])
    for a, b in zip(source.module.parameters(), target.module.parameters(), strict=True):
        assert torch.equal(a, b)
    assert donor.stats.completed == 1 and not donor.sessions  # closed after the download


async def test_float16_halves_parameters_and_keeps_moments_exact():
    source, target = trained_backend(seed=1), trained_backend(seed=2, steps=0)
    full = await download_state(
        Donor("a", 3, wire_call(donor_of(source))),
        "ffn.0",
        expert_state_schema(target),
        DownloadOptions(compression="none"),
    )
    half = await download_state(
        Donor("a", 3, wire_call(donor_of(source))), "ffn.0", expert_state_schema(target)
    )
    assert half.bytes < full.bytes
    for name, value in full.tensors.items():
        if name.startswith("optim."):
            assert torch.equal(half.tensors[name], value)
        else:
            assert torch.allclose(half.tensors[name], value, atol=1e-3, rtol=1e-3)


async def test_donor_caps_concurrent_downloads_and_the_downloader_moves_on():
    source = trained_backend(seed=1)
    busy = donor_of(source, max_sessions=1)
    await busy.handle(OPEN, {"key": "ffn.0"})  # someone else holds its only slot
    with pytest.raises(RPCHandlerError) as refused:
        await busy.handle(OPEN, {"key": "ffn.0"})
    assert refused.value.code == "busy" and busy.stats.refused_busy == 1
    free = donor_of(trained_backend(seed=1))
    options = DownloadOptions()
    got = await download_newest(
        [Donor("busy", 3, wire_call(busy)), Donor("free", 3, wire_call(free))],
        "ffn.0",
        expert_state_schema(source),
        options,
    )
    assert got is not None and got.donor == "free"
    assert "busy" in options.failures[0]


async def test_sessions_expire_and_belong_to_their_caller():
    now = [0.0]
    donor = donor_of(trained_backend(), session_ttl=5.0, clock=lambda: now[0])
    manifest = await donor.handle(OPEN, {"key": "ffn.0"})
    await donor.handle(PART, {"sid": manifest["sid"], "index": 0})
    now[0] = 10.0
    with pytest.raises(RPCHandlerError, match="expired"):
        await donor.handle(PART, {"sid": manifest["sid"], "index": 0})
    for body in ({"sid": b"x" * 16, "index": 0}, {"sid": [], "index": 0}, {"sid": manifest["sid"]}):
        with pytest.raises(RPCHandlerError):
            await donor.handle(PART, body)
    with pytest.raises(RPCHandlerError):
        await donor.handle(CLOSE, "not a map")
    with pytest.raises(RPCHandlerError) as unknown:
        await donor.handle(OPEN, {"key": "ffn.9"})
    assert unknown.value.code == "unknown_state"


def _tamper_tensors(change):
    def tamper(method, reply):
        if method == OPEN:
            reply = dict(reply, tensors=change([dict(t) for t in reply["tensors"]]))
        return reply

    return tamper


@pytest.mark.parametrize(
    "tamper, message",
    [
        (_tamper_tensors(lambda ts: [dict(ts[0], shape=[64, 64]), *ts[1:]]), "is not what this state holds"),
        (_tamper_tensors(lambda ts: [*ts, dict(ts[0], name="module.evil")]), "unexpected tensor"),
        (_tamper_tensors(lambda ts: ts[1:]), "missing tensors"),
        (_tamper_tensors(lambda ts: [dict(t, shape=[2**31, 2**31]) for t in ts]), "exceeds"),
        (lambda m, r: dict(r, step=10**6) if m == OPEN else r, "advertised step 3"),
        (lambda m, r: dict(r, step=2) if m == OPEN else r, "advertised step 3"),
        (lambda m, r: dict(r, data=r["data"][:-1]) if m == PART else r, "bytes, expected"),
        (lambda m, r: dict(r, data=b"\xff" * len(r["data"])) if m == PART else r, "NaN"),
        (lambda m, r: dict(r, data=b"\x00\x7c" * (len(r["data"]) // 2)) if m == PART else r, "NaN or inf"),
    ],
)
async def test_hostile_donors_are_refused(tamper, message):
    source = trained_backend(seed=1)
    donor = donor_of(source)
    with pytest.raises(StateDownloadError, match=message):
        await download_state(
            Donor("liar", 3, wire_call(donor, tamper=tamper)), "ffn.0", expert_state_schema(source)
        )
    assert not donor.sessions  # the downloader closed the session it refused


async def test_huge_values_are_refused():
    source = trained_backend(seed=1)
    with torch.no_grad():
        next(source.module.parameters()).mul_(1e9)
    with pytest.raises(StateDownloadError, match="values beyond"):
        await download_state(
            Donor("big", 3, wire_call(donor_of(source))),
            "ffn.0",
            expert_state_schema(source),
            DownloadOptions(compression="none"),
        )


async def test_a_silent_donor_times_out_and_the_next_one_serves():
    source = trained_backend(seed=1)

    async def silent(method: str, body: Any, timeout: float) -> Any:
        async with asyncio.timeout(timeout):
            await asyncio.sleep(3600)

    options = DownloadOptions(first_timeout=0.2)
    got = await download_newest(
        [Donor("silent", 9, silent), Donor("ok", 3, wire_call(donor_of(source)))],
        "ffn.0",
        expert_state_schema(source),
        options,
    )
    assert got is not None and got.donor == "ok" and "silent" in options.failures[0]


async def test_a_donor_claiming_a_far_higher_step_than_the_rest_is_tried_last():
    source = trained_backend(seed=1)
    liar = trained_backend(seed=5)
    liar.steps = 10**9
    got = await download_newest(
        [Donor("liar", 10**9, wire_call(donor_of(liar))), Donor("ok", 3, wire_call(donor_of(source)))],
        "ffn.0",
        expert_state_schema(source),
        DownloadOptions(max_lead=1000),
    )
    assert got is not None and got.donor == "ok"


# ---- decoders under arbitrary input -------------------------------------------------------------------

_SCHEMA_BACKEND = trained_backend(steps=1, hidden=8)
_GOOD = asyncio.run(donor_of(_SCHEMA_BACKEND).handle(OPEN, {"key": "ffn.0"}))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        msgpack_values,
        st.fixed_dictionaries({}, optional={k: msgpack_values | st.just(v) for k, v in _GOOD.items()}),
    )
)
def test_parse_manifest_raises_only_state_download_error(body):
    try:
        manifest = parse_manifest(body, key="ffn.0", max_bytes=1 << 20)
    except StateDownloadError:
        return
    assert manifest.total_bytes <= 1 << 20 and len(manifest.entries) > 0
    with contextlib.suppress(StateDownloadError):
        expert_state_schema(_SCHEMA_BACKEND).check(manifest.entries)


@settings(max_examples=200)
@given(msgpack_values, st.integers(-3, 10))
def test_parse_part_raises_only_state_download_error(body, index):
    manifest = parse_manifest(_GOOD, key="ffn.0")
    try:
        data = parse_part(body, manifest, index)
    except StateDownloadError:
        return
    assert len(data) == manifest.part_length(index)


@settings(max_examples=200)
@given(st.binary(max_size=64), st.sampled_from(["float32", "float16", "int64", "bool", "bfloat16"]))
def test_decode_state_raises_only_state_download_error(data, dtype):
    entry = TensorEntry("module.x", dtype, (len(data) // 4,), "none")
    manifest = Manifest("k", 0, b"s" * 16, 1024, (entry,))
    try:
        tensors = decode_state(manifest, data)
    except StateDownloadError:
        return
    assert tensors["module.x"].shape == (len(data) // 4,)


def test_schema_refuses_duplicates():
    schema = StateSchema({"a": ()}, frozenset())
    entry = TensorEntry("a", "float32", (1,), "none")
    with pytest.raises(StateDownloadError):
        schema.check([entry])
    schema = expert_state_schema(_SCHEMA_BACKEND)
    snapshot: StateSnapshot = expert_state(_SCHEMA_BACKEND)
    name = next(iter(snapshot.tensors))
    good = TensorEntry(name, "float32", tuple(snapshot.tensors[name].shape), "none")
    with pytest.raises(StateDownloadError, match="twice"):
        schema.check([good, good])
