"""Small network probes the lab runs inside its namespaces (`python -m tests.netlab.probes <command>`;
`tools.py` runs them on lab hosts). Every command prints JSON lines and every wait is bounded.

    stun SERVER PORT                   one STUN binding request: the address the server observed
    turn-allocate SERVER PORT USER PASSWORD
                                       a TURN Allocate with long-term credentials: relayed address or error
    udp-reflect PORT                   answer each datagram with the sender's address (a "cross" datagram is
                                       also answered from PORT+1 and from a new socket: unsolicited traffic)
    udp-probe TARGET... --listen S     from one socket: the address each target observed, then what else came
    udp-send HOST PORT                 a few datagrams to HOST:PORT from a fresh socket
    tcp-sink PORT                      count the bytes of each connection: {"bytes", "seconds"} at its end
    tcp-send HOST PORT SECONDS         send as fast as possible for SECONDS
    tcp-source PORT SECONDS            accept one connection and send to it as fast as possible for SECONDS
    tcp-drain HOST PORT                connect and count what arrives: {"bytes", "seconds"}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import time
from typing import Any

_DATAGRAM = 2048


def _print(obj: object) -> None:
    print(json.dumps(obj), flush=True)


# -- STUN / TURN ---------------------------------------------------------------------------------------------
def _transact(sock: socket.socket, request: Any, server: tuple[str, int], timeout: float) -> Any:
    """Send a STUN request (retrying every 0.3 s) until its answer arrives; None after `timeout` seconds."""
    from aioice import stun

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.sendto(bytes(request), server)
        sock.settimeout(min(0.3, max(0.01, deadline - time.monotonic())))
        try:
            data, _ = sock.recvfrom(_DATAGRAM)
        except TimeoutError:
            continue
        try:
            response = stun.parse_message(data)
        except ValueError:
            continue
        if response.transaction_id == request.transaction_id:
            return response
    return None


def stun_command(server: str, port: int, timeout: float) -> dict[str, Any]:
    from aioice import stun

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
        response = _transact(sock, request, (server, port), timeout)
        if response is None:
            return {"error": "timeout"}
        mapped = response.attributes.get("XOR-MAPPED-ADDRESS")
        return {"mapped": list(mapped) if mapped else None, "local": list(sock.getsockname())}


def turn_allocate_command(server: str, port: int, user: str, password: str, timeout: float) -> dict[str, Any]:
    """RFC 5766 Allocate: the unauthenticated request earns a nonce, the signed one a relay or an error."""
    from aioice import stun

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:

        def allocate(**attributes: Any) -> Any:
            request = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
            request.attributes["LIFETIME"] = 60
            request.attributes["REQUESTED-TRANSPORT"] = 0x11000000  # UDP
            request.attributes.update(attributes)
            if "USERNAME" in attributes:
                key = hashlib.md5(f"{user}:{attributes['REALM']}:{password}".encode()).digest()
                request.add_message_integrity(key)
                request.add_fingerprint()
            return _transact(sock, request, (server, port), timeout)

        challenge = allocate()
        if challenge is None:
            return {"error": "timeout"}
        realm, nonce = challenge.attributes.get("REALM"), challenge.attributes.get("NONCE")
        if realm is None or nonce is None:
            return {"error": f"no challenge: {challenge.attributes.get('ERROR-CODE')}"}
        response = allocate(USERNAME=user, REALM=realm, NONCE=nonce)
        if response is None:
            return {"error": "timeout"}
        if response.message_class == stun.Class.RESPONSE:
            return {"relayed": list(response.attributes["XOR-RELAYED-ADDRESS"])}
        code = response.attributes.get("ERROR-CODE")
        return {"error": list(code) if code else "error response"}


# -- UDP mapping and filtering -------------------------------------------------------------------------------
def udp_reflect_command(port: int) -> None:
    main = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    main.bind(("0.0.0.0", port))
    other_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other_port.bind(("0.0.0.0", port + 1))
    _print({"listening": port})
    while True:
        data, sender = main.recvfrom(_DATAGRAM)
        answer = json.dumps({"observed": list(sender)}).encode()
        main.sendto(answer, sender)
        if data == b"cross":  # what an unsolicited peer would send to the observed mapping
            other_port.sendto(b"from-other-port", sender)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as fresh:
                fresh.sendto(b"from-fresh-socket", sender)


def udp_probe_command(targets: list[tuple[str, int]], listen: float) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("0.0.0.0", 0))
        observed = []
        for target in targets:
            answer = None
            deadline = time.monotonic() + 5
            while answer is None and time.monotonic() < deadline:
                sock.sendto(b"map", target)
                sock.settimeout(0.3)
                try:
                    data, sender = sock.recvfrom(_DATAGRAM)
                except TimeoutError:
                    continue
                if sender == target:
                    answer = json.loads(data)["observed"]
            observed.append(answer)
        _print({"local_port": sock.getsockname()[1], "observed": observed})
        sock.sendto(b"cross", targets[0])
        unexpected, answered = [], 0
        deadline = time.monotonic() + listen
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, sender = sock.recvfrom(_DATAGRAM)
            except TimeoutError:
                break
            if sender in targets:
                answered += 1
            else:
                unexpected.append([sender[0], sender[1], data.decode(errors="replace")])
        _print({"answers_after_cross": answered, "unexpected": unexpected})


def udp_send_command(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(5):
            sock.sendto(b"unsolicited", (host, port))
            time.sleep(0.05)


# -- TCP throughput ------------------------------------------------------------------------------------------
def _count(conn: socket.socket) -> dict[str, float]:
    """Read `conn` to its end: bytes and seconds from the first byte to the end (the rate the link gave)."""
    total, first = 0, None
    while chunk := conn.recv(1 << 16):
        first = first or time.monotonic()
        total += len(chunk)
    return {"bytes": total, "seconds": time.monotonic() - first if first else 0.0}


def _send_for(conn: socket.socket, seconds: float) -> None:
    payload = b"\0" * (1 << 16)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        conn.sendall(payload)


def tcp_sink_command(port: int) -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", port))
        server.listen()
        _print({"listening": port})
        while True:
            conn, _ = server.accept()
            with conn:
                _print(_count(conn))


def tcp_send_command(host: str, port: int, seconds: float) -> None:
    with socket.create_connection((host, port), timeout=10) as conn:
        _send_for(conn, seconds)


def tcp_source_command(port: int, seconds: float) -> None:
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", port))
        server.listen()
        server.settimeout(30)
        _print({"listening": port})
        conn, _ = server.accept()
        with conn:
            conn.settimeout(30)
            _send_for(conn, seconds)


def tcp_drain_command(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.settimeout(30)
        _print(_count(conn))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests.netlab.probes")
    commands = parser.add_subparsers(dest="command", required=True)
    stun_parser = commands.add_parser("stun")
    stun_parser.add_argument("server")
    stun_parser.add_argument("port", type=int)
    stun_parser.add_argument("--timeout", type=float, default=5)
    turn = commands.add_parser("turn-allocate")
    for name in ("server", "port", "user", "password"):
        turn.add_argument(name, type=int if name == "port" else str)
    commands.add_parser("udp-reflect").add_argument("port", type=int)
    probe = commands.add_parser("udp-probe")
    probe.add_argument("targets", nargs="+")
    probe.add_argument("--listen", type=float, default=2)
    send = commands.add_parser("udp-send")
    send.add_argument("host")
    send.add_argument("port", type=int)
    commands.add_parser("tcp-sink").add_argument("port", type=int)
    tcp_send = commands.add_parser("tcp-send")
    tcp_send.add_argument("host")
    tcp_send.add_argument("port", type=int)
    tcp_send.add_argument("seconds", type=float)
    source = commands.add_parser("tcp-source")
    source.add_argument("port", type=int)
    source.add_argument("seconds", type=float)
    drain = commands.add_parser("tcp-drain")
    drain.add_argument("host")
    drain.add_argument("port", type=int)
    args = parser.parse_args(argv)
    if args.command == "stun":
        _print(stun_command(args.server, args.port, args.timeout))
    elif args.command == "turn-allocate":
        _print(turn_allocate_command(args.server, args.port, args.user, args.password, timeout=10))
    elif args.command == "udp-reflect":
        udp_reflect_command(args.port)
    elif args.command == "udp-probe":
        targets = [(host, int(port)) for host, _, port in (t.rpartition(":") for t in args.targets)]
        udp_probe_command(targets, args.listen)
    elif args.command == "udp-send":
        udp_send_command(args.host, args.port)
    elif args.command == "tcp-sink":
        tcp_sink_command(args.port)
    elif args.command == "tcp-send":
        tcp_send_command(args.host, args.port, args.seconds)
    elif args.command == "tcp-source":
        tcp_source_command(args.port, args.seconds)
    elif args.command == "tcp-drain":
        tcp_drain_command(args.host, args.port)


if __name__ == "__main__":
    main()
