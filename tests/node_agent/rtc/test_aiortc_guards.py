"""Guards for the places where node_agent/rtc patches private parts of aiortc, aioice and pyOpenSSL.

Each test fails loudly when the pinned library changes under a patch: a new reader of the chunk size the
large-chunk transport does not cover, a wrapped method with another signature, a new place that gathers
host candidates or reads DTLS records, a private attribute gone after a real handshake, or another version.
Upgrading aiortc means making these pass again (see `node_agent/rtc/library_versions.py`).
"""

from __future__ import annotations

import ast
import asyncio
import dis
import inspect
import pathlib
import socket
import textwrap
import tomllib
import types
from collections.abc import Iterator
from types import SimpleNamespace

import aioice
import aioice.ice
import aiortc
import aiortc.rtcdtlstransport
import aiortc.rtcsctptransport as sctp_module
import pytest
from OpenSSL import SSL

from node_agent.rtc import large_records, plpmtu, record_probing, sctp_tuning, transmit_shortcut
from node_agent.rtc.config import RTCOptions, apply_process_settings
from node_agent.rtc.fingerprint import check_fingerprint, remote_certificate_der
from node_agent.rtc.host_candidates import original_get_host_addresses
from node_agent.rtc.library_versions import (
    TESTED_VERSIONS,
    UntestedLibraryError,
    check_versions,
    installed_versions,
    require_tested_versions,
)

REPO = pathlib.Path(__file__).resolve().parents[3]


def _package_sources(package: types.ModuleType) -> Iterator[tuple[pathlib.Path, str]]:
    for path in sorted(pathlib.Path(package.__file__).parent.rglob("*.py")):  # type: ignore[arg-type]
        yield path, path.read_text()


def _functions(code: types.CodeType) -> Iterator[types.CodeType]:
    """Every function body compiled inside `code` (class and module bodies left out)."""
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            if const.co_flags & inspect.CO_OPTIMIZED:
                yield const
            yield from _functions(const)


def _readers(package: types.ModuleType, name: str) -> set[str]:
    """`module:qualname` of every function in `package` that reads or calls the global/attribute `name`."""
    found = set()
    for path, source in _package_sources(package):
        for function in _functions(compile(source, str(path), "exec")):
            if name in function.co_names:
                found.add(f"{path.stem}:{function.co_qualname}")
    return found


def _parameters(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


# ---- versions --------------------------------------------------------------------------------------------


def test_installed_versions_are_the_tested_ones_and_pinned_exactly():
    require_tested_versions()
    assert installed_versions() == TESTED_VERSIONS
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    dependencies = pyproject["project"]["dependencies"]
    for name, version in TESTED_VERSIONS.items():
        assert f"{name}=={version}" in dependencies, f"pyproject.toml must pin {name}=={version}"


def test_another_or_a_missing_version_is_refused_with_the_fix():
    newer = dict(TESTED_VERSIONS, aiortc="1.17.0")
    with pytest.raises(UntestedLibraryError, match=r"aiortc 1\.17\.0 \(tested: 1\.16\.0\).*pip install"):
        check_versions(newer)
    with pytest.raises(UntestedLibraryError, match="aioice missing"):
        check_versions(dict(TESTED_VERSIONS, aioice=None))
    check_versions(TESTED_VERSIONS)


# ---- probed record sizes: every reader of the chunk size is rebound, heartbeats are echoed -----------------


def test_every_reader_of_the_chunk_size_is_covered_by_the_probed_transport():
    readers = _readers(aiortc, "USERDATA_MAX_LENGTH")
    covered = {
        f"rtcsctptransport:RTCSctpTransport.{name}"
        for name in (*record_probing.CHUNK_SIZED_METHODS, *record_probing.CHUNK_SIZED_BEFORE_SWITCH)
    }
    assert readers == covered, f"aiortc's readers of USERDATA_MAX_LENGTH changed: {sorted(readers ^ covered)}"
    assert sctp_module.SCTP_MAX_PACKET_LENGTH == plpmtu.BASE_PACKET
    assert plpmtu.user_data_for(plpmtu.BASE_PACKET) == sctp_module.USERDATA_MAX_LENGTH


def test_rebound_methods_are_aiortcs_own_code_seeing_the_connections_chunk_size():
    prober = SimpleNamespace(scope={})
    cls = record_probing.probed_transport_class(prober)  # type: ignore[arg-type]
    assert cls is not None and cls.__bases__ == (sctp_module.RTCSctpTransport,)
    wrapped = {"_t3_expired"}  # reports the loss to the prober after aiortc's own code ran
    for name in record_probing.CHUNK_SIZED_METHODS:
        original = sctp_module.RTCSctpTransport.__dict__[name]
        rebound = cls.__dict__[name]
        if name in wrapped:
            (rebound,) = [
                c.cell_contents
                for c in rebound.__closure__
                if callable(c.cell_contents)
                and getattr(c.cell_contents, "__code__", None) is original.__code__
            ]
        assert rebound.__code__ is original.__code__
        assert inspect.signature(rebound) == inspect.signature(original)
        assert rebound.__globals__ is prober.scope
        for global_name in original.__code__.co_names:
            if global_name in vars(sctp_module):
                assert rebound.__globals__[global_name] is vars(sctp_module)[global_name], global_name
    prober.scope["USERDATA_MAX_LENGTH"] = 4000  # what the prober does: only this connection's copy changes
    assert plpmtu.user_data_for(plpmtu.BASE_PACKET) == sctp_module.USERDATA_MAX_LENGTH


def test_heartbeats_are_echoed_with_their_info_and_unknown_chunks_skipped():
    # aiortc's own, also once `transmit_shortcut` wrapped it
    receive_chunk = transmit_shortcut.original_receive_chunk or sctp_module.RTCSctpTransport._receive_chunk
    assert "heartbeat_ack.params = chunk.params" in inspect.getsource(receive_chunk)
    packet = sctp_module.parse_packet  # unknown chunk types (PAD) are skipped, not refused
    assert "CHUNK_TYPES.get(chunk_type)" in inspect.getsource(packet)
    assert record_probing.PAD_CHUNK_TYPE not in sctp_module.CHUNK_TYPES
    for name in ("_send_chunk", "_receive_chunk"):
        assert _parameters(getattr(sctp_module.RTCSctpTransport, name)) == ["self", "chunk"]
    assert _readers(aiortc, "_srtt") == {
        "rtcsctptransport:RTCSctpTransport.__init__",
        "rtcsctptransport:RTCSctpTransport._update_rto",
    }


# ---- whole-record reads ----------------------------------------------------------------------------------


def test_dtls_records_are_read_only_through_the_session_the_wrapper_swaps():
    source = inspect.getsource(aiortc.rtcdtlstransport)
    tree = ast.parse(source)
    session_assigned_in = set()
    reads = []
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign | ast.AugAssign):
                targets = [node.target]
            if any(ast.unparse(target) == "self._ssl" for target in targets):
                session_assigned_in.add(function.name)
            called = node.func if isinstance(node, ast.Call) else None
            if isinstance(called, ast.Attribute) and called.attr in ("recv", "bio_read"):
                reads.append(ast.unparse(called.value))
    # The session is created in start() (the wrapped method) and nowhere later; reads go through it.
    assert session_assigned_in == {"__init__", "start"}
    assert reads and set(reads) == {"self._ssl"}, reads
    assert _readers(aiortc, "bio_read") == {"rtcdtlstransport:RTCDtlsTransport._write_ssl"}


def test_wrapped_dtls_and_openssl_methods_keep_their_signatures():
    apply_process_settings(RTCOptions.for_loopback())
    start = large_records.original_dtls_start
    assert start is not None and asyncio.iscoroutinefunction(start)
    assert _parameters(start) == ["self", "remoteParameters"]
    assert _parameters(SSL.Connection.recv) == ["self", "bufsiz", "flags"]
    assert inspect.signature(SSL.Connection.recv).parameters["flags"].default is None
    assert _parameters(SSL.Connection.bio_read) == ["self", "bufsiz"]
    certificate = inspect.signature(SSL.Connection.get_peer_certificate).parameters["as_cryptography"]
    assert certificate.kind is inspect.Parameter.KEYWORD_ONLY
    assert not hasattr(SSL.Connection, "__slots__")  # the live session's class can be swapped


# ---- SACK coalescing -------------------------------------------------------------------------------------


def test_sack_wrapper_replaces_the_only_sender_of_sacks_with_the_same_signature():
    apply_process_settings(RTCOptions.for_loopback())
    send_sack = sctp_tuning.original_send_sack
    assert send_sack is not None and asyncio.iscoroutinefunction(send_sack)
    assert _parameters(send_sack) == ["self"]
    assert sctp_module.RTCSctpTransport._send_sack is not send_sack
    # The deferred SACK relies on aiortc sending SACKs from one place, guarded by `_sack_needed`,
    # which the original clears once sent.
    assert _readers(aiortc, "_send_sack") == {"rtcsctptransport:RTCSctpTransport._handle_data"}
    assert "self._sack_needed = False" in inspect.getsource(send_sack)


def test_reassembly_wrappers_replace_the_only_add_and_walk_with_the_same_signatures():
    apply_process_settings(RTCOptions.for_loopback())
    add, pop = sctp_tuning.original_add_chunk, sctp_tuning.original_pop_messages
    assert add is not None and pop is not None and inspect.isgeneratorfunction(pop)
    assert _parameters(add) == ["self", "chunk"] and _parameters(pop) == ["self"]
    assert sctp_module.InboundStream.pop_messages is not pop
    # The shortcut relies on every add being followed by one walk, in `_receive_data_chunk` only, and on
    # aiortc's walk replacing (not mutating in place) the list it delivered from.
    assert _readers(aiortc, "add_chunk") == {"rtcsctptransport:RTCSctpTransport._receive_data_chunk"}
    assert _readers(aiortc, "pop_messages") == {
        "rtcsctptransport:RTCSctpTransport._receive_data_chunk",
        "rtcsctptransport:RTCSctpTransport._receive_forward_tsn_chunk",
    }
    assert "self.reassembly = (" in inspect.getsource(pop)
    assert "self.reassembly.append(chunk)" in inspect.getsource(add)


# ---- host candidates: gathering happens only inside setLocalDescription ----------------------------------


def test_host_addresses_are_asked_only_while_a_peer_connection_sets_its_local_description():
    assert _parameters(original_get_host_addresses()) == ["use_ipv4", "use_ipv6"]
    assert _readers(aioice, "get_host_addresses") == {"ice:Connection.gather_candidates"}
    assert _readers(aiortc, "gather_candidates") == {"rtcicetransport:RTCIceGatherer.gather"}
    gatherer_calls = set()
    for path, source in _package_sources(aiortc):
        for function in ast.walk(ast.parse(source)):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                continue
            for node in ast.walk(function):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "gather"
                    and ast.unparse(node.func.value) != "asyncio"
                ):
                    gatherer_calls.add(f"{path.stem}:{ast.unparse(node)}")
    assert gatherer_calls == {"rtcpeerconnection:t.iceGatherer.gather()"}
    assert _readers(aiortc, "_RTCPeerConnection__gather") == {
        "rtcpeerconnection:RTCPeerConnection.setLocalDescription"
    }
    # HostPeerConnection overrides it with the same parameters.
    assert _parameters(aiortc.RTCPeerConnection.setLocalDescription) == ["self", "sessionDescription"]


# ---- private attributes after a real handshake -----------------------------------------------------------


async def test_private_attributes_the_patches_use_exist_after_a_real_handshake(loopback_pair):
    for pc, remote_sdp in (
        (loopback_pair.offerer, loopback_pair.answer_sdp),
        (loopback_pair.answerer, loopback_pair.offer_sdp),
    ):
        sctp = pc.sctp
        assert type(sctp) is sctp_module.RTCSctpTransport
        assert isinstance(sctp._sack_needed, bool)
        dtls = sctp.transport
        session = dtls._ssl
        assert type(session).__name__ == "WholeRecordConnection"  # swapped in by the wrapped start()
        assert type(session).__bases__ == (SSL.Connection,)
        ice = dtls.transport._connection
        assert isinstance(ice, aioice.ice.Connection)
        assert isinstance(ice._nominated, dict) and ice._nominated
        for pair in ice._nominated.values():
            assert isinstance(pair, aioice.ice.CandidatePair)
            assert isinstance(pair.local_addr, tuple) and isinstance(pair.remote_addr, tuple)
        check_fingerprint(remote_sdp, remote_certificate_der(pc))  # the session the fingerprint check reads
        for port in ("_local_port", "_remote_port", "_remote_verification_tag"):
            assert isinstance(getattr(sctp, port), int)
        sockets = record_probing.path_sockets(pc)
        assert sockets and all(s.family == socket.AF_INET for s in sockets)
        with record_probing.sending_with(sockets, dont_fragment=True):
            assert all(s.getsockopt(socket.IPPROTO_IP, 10) == 3 for s in sockets)  # IP_PMTUDISC_PROBE
        assert all(s.getsockopt(socket.IPPROTO_IP, 10) == 1 for s in sockets)  # the kernel's default again
        prober = record_probing.start_record_probing(pc, record_probing.ProbeSettings())
        assert prober is not None and type(pc.sctp).__name__ == "ProbedSctpTransport"
        prober.scope["USERDATA_MAX_LENGTH"] = plpmtu.user_data_for(plpmtu.MAX_PACKET)
    received = asyncio.get_running_loop().create_future()
    loopback_pair.answer_channel.on("message", received.set_result)
    payload = bytes(range(256)) * 200  # several large chunks
    loopback_pair.offer_channel.send(payload)
    async with asyncio.timeout(10):
        assert await received == payload


# ---- transmit shortcut -----------------------------------------------------------------------------------


def _method_tree(function: object) -> ast.FunctionDef | ast.AsyncFunctionDef:
    (tree,) = ast.parse(textwrap.dedent(inspect.getsource(function))).body  # type: ignore[arg-type]
    assert isinstance(tree, ast.FunctionDef | ast.AsyncFunctionDef)
    return tree


def _assigned(node: ast.AST, attribute: str) -> Iterator[ast.Assign]:
    for child in ast.walk(node):
        if isinstance(child, ast.Assign) and any(
            isinstance(t, ast.Attribute) and t.attr == attribute for t in child.targets
        ):
            yield child


def test_chunks_are_marked_for_retransmission_only_where_the_transmit_shortcut_looks():
    markers = set()
    for path, source in _package_sources(aiortc):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                for method in node.body:
                    if isinstance(method, ast.FunctionDef | ast.AsyncFunctionDef):
                        for assign in _assigned(method, "_retransmit"):
                            if not (isinstance(assign.value, ast.Constant) and assign.value.value is False):
                                markers.add(f"{path.stem}:{node.name}.{method.name}")
    assert markers == {
        "rtcsctptransport:RTCSctpTransport._receive_sack_chunk",  # strikes
        "rtcsctptransport:RTCSctpTransport._t3_expired",
    }
    # strikes happen only for a SACK with gap blocks (which the wrapped _receive_chunk watches)
    (gaps_block,) = [
        node
        for node in ast.walk(_method_tree(sctp_module.RTCSctpTransport._receive_sack_chunk))
        if isinstance(node, ast.If) and ast.unparse(node.test) == "chunk.gaps"
    ]
    assert any(a.value.value is True for a in _assigned(gaps_block, "_retransmit"))  # type: ignore[attr-defined]
    # an expired T3 leaves no handle, and only (re)sending starts one again
    expired = _method_tree(sctp_module.RTCSctpTransport._t3_expired)
    assert ast.unparse(expired.body[0]) == "self._t3_handle = None"
    setters = {
        name
        for name, method in vars(sctp_module.RTCSctpTransport).items()
        if isinstance(method, types.FunctionType) and name != "_transmit"
        for assign in _assigned(_method_tree(method), "_t3_handle")
        if ast.unparse(assign.value) != "None"
    }
    assert setters == {"_t3_start", "_t3_restart"}
    assert _readers(aiortc, "_t3_start") == {"rtcsctptransport:RTCSctpTransport._transmit"}


def test_the_transmit_shortcut_sends_new_data_with_aiortcs_own_statements():
    apply_process_settings(RTCOptions.for_loopback())
    original = transmit_shortcut.original_transmit
    base = sctp_module.RTCSctpTransport
    assert original is not None and base.__dict__[transmit_shortcut.FULL_TRANSMIT] is original
    assert _parameters(original) == ["self"] and asyncio.iscoroutinefunction(original)
    assert _parameters(transmit_shortcut.original_receive_chunk) == ["self", "chunk"]
    # aiortc's `_transmit`: docstring, FORWARD TSN, burst limit, window, the walk (two statements), new data;
    # ours: docstring, the test for a walk (two statements), the same burst limit, the refill, the same window
    # and new data, the flight after sending
    theirs = [ast.dump(node) for node in _method_tree(original).body]
    ours = [ast.dump(node) for node in _method_tree(transmit_shortcut._transmit).body]
    assert len(theirs) == 7 and [ours[3], ours[5], ours[6]] == [theirs[2], theirs[3], theirs[6]]
    walk = ast.unparse(_method_tree(original).body[5])
    assert walk.startswith("for chunk in self._sent_queue:\n    if chunk._retransmit:")
    # the replacement runs in aiortc's namespace and reads nothing else from it
    replacement = base.__dict__["_transmit"]
    assert replacement.__globals__ is vars(sctp_module)
    read = {i.argval for i in dis.get_instructions(replacement) if i.opname == "LOAD_GLOBAL"}
    assert read == {"any", "min", "max", *transmit_shortcut.AIORTC_GLOBALS}  # builtins and aiortc's own
    assert all(name in vars(sctp_module) for name in transmit_shortcut.AIORTC_GLOBALS)
    # a probed connection sees its own chunk size in both halves
    prober = SimpleNamespace(scope={})
    cls = record_probing.probed_transport_class(prober)  # type: ignore[arg-type]
    assert cls is not None
    for name, function in (("_transmit", replacement), (transmit_shortcut.FULL_TRANSMIT, original)):
        assert (
            cls.__dict__[name].__code__ is function.__code__
            and cls.__dict__[name].__globals__ is prober.scope
        )
