"""A node's admission state and payload protection: who is a member, sealing and opening frames.

Noise already encrypts and authenticates every link. On top of it, with admission on, a peer
takes part only after presenting a membership certificate signed by the federation key, and
(with ``encrypt_payloads``) every contribution travels in an envelope signed by its sender and
encrypted to its receiver, bound to federation, round, sender and receiver.

Certificates also travel with hearsay (a heartbeat's member list carries each member's
certificate), so a node knows which ids it heard of are certified before it dials them. A peer on
the newest revocation list (signed by the federation key, gossiped in heartbeats) is a member no
longer, whatever its certificate says.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable
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
from gossipfl.crypto.revocation import (
    RevocationList,
    RevocationUpdate,
    judge_revocations,
    load_revocations,
)
from gossipfl.crypto.sessions import OpenKeys, SealKeys
from gossipfl.gossip.wire import (
    MAX_REVOCATION_BYTES,
    SEALED_IMPLIED,
    Contribution,
    Known,
    M,
    MaskedInput,
    MemberInfo,
    Sealed,
    WireError,
    decode_body,
    encode_body_pieces,
)

log = logging.getLogger(__name__)

#: New certificates checked per heartbeat's member list (the rest wait for the next heartbeat;
#: a node still joining checks up to ``membership.JOINING_CHECKS``).
MAX_HEARSAY_CHECKS = 64


@functools.lru_cache(maxsize=1 << 16)
def _signed(certificate: bytes, federation_public: bytes, federation: str,
            peer: str) -> tuple[MembershipCertificate, bytes]:
    """``certificate`` parsed, if the federation key signed it for ``federation`` and ``peer``
    (AdmissionError if not), with the bytes it came in. A pure function of its arguments, so
    its results are kept (a simulation's nodes share them, parsed object and bytes: a member's
    certificate is held once in the process, however many tables list it): a heartbeat's
    sender and every member its list names present the same bytes again and again. Its
    validity in time is the caller's to check."""
    cert = MembershipCertificate.from_bytes(certificate)
    verify_certificate(cert, federation_public, federation=federation, peer_id=peer,
                       now=cert.issued_at)
    return cert, certificate


class SecurityError(RuntimeError):
    """This node's own admission material is unusable (the message says why)."""


class NodeSecurity:
    """Certificates of the peers met so far, and this node's keys for envelopes."""

    def __init__(self, config: NodeConfig, identity: Identity) -> None:
        self.config = config.security
        self.federation = config.federation
        self.peer_id = str(identity.peer_id)
        self.max_payload = config.protocol.max_payload_bytes
        # envelope keys: an ephemeral key serves a few envelopes to one receiver (sessions.py)
        self.seal_keys, self.open_keys = SealKeys(), OpenKeys()
        self.certificates: dict[str, MembershipCertificate] = {}  # presented by the peer
        self.hearsay_certificates: dict[str, MembershipCertificate] = {}  # relayed by others
        # each certificate's bytes as checked (shared with every table that checked the same
        # bytes), or encoded once: every heartbeat lists them
        self._encoded: dict[str, tuple[MembershipCertificate, bytes]] = {}
        self.own_certificate = b""
        self.revocations: RevocationList | None = None
        self.revoked: frozenset[str] = frozenset()
        self._revocations_stamp: tuple[int, int] | None = None
        self.hearsay_deferred = 0  # entries of the last member list left unchecked (budget)
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
        if self.config.revocations:
            path = Path(self.config.revocations)
            try:
                self._revocations_stamp = self._stamp(path)
                self.revocations = load_revocations(path, self.federation_public,
                                                    federation=self.federation)
            except (AdmissionError, OSError) as error:
                raise SecurityError(f"the revocation list is not usable: {error}") from None
            self.revoked = self.revocations.ids
            log.info("revocation list %d: %d peer(s) revoked", self.revocations.serial,
                     len(self.revoked))
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

    def _check(self, peer: str, certificate: bytes) -> MembershipCertificate:
        cert, data = _signed(bytes(certificate), self.federation_public, self.federation, peer)
        # its time checks, as verify_certificate makes them
        verify_certificate(cert, self.federation_public, federation=self.federation,
                           peer_id=peer, now=time.time(), leeway=self.config.clock_leeway,
                           signature_checked=True)
        self._encoded[peer] = (cert, data)
        return cert

    def admit(self, peer: str, certificate: bytes) -> str | None:
        """Check ``peer``'s certificate; returns None when admitted, else the reason."""
        if not self.enabled:
            return None
        if peer in self.revoked:
            self.certificates.pop(peer, None)
            return "revoked: on the federation's revocation list"
        if not certificate:  # it holds that we hold its certificate (cert_holders.py)
            if not self.is_member(peer):
                return "no certificate: none presented, and none held for it"
            cert = self.certificates.get(peer) or self.hearsay_certificates[peer]
            self.certificates[peer] = cert  # presented: the channel authenticates the peer
            return None
        try:
            cert = self._check(peer, certificate)
        except AdmissionError as error:
            self.certificates.pop(peer, None)
            return f"{error.reason}: {error}"
        self.certificates[peer] = cert
        return None

    def _valid(self, table: dict[str, MembershipCertificate], peer: str,
               deadline: float | None = None) -> bool:
        """Whether ``table`` holds a certificate for ``peer`` that has not expired by
        ``deadline`` (now less the clock leeway, by default) and is not revoked; one that has
        expired or is revoked is dropped."""
        cert = table.get(peer)
        if cert is None:
            return False
        if deadline is None:
            deadline = time.time() - self.config.clock_leeway
        if peer in self.revoked or deadline >= cert.expires_at:
            del table[peer]
            return False
        return True

    def is_member(self, peer: str) -> bool:
        """True when admission is off, or a valid certificate for ``peer`` is known (presented
        by it, or relayed by another member: the federation's signature binds it to the peer
        id, which the channel authenticates, whoever carried it) and it is not revoked."""
        if not self.enabled:
            return True
        return self._valid(self.certificates, peer) or self._valid(self.hearsay_certificates,
                                                                   peer)

    def presented(self, peer: str) -> bool:
        """``peer`` presented a valid certificate itself (it talked to us); True with
        admission off."""
        return not self.enabled or self._valid(self.certificates, peer)

    def is_certified(self, peer: str) -> bool:
        """A valid certificate for ``peer`` is known, presented by it or relayed by others (so
        its addresses may be dialled and it may be re-gossiped). True with admission off."""
        return self.is_member(peer)

    def admitted_among(self, peers: Iterable[str],
                       heard_of: Callable[[str], bool] | None = None) -> list[str]:
        """Those of ``peers`` that :meth:`presented` a valid certificate, and with ``heard_of``
        also those :meth:`is_certified` for which ``heard_of`` holds, in order: the two checks
        for a table of members at once, the clock read once (a joining member counts a
        thousand members several times a heartbeat at 1,000 simulated members). An expired or
        revoked certificate is dropped as those checks drop it."""
        if not self.enabled:
            return list(peers)
        deadline = time.time() - self.config.clock_leeway
        presented, hearsay = self.certificates, self.hearsay_certificates
        return [peer for peer in peers if self._valid(presented, peer, deadline) or (
            heard_of is not None and self._valid(hearsay, peer, deadline) and heard_of(peer))]

    def certificate_of(self, peer: str) -> MembershipCertificate:
        """The certificate known for ``peer``, presented or relayed (KeyError if none)."""
        cert = self.certificates.get(peer) or self.hearsay_certificates.get(peer)
        if cert is None:
            raise KeyError(peer)
        return cert

    def certificate_bytes(self, peer: str) -> bytes:
        """The certificate known for ``peer`` (b"" if none, or with admission off)."""
        if not self.enabled or not self.is_certified(peer):
            return b""
        cert = self.certificate_of(peer)
        held = self._encoded.get(peer)
        if held is None or held[0] is not cert:  # encoded once per certificate object
            held = self._encoded[peer] = (cert, cert.to_bytes())
        return held[1]

    def hearsay(self, members: tuple[MemberInfo, ...],
                checks: int = MAX_HEARSAY_CHECKS) -> tuple[MemberInfo, ...]:
        """The entries of a heartbeat's member list to take: with admission on, only members
        whose certificate is valid (already known, or carried in the entry) and not revoked.
        ``checks``: the certificate checks this heartbeat may cost us (``JOINING_CHECKS``
        while joining); the rest wait for a later heartbeat."""
        if not self.enabled:
            return members
        taken = []
        self.hearsay_deferred = 0
        for info in members:
            if info.peer_id in self.revoked:
                continue
            certified = self.is_certified(info.peer_id)  # once a member: 1,000 are listed
            if not certified and info.certificate:
                if checks <= 0:
                    self.hearsay_deferred += 1
                    continue
                checks -= 1
                try:
                    self.hearsay_certificates[info.peer_id] = self._check(
                        info.peer_id, info.certificate)
                except AdmissionError:
                    continue
                certified = self.is_certified(info.peer_id)
            if certified:
                taken.append(info)
        return tuple(taken)

    @property
    def revocation_bytes(self) -> bytes:
        return self.revocations.to_bytes() if self.revocations is not None else b""

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int]:
        info = path.stat()
        return info.st_mtime_ns, info.st_size

    def poll_revocations_file(self) -> tuple[RevocationUpdate, frozenset[str], str]:
        """Read the configured revocation list file again if it changed since last read (the
        federation's holder writes a new one there, ``gossipfl federation revoke``), and judge
        it like a list a peer sent."""
        if not self.enabled or not self.config.revocations:
            return RevocationUpdate.SAME, frozenset(), ""
        path = Path(self.config.revocations)
        try:
            stamp = self._stamp(path)
            if stamp == self._revocations_stamp:
                return RevocationUpdate.SAME, frozenset(), ""
            self._revocations_stamp = stamp
            with path.open("rb") as handle:
                data = handle.read(MAX_REVOCATION_BYTES + 1)
        except OSError as error:
            return RevocationUpdate.INVALID, frozenset(), f"cannot read {path}: {error}"
        return self.take_revocations(data)

    def take_revocations(self, data: bytes) -> tuple[RevocationUpdate, frozenset[str], str]:
        """Judge a revocation list a peer sent. Returns ``(verdict, newly revoked ids,
        detail)``; a NEWER list is adopted at once (the revoked lose their certificates)."""
        if not self.enabled or not data:
            return RevocationUpdate.SAME, frozenset(), ""
        verdict, rl, detail = judge_revocations(self.revocations, data, self.federation_public,
                                                federation=self.federation)
        if verdict is not RevocationUpdate.NEWER or rl is None:
            return verdict, frozenset(), detail
        newly = rl.ids - self.revoked
        self.revocations, self.revoked = rl, rl.ids
        for peer in newly:
            self.certificates.pop(peer, None)
            self.hearsay_certificates.pop(peer, None)
        return verdict, newly, detail

    def seal(self, message: Contribution | MaskedInput, known: Known | None = None) -> Sealed:
        """Sign and encrypt ``message`` to its receiver (a contribution's receiver, a masked
        input's aggregator), bound to federation, round, sender and receiver. The message's
        arrays are hashed and encrypted where they lie (its msgpack as pieces), into the one
        buffer the envelope is written from."""
        to = message.receiver if isinstance(message, Contribution) else message.aggregator
        data = seal(
            encode_body_pieces(message, SEALED_IMPLIED[type(message)], known),
            federation=self.federation, round=message.round,
            sender=self.peer_id, receiver=to, sender_signing_key=self.signing_key,
            receiver_x25519_public=self.certificate_of(to).x25519_public,
            max_payload_bytes=self.max_payload, keys=self.seal_keys,
        )
        return Sealed(self.federation, message.round, data)

    def open(self, remote: str, sealed: Sealed,
             expected: type[M] = Contribution,  # type: ignore[assignment]
             known: Known | None = None) -> M:
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
            max_payload_bytes=self.max_payload, keys=self.open_keys,
        )
        # the sender and receiver the envelope's header named (checked as it opened)
        implied = dict(zip(SEALED_IMPLIED[expected], (remote, self.peer_id), strict=True))
        message = decode_body(payload, expected, implied, known)
        outside = (sealed.federation, round_)
        inside = (message.federation, message.round)
        if outside != inside:
            raise WireError(f"sealed message's inside {inside} differs from its outside")
        return message


__all__ = ["EnvelopeError", "NodeSecurity", "RevocationUpdate", "SecurityError"]
