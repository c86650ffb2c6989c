"""A node's admission state and payload protection: who is a member, sealing and opening frames.

Noise already encrypts and authenticates every link. On top of it, with admission on, a peer
takes part only after presenting a membership certificate signed by the federation key, and
(with ``encrypt_payloads``) every contribution travels in an envelope signed by its sender and
encrypted to its receiver, bound to federation, round, sender and receiver.
"""

from __future__ import annotations

import time
from pathlib import Path

from gossipfl.config import NodeConfig
from gossipfl.crypto.admission import (
    AdmissionError,
    MembershipCertificate,
    identity_signing_key,
    identity_x25519_keypair,
    load_certificate,
    load_federation_public,
    verify_certificate,
    verify_key_from_peer_id,
)
from gossipfl.crypto.envelope import EnvelopeError, open_envelope, seal
from gossipfl.crypto.identity import Identity
from gossipfl.gossip.wire import (
    Contribution,
    M,
    MaskedInput,
    Sealed,
    WireError,
    decode_body,
    encode_body,
)


class SecurityError(RuntimeError):
    """This node's own admission material is unusable (the message says why)."""


class NodeSecurity:
    """Certificates of the peers met so far, and this node's keys for envelopes."""

    def __init__(self, config: NodeConfig, identity: Identity) -> None:
        self.config = config.security
        self.federation = config.federation
        self.peer_id = str(identity.peer_id)
        self.max_payload = config.protocol.max_payload_bytes
        self.certificates: dict[str, MembershipCertificate] = {}
        self.own_certificate = b""
        if not self.config.admission:
            return
        assert self.config.federation_public and self.config.certificate
        try:
            self.federation_public = load_federation_public(Path(self.config.federation_public))
            certificate = load_certificate(Path(self.config.certificate))
            verify_certificate(certificate, self.federation_public, federation=self.federation,
                               peer_id=self.peer_id, now=time.time(),
                               leeway=self.config.clock_leeway)
        except (AdmissionError, OSError) as error:
            raise SecurityError(f"this node's own certificate is not usable: {error}") from None
        self.own_certificate = certificate.to_bytes()
        self.signing_key = identity_signing_key(identity)
        self.x25519_private, public = identity_x25519_keypair(identity)
        if public != certificate.x25519_public:
            raise SecurityError("this node's certificate names another X25519 key")

    @property
    def enabled(self) -> bool:
        return self.config.admission

    @property
    def sealed(self) -> bool:
        return self.config.sealed

    def admit(self, peer: str, certificate: bytes) -> str | None:
        """Check ``peer``'s certificate; returns None when admitted, else the reason."""
        if not self.enabled:
            return None
        try:
            cert = MembershipCertificate.from_bytes(certificate)
            verify_certificate(cert, self.federation_public, federation=self.federation,
                               peer_id=peer, now=time.time(), leeway=self.config.clock_leeway)
        except AdmissionError as error:
            self.certificates.pop(peer, None)
            return f"{error.reason}: {error}"
        self.certificates[peer] = cert
        return None

    def is_member(self, peer: str) -> bool:
        """True when admission is off, or ``peer`` presented a valid certificate."""
        if not self.enabled:
            return True
        cert = self.certificates.get(peer)
        if cert is None:
            return False
        if time.time() - self.config.clock_leeway >= cert.expires_at:
            del self.certificates[peer]
            return False
        return True

    def seal(self, message: Contribution | MaskedInput) -> Sealed:
        """Sign and encrypt ``message`` to its receiver (a contribution's receiver, a masked
        input's aggregator), bound to federation, round, sender and receiver."""
        to = message.receiver if isinstance(message, Contribution) else message.aggregator
        data = seal(
            encode_body(message), federation=self.federation, round=message.round,
            sender=self.peer_id, receiver=to, sender_signing_key=self.signing_key,
            receiver_x25519_public=self.certificates[to].x25519_public,
            max_payload_bytes=self.max_payload,
        )
        return Sealed(self.federation, message.round, self.peer_id, to, data)

    def open(self, remote: str, sealed: Sealed,
             expected: type[M] = Contribution) -> M:  # type: ignore[assignment]
        """Open a sealed message from ``remote`` (the Noise-authenticated peer).

        Raises :class:`EnvelopeError` (tampered, redirected, wrong sender or round...) or
        :class:`WireError` (the inside is not a valid ``expected`` message, or differs from the
        outside).
        """
        round_, payload = open_envelope(
            sealed.data, federation=self.federation, expected_round=sealed.round,
            expected_sender=remote, receiver=self.peer_id,
            receiver_x25519_private=self.x25519_private,
            sender_verify_key=verify_key_from_peer_id(remote),
            max_payload_bytes=self.max_payload,
        )
        message = decode_body(payload, expected)
        to = message.receiver if isinstance(message, Contribution) else message.aggregator
        outside = (sealed.federation, round_, sealed.sender, sealed.receiver)
        inside = (message.federation, message.round, message.sender, to)
        if outside != inside:
            raise WireError(f"sealed message's inside {inside} differs from its outside")
        return message


__all__ = ["EnvelopeError", "NodeSecurity", "SecurityError"]
