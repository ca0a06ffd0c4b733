"""coturn (Debian's `turnserver`) configured for the lab: STUN and TURN over UDP and TCP on one address,
short-lived REST-style credentials from a shared secret, no TLS/DTLS, relays only towards the lab's range."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path

TURN_PORT = 3478
RELAY_PORTS = (49152, 49999)
REALM = "colearn.lab"


@dataclass(frozen=True)
class TurnServer:
    """Where the lab's coturn listens and the secret it checks credentials against."""

    address: str
    port: int
    secret: str
    realm: str = REALM

    @property
    def stun_url(self) -> str:
        return f"stun:{self.address}:{self.port}"

    @property
    def turn_url(self) -> str:
        return f"turn:{self.address}:{self.port}"

    def credentials(self, user: str, *, ttl_s: int = 600, now: float | None = None) -> tuple[str, str]:
        """A (username, password) pair in coturn's REST scheme, valid `ttl_s` seconds from `now` (negative
        `ttl_s`: already expired). Written here independently of the portal's issuer, so tests cross-check."""
        expiry = int(time.time() if now is None else now) + ttl_s
        username = f"{expiry}:{user}"
        digest = hmac.new(self.secret.encode(), username.encode(), hashlib.sha1).digest()
        return username, base64.b64encode(digest).decode()


def coturn_config(address: str, secret: str, *, peer_network: str, workdir: Path, realm: str = REALM) -> str:
    """turnserver.conf text: listen and relay on `address`, relay only to `peer_network` (the lab's public
    range; coturn refuses private peer addresses unless allowed), log and state under `workdir`."""
    network = ipaddress.ip_network(peer_network)
    low, high = network[0], network[-1]
    return "\n".join(
        [
            f"listening-ip={address}",
            f"relay-ip={address}",
            f"listening-port={TURN_PORT}",
            f"min-port={RELAY_PORTS[0]}",
            f"max-port={RELAY_PORTS[1]}",
            f"realm={realm}",
            "use-auth-secret",
            f"static-auth-secret={secret}",
            f"allowed-peer-ip={low}-{high}",
            "no-tls",
            "no-dtls",
            "no-cli",
            "fingerprint",
            "no-multicast-peers",
            "simple-log",
            f"log-file={workdir / 'turnserver.log'}",
            f"pidfile={workdir / 'turnserver.pid'}",
            f"userdb={workdir / 'turndb.sqlite'}",
            "",
        ]
    )
