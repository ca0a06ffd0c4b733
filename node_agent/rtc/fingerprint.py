"""Binding a WebRTC connection to a DHT identity through the DTLS certificate fingerprint.

The SDP offer and answer travel inside DHT RPCs signed by each node's Ed25519 key, so the
`a=fingerprint` lines (RFC 8122 section 5) they carry are vouched for by the peer's node id. After the
DTLS handshake we compare the certificate the remote actually presented with the fingerprint in the SDP
it signed, and drop the connection on any mismatch (RFC 8827 section 6.5: identity bound to the DTLS key).
aiortc performs a similar check against the SDP it was handed; ours is against the signed copy, so a
bug or a substitution between signalling and aiortc cannot go unnoticed.
"""

from __future__ import annotations

import hmac
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # aiortc loads only when a connection is made
    from aiortc import RTCPeerConnection

_FINGERPRINT_RE = re.compile(r"^a=fingerprint:(\S+) ([0-9A-Fa-f:]+)\s*$", re.MULTILINE)
SUPPORTED_ALGORITHMS = ("sha-256", "sha-384", "sha-512")


class FingerprintMismatchError(Exception):
    """The remote presented a DTLS certificate other than the one its signed SDP announced."""


def sdp_fingerprints(sdp: str) -> list[tuple[str, str]]:
    """All `(algorithm, HEX:PAIRS)` fingerprints in an SDP, algorithm lower-case, value upper-case."""
    return [(alg.lower(), value.upper()) for alg, value in _FINGERPRINT_RE.findall(sdp)]


def certificate_fingerprint(certificate_der: bytes, algorithm: str) -> str:
    """Fingerprint of a DER certificate as SDP writes it: upper-case hex pairs joined by colons."""
    import hashlib

    digest = hashlib.new(algorithm.replace("-", ""), certificate_der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def check_fingerprint(signed_sdp: str, certificate_der: bytes) -> None:
    """Raise FingerprintMismatchError unless every supported fingerprint in `signed_sdp` matches the cert."""
    fingerprints = [(a, v) for a, v in sdp_fingerprints(signed_sdp) if a in SUPPORTED_ALGORITHMS]
    if not fingerprints:
        raise FingerprintMismatchError("signed SDP carries no supported DTLS fingerprint")
    for algorithm, value in fingerprints:
        if not hmac.compare_digest(certificate_fingerprint(certificate_der, algorithm), value):
            raise FingerprintMismatchError(
                f"DTLS certificate does not match the signed {algorithm} fingerprint"
            )


def remote_certificate_der(peer_connection: RTCPeerConnection) -> bytes:
    """The DER certificate the remote presented in the DTLS handshake of the data (SCTP) transport."""
    from cryptography.hazmat.primitives.serialization import Encoding

    sctp = peer_connection.sctp
    if sctp is None:
        raise FingerprintMismatchError("no data transport negotiated")
    # aiortc keeps the OpenSSL session on the DTLS transport; it offers no public accessor for the peer cert.
    ssl = getattr(sctp.transport, "_ssl", None)
    certificate = ssl.get_peer_certificate(as_cryptography=True) if ssl is not None else None
    if certificate is None:
        raise FingerprintMismatchError("DTLS handshake presented no certificate")
    der: bytes = certificate.public_bytes(Encoding.DER)
    return der


def verify_peer_connection(peer_connection: RTCPeerConnection, signed_sdp: str) -> None:
    check_fingerprint(signed_sdp, remote_certificate_der(peer_connection))
