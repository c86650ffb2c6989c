"""Tests for gossipfl.crypto.admission: federation key, membership certificates, member keys."""

from __future__ import annotations

import contextlib
import dataclasses
import stat
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_sign_ed25519_sk_to_curve25519
from nacl.public import PrivateKey
from nacl.signing import SigningKey

from gossipfl.crypto import admission, certificates, federation_files, member_keys
from gossipfl.crypto.admission import (
    CERT_VERSION,
    FEDERATION_KEY_FILE,
    FEDERATION_NAME_FILE,
    FEDERATION_PUB_FILE,
    MAX_CERT_BYTES,
    AdmissionError,
    FederationKeyError,
    MembershipCertificate,
    admit,
    admit_identity,
    create_federation_key,
    identity_signing_key,
    identity_x25519_keypair,
    init_federation,
    issue_certificate,
    load_certificate,
    load_federation_key,
    load_federation_name,
    load_federation_public,
    load_or_create_federation_key,
    member_x25519_keypair,
    peer_id_of,
    verify_certificate,
    verify_key_from_peer_id,
)
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.crypto.revocation import (
    REVOCATIONS_FILE,
    RevocationList,
    RevocationUpdate,
    judge_revocations,
    load_revocations,
    revoke,
    sign_revocations,
    verify_revocations,
)
from gossipfl.gossip.wire import MAX_REVOCATION_BYTES

FED_KEY = SigningKey(bytes(range(32)))
FED_PUB = bytes(FED_KEY.verify_key)
OTHER_KEY = SigningKey(bytes(range(1, 33)))
MEMBER_KEY = SigningKey(b"\x07" * 32)
PEER = peer_id_of(MEMBER_KEY.verify_key)
OTHER_PEER = peer_id_of(OTHER_KEY.verify_key)
X25519_PUB = member_x25519_keypair(bytes(MEMBER_KEY))[1]
NOW = 1_700_000_000.0
DAY = 86_400.0


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _cert(**overrides: object) -> MembershipCertificate:
    args: dict[str, object] = {
        "federation_key": FED_KEY,
        "federation": "fed",
        "peer_id": PEER,
        "x25519_public": X25519_PUB,
        "now": NOW,
        "valid_for": DAY,
    }
    args.update(overrides)
    key = args.pop("federation_key")
    fed = args.pop("federation")
    peer = args.pop("peer_id")
    x25519 = args.pop("x25519_public")
    return issue_certificate(key, fed, peer, x25519, **args)  # type: ignore[arg-type]


def _verify(cert: MembershipCertificate, **overrides: object) -> None:
    args: dict[str, object] = {"federation": "fed", "peer_id": PEER, "now": NOW + 10}
    args.update(overrides)
    public = args.pop("federation_public", FED_PUB)
    verify_certificate(cert, public, **args)  # type: ignore[arg-type]


def _reason(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(AdmissionError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value.reason


# -- certificates ----------------------------------------------------------------------------------


def test_certificate_round_trip_and_verifies() -> None:
    cert = _cert()
    assert (cert.issued_at, cert.expires_at) == (NOW, NOW + DAY)
    data = cert.to_bytes()
    assert len(data) <= MAX_CERT_BYTES
    again = MembershipCertificate.from_bytes(data)
    assert again == cert
    assert again.to_bytes() == data  # canonical
    _verify(again)
    _verify(again, now=NOW)  # valid from issued_at on
    assert msgpack.unpackb(data)[0] == CERT_VERSION


def test_certificate_repr_is_short_and_public() -> None:
    text = repr(_cert())
    assert PEER in text and "fed" in text
    assert _cert().signature.hex() not in text


def test_forged_by_another_key_is_bad_signature() -> None:
    assert _reason(_verify, _cert(federation_key=OTHER_KEY)) == "bad_signature"
    # and a genuine certificate checked against another federation's public key
    assert _reason(_verify, _cert(), federation_public=bytes(OTHER_KEY.verify_key)) == (
        "bad_signature"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"federation": "other"},
        {"peer_id": OTHER_PEER},
        {"x25519_public": bytes(range(1, 33))},
        {"issued_at": NOW - 1},
        {"expires_at": NOW + 365 * DAY},
    ],
    ids=lambda change: next(iter(change)),
)
def test_field_edited_after_signing_is_bad_signature(change: dict[str, object]) -> None:
    edited = dataclasses.replace(_cert(), **change)  # type: ignore[arg-type]
    assert _reason(_verify, edited, **{k: v for k, v in change.items()
                                       if k in ("federation", "peer_id")}) == "bad_signature"


def test_bit_flip_in_encoded_certificate_never_verifies() -> None:
    data = _cert().to_bytes()
    for index in range(len(data)):
        for bit in (0x01, 0x80):
            broken = bytearray(data)
            broken[index] ^= bit
            with pytest.raises(AdmissionError):
                _verify(MembershipCertificate.from_bytes(bytes(broken)))


def test_wrong_federation_and_wrong_peer() -> None:
    cert = _cert()
    with pytest.raises(AdmissionError, match="wrong federation") as info:
        _verify(cert, federation="another")
    assert info.value.reason == "wrong_federation"
    with pytest.raises(AdmissionError, match="wrong peer") as info:
        _verify(cert, peer_id=OTHER_PEER)
    assert info.value.reason == "wrong_peer"


def test_expiry_and_not_yet_valid_with_boundaries() -> None:
    cert = _cert()
    with pytest.raises(AdmissionError, match="expired") as info:
        _verify(cert, now=NOW + DAY)  # expires_at itself is already expired
    assert info.value.reason == "expired"
    _verify(cert, now=NOW + DAY - 0.001)
    with pytest.raises(AdmissionError, match="not yet valid") as info:
        _verify(cert, now=NOW - 0.001)
    assert info.value.reason == "not_yet_valid"
    # a little leeway for clocks that differ
    _verify(cert, now=NOW - 5, leeway=10)
    _verify(cert, now=NOW + DAY + 5, leeway=10)


def test_issue_refuses_bad_fields() -> None:
    assert _reason(_cert, valid_for=0) == "malformed"
    assert _reason(_cert, valid_for=float("inf")) == "malformed"
    assert _reason(_cert, now=float("nan")) == "malformed"
    assert _reason(_cert, federation="") == "malformed"
    assert _reason(_cert, federation="x" * 129) == "malformed"
    assert _reason(_cert, federation="a\nb") == "malformed"
    assert _reason(_cert, peer_id=7) == "malformed"
    assert _reason(_cert, x25519_public=b"\x01" * 31) == "malformed"
    assert _reason(_cert, x25519_public=bytes(32)) == "malformed"


def test_verify_refuses_malformed_key() -> None:
    assert _reason(_verify, _cert(), federation_public=FED_PUB[:31]) == "malformed"
    assert _reason(_verify, "not a cert") == "malformed"


def test_truncated_certificates_are_malformed() -> None:
    data = _cert().to_bytes()
    for end in range(len(data)):
        assert _reason(MembershipCertificate.from_bytes, data[:end]) == "malformed"


def _fields() -> list[object]:
    cert = _cert()
    return [CERT_VERSION, cert.federation, cert.peer_id, cert.x25519_public, cert.issued_at,
            cert.expires_at, cert.signature]


@pytest.mark.parametrize(
    ("index", "value"),
    [(0, 2), (0, True), (1, 5), (2, b"peer"), (3, "x" * 32), (4, int(NOW)), (5, int(NOW + DAY)),
     (5, NOW - 1), (4, float("nan")), (6, b"\x00" * 63)],
)
def test_structural_rules_are_malformed(index: int, value: object) -> None:
    fields = _fields()
    fields[index] = value
    assert _reason(MembershipCertificate.from_bytes, msgpack.packb(fields)) == "malformed"


def test_oversized_and_non_list_inputs_are_malformed() -> None:
    assert _reason(MembershipCertificate.from_bytes, b"\x90" * (MAX_CERT_BYTES + 1)) == "malformed"
    assert _reason(MembershipCertificate.from_bytes, msgpack.packb({"v": 1})) == "malformed"
    assert _reason(MembershipCertificate.from_bytes, msgpack.packb([*_fields(), 1])) == "malformed"
    assert _reason(MembershipCertificate.from_bytes, "text") == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * MAX_CERT_BYTES))
def test_random_bytes_raise_only_admission_error(data: bytes) -> None:
    try:
        cert = MembershipCertificate.from_bytes(data)
    except AdmissionError as error:
        assert error.reason == "malformed", error
        return
    # bytes that parse are a canonical certificate, and nobody signed it
    assert cert.to_bytes() == data
    assert _reason(_verify, cert) == "bad_signature"


_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=40) | st.binary(max_size=70),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_msgpack_values, min_size=6, max_size=8), st.data())
def test_structured_garbage_raises_only_admission_error(values: list[object], data: st.DataObject
                                                        ) -> None:
    # Start from a valid certificate and replace some of its fields with arbitrary values.
    fields = _fields()
    for position, value in enumerate(values[:7]):
        if data.draw(st.booleans()):
            fields[position] = value
    try:
        cert = MembershipCertificate.from_bytes(msgpack.packb(fields))
    except AdmissionError as error:
        assert error.reason == "malformed", error
        return
    if cert == _cert():
        _verify(cert)  # every value put back was the original one: still the federation's
    else:
        assert _reason(_verify, cert) == "bad_signature"  # any change breaks the signature


# -- member keys -----------------------------------------------------------------------------------


def test_member_x25519_keypair_is_deterministic_and_independent() -> None:
    private, public = member_x25519_keypair(b"\x07" * 32)
    again, public_again = member_x25519_keypair(b"\x07" * 32)
    assert isinstance(private, PrivateKey)
    assert public == public_again == bytes(private.public_key) == X25519_PUB
    assert bytes(again) == bytes(private)
    assert member_x25519_keypair(b"\x08" * 32)[1] != public
    # HKDF, not the birational map of the signing key
    assert bytes(private) != crypto_sign_ed25519_sk_to_curve25519(MEMBER_KEY._signing_key)
    assert _reason(member_x25519_keypair, b"\x07" * 31) == "key_file"


def test_peer_id_and_verify_key_round_trip(tmp_path: Path) -> None:
    identity, _ = load_or_create_identity(tmp_path / "node.key")
    peer = identity.peer_id.to_base58()
    assert peer_id_of(identity_signing_key(identity).verify_key) == peer == str(identity.peer_id)
    assert bytes(verify_key_from_peer_id(peer)) == identity.key_pair.public_key.to_bytes()
    for bad in ["", "../x", "0OIl", "Qm" + "1" * 44, "1" * 129, PEER[:-3], "12D3KooW"]:
        assert _reason(verify_key_from_peer_id, bad) == "wrong_peer"


_BASE58_DIGITS = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@st.composite
def _edited_peer_ids(draw: st.DrawFn) -> str:
    """A real peer id with one base58 digit changed, cut short or lengthened."""
    at = draw(st.integers(0, len(PEER) - 1))
    how = draw(st.sampled_from(["replace", "cut", "insert"]))
    digit = draw(st.sampled_from(_BASE58_DIGITS))
    if how == "replace":
        return PEER[:at] + digit + PEER[at + 1 :]
    if how == "cut":
        return PEER[:at]
    return PEER[:at] + digit + PEER[at:]


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=60), _edited_peer_ids()))
def test_verify_key_from_random_text_raises_only_admission_error(text: str) -> None:
    try:
        key = verify_key_from_peer_id(text)
    except AdmissionError as error:
        assert error.reason == "wrong_peer", error
        return
    assert peer_id_of(key) == text  # accepted only as the exact id of the key it yields


# -- key files and administration -----------------------------------------------------------------


def test_init_federation_writes_files_with_modes(tmp_path: Path) -> None:
    directory = tmp_path / "fed"
    pub_path = init_federation(directory, "hospitals")
    assert pub_path == directory / FEDERATION_PUB_FILE
    key_path = directory / FEDERATION_KEY_FILE
    assert _mode(key_path) == 0o600
    assert _mode(pub_path) == 0o644
    key = load_federation_key(key_path)
    assert load_federation_public(pub_path) == bytes(key.verify_key)
    assert pub_path.read_text() == bytes(key.verify_key).hex() + "\n"
    assert load_federation_name(directory) == "hospitals"
    assert (directory / FEDERATION_NAME_FILE).read_text() == "hospitals\n"
    assert len(bytes.fromhex(key_path.read_text().strip())) == 32


def test_init_federation_refuses_to_overwrite(tmp_path: Path) -> None:
    init_federation(tmp_path, "fed")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FederationKeyError, match="refusing to overwrite") as info:
        init_federation(tmp_path, "fed")
    assert info.value.reason == "exists"
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # any one of the files is enough to refuse, and then nothing is created
    other = tmp_path / "other"
    other.mkdir()
    (other / FEDERATION_PUB_FILE).write_text("x\n")
    assert _reason(init_federation, other, "fed") == "exists"
    assert sorted(p.name for p in other.iterdir()) == [FEDERATION_PUB_FILE]


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    init_federation(tmp_path, "fed")
    key_path = tmp_path / FEDERATION_KEY_FILE
    seed_hex = key_path.read_text().strip()
    for mode in (0o644, 0o640, 0o604):
        key_path.chmod(mode)
        with pytest.raises(FederationKeyError, match="chmod 600") as info:
            load_federation_key(key_path)
        assert info.value.reason == "key_file"
        assert seed_hex not in str(info.value)
    key_path.chmod(0o600)
    load_federation_key(key_path)
    key_path.chmod(0o644)
    with pytest.raises(FederationKeyError):  # admit refuses too
        admit(tmp_path, PEER, X25519_PUB.hex(), valid_days=1, now=NOW)


def test_federation_key_load_create_and_bad_contents(tmp_path: Path) -> None:
    path = tmp_path / "k" / "federation.key"
    key, created = load_or_create_federation_key(path)
    assert created and _mode(path) == 0o600
    again, created_again = load_or_create_federation_key(path)
    assert not created_again and bytes(again) == bytes(key)
    assert _reason(create_federation_key, path) == "exists"
    assert bytes(load_federation_key(path)) == bytes(key)
    missing = tmp_path / "missing.key"
    assert _reason(load_federation_key, missing) == "key_file"
    for text in ["not hex\n", "ab" * 31 + "\n", "\xff"]:
        bad = tmp_path / "bad.key"
        bad.write_text(text, encoding="latin-1")
        bad.chmod(0o600)
        assert _reason(load_federation_key, bad) == "key_file"
    assert _reason(load_federation_public, missing) == "key_file"


def test_admit_writes_a_verifiable_certificate(tmp_path: Path) -> None:
    pub_path = init_federation(tmp_path, "fed")
    cert_path = admit(tmp_path, PEER, X25519_PUB.hex(), valid_days=2, now=NOW)
    assert cert_path == tmp_path / f"{PEER}.cert"
    cert = load_certificate(cert_path)
    assert cert.x25519_public == X25519_PUB
    assert cert.expires_at == NOW + 2 * DAY
    verify_certificate(cert, load_federation_public(pub_path), federation="fed", peer_id=PEER,
                       now=NOW + DAY)
    # renewal replaces the certificate
    admit(tmp_path, PEER, X25519_PUB.hex(), valid_days=3, now=NOW + DAY)
    assert load_certificate(cert_path).expires_at == NOW + 4 * DAY


def test_admit_refuses_bad_requests(tmp_path: Path) -> None:
    init_federation(tmp_path / "fed", "fed")
    directory = tmp_path / "fed"
    assert _reason(admit, directory, "../evil", X25519_PUB.hex(), valid_days=1, now=NOW) == (
        "wrong_peer"
    )
    assert _reason(admit, directory, PEER, "zz", valid_days=1, now=NOW) == "malformed"
    assert _reason(admit, directory, PEER, "ab" * 31, valid_days=1, now=NOW) == "malformed"
    assert _reason(admit, directory, PEER, X25519_PUB.hex(), valid_days=0, now=NOW) == "malformed"
    assert sorted(p.name for p in directory.iterdir()) == sorted(
        [FEDERATION_KEY_FILE, FEDERATION_PUB_FILE, FEDERATION_NAME_FILE]
    )
    assert not (tmp_path / "evil.cert").exists()
    # a public file that does not match the key is caught
    (directory / FEDERATION_PUB_FILE).write_text(bytes(OTHER_KEY.verify_key).hex() + "\n")
    assert _reason(admit, directory, PEER, X25519_PUB.hex(), valid_days=1, now=NOW) == "key_file"
    # an uninitialised directory
    assert _reason(admit, tmp_path, PEER, X25519_PUB.hex(), valid_days=1, now=NOW) == "key_file"


def test_admit_identity_uses_the_identity_file(tmp_path: Path) -> None:
    init_federation(tmp_path / "fed", "fed")
    key_file = tmp_path / "node.key"
    identity, _ = load_or_create_identity(key_file)
    cert_path = admit_identity(tmp_path / "fed", key_file, valid_days=1, now=NOW)
    cert = load_certificate(cert_path)
    assert cert.peer_id == str(identity.peer_id)
    assert cert_path.name == f"{identity.peer_id}.cert"
    seed = bytes.fromhex(key_file.read_text().strip())
    _private, public = member_x25519_keypair(seed)
    assert cert.x25519_public == public
    assert identity_x25519_keypair(identity)[1] == public
    assert bytes(identity_signing_key(identity)) == seed
    verify_certificate(cert, load_federation_public(tmp_path / "fed" / FEDERATION_PUB_FILE),
                       federation="fed", peer_id=str(identity.peer_id), now=NOW + 1)


def test_admit_identity_refuses_missing_or_open_identity_file(tmp_path: Path) -> None:
    init_federation(tmp_path / "fed", "fed")
    missing = tmp_path / "missing.key"
    assert _reason(admit_identity, tmp_path / "fed", missing, valid_days=1, now=NOW) == "key_file"
    assert not missing.exists()  # never created behind the caller's back
    key_file = tmp_path / "node.key"
    load_or_create_identity(key_file)
    key_file.chmod(0o644)
    assert _reason(admit_identity, tmp_path / "fed", key_file, valid_days=1, now=NOW) == "key_file"


def test_module_has_no_mutable_globals() -> None:
    mutable = (list, dict, set, bytearray)
    assert not [f"{module.__name__}.{name}"
                for module in (admission, certificates, federation_files, member_keys)
                for name, value in vars(module).items()
                if not name.startswith("__") and isinstance(value, mutable)]


# -- revocation lists ------------------------------------------------------------------------------


def _rl(serial: int = 1, revoked: dict[str, str] | None = None, key: SigningKey = FED_KEY,
        federation: str = "fed") -> RevocationList:
    return sign_revocations(key, federation, serial, {PEER: "left"} if revoked is None else revoked,
                            now=NOW)


def test_revocation_list_round_trip_and_verifies() -> None:
    rl = _rl(3, {OTHER_PEER: "", PEER: "key lost"})
    back = RevocationList.from_bytes(rl.to_bytes())
    assert back == rl and back.ids == {PEER, OTHER_PEER} and back.serial == 3
    assert [p for p, _ in back.revoked] == sorted([PEER, OTHER_PEER])  # canonical order
    verify_revocations(back, FED_PUB, federation="fed")
    assert rl.signed_bytes().startswith(b"gossipfl/revocation-list/v1\x00")


def test_revocation_list_forged_tampered_or_foreign_is_refused() -> None:
    assert _reason(verify_revocations, _rl(key=OTHER_KEY), FED_PUB, federation="fed") == (
        "bad_signature")
    assert _reason(verify_revocations, _rl(), FED_PUB, federation="other") == "wrong_federation"
    rl = _rl(2)
    for change in ({"serial": 9}, {"revoked": ()}, {"issued_at": NOW + 1},
                   {"revoked": ((OTHER_PEER, "left"),)}):
        edited = dataclasses.replace(rl, **change)  # type: ignore[arg-type]
        assert _reason(verify_revocations, edited, FED_PUB, federation="fed") == "bad_signature"
    data = rl.to_bytes()
    for i in range(len(data)):  # every single-bit flip breaks parsing or the signature
        flipped = bytearray(data)
        flipped[i] ^= 0x01
        with contextlib.suppress(AdmissionError):
            verify_revocations(RevocationList.from_bytes(bytes(flipped)), FED_PUB,
                               federation="fed")
            raise AssertionError(f"bit flip at byte {i} verified")


@pytest.mark.parametrize("data", [b"", b"\x00", msgpack.packb([1, "fed", 1, NOW, [], b""]),
                                  msgpack.packb([2, "fed", 1, NOW, [], bytes(64)]),
                                  msgpack.packb([1, "fed", 0, NOW, [], bytes(64)]),
                                  msgpack.packb([1, "fed", 1, 5, [], bytes(64)]),
                                  msgpack.packb([1, "fed", 1, NOW, [["b", ""], ["a", ""]],
                                                 bytes(64)]),
                                  msgpack.packb([1, "fed", 1, NOW, [["a", ""], ["a", ""]],
                                                 bytes(64)]),
                                  msgpack.packb([1, "fed", 1, NOW, [["a", "x" * 65]], bytes(64)]),
                                  b"\x00" * (MAX_REVOCATION_BYTES + 1)])
def test_malformed_revocation_lists_raise_admission_error(data: bytes) -> None:
    assert _reason(RevocationList.from_bytes, data) == "malformed"


def test_the_newest_serial_wins_and_older_or_forged_lists_are_refused() -> None:
    one, two = _rl(1), _rl(2, {PEER: "left", OTHER_PEER: ""})
    verdict, taken, _ = judge_revocations(None, one.to_bytes(), FED_PUB, federation="fed")
    assert verdict is RevocationUpdate.NEWER and taken == one
    assert judge_revocations(one, one.to_bytes(), FED_PUB, federation="fed")[0] is (
        RevocationUpdate.SAME)
    verdict, taken, _ = judge_revocations(one, two.to_bytes(), FED_PUB, federation="fed")
    assert verdict is RevocationUpdate.NEWER and taken == two
    # a replay of the older list, or another list under our serial, changes nothing
    assert judge_revocations(two, one.to_bytes(), FED_PUB, federation="fed")[0] is (
        RevocationUpdate.OLDER)
    assert judge_revocations(two, _rl(2, {}).to_bytes(), FED_PUB, federation="fed")[0] is (
        RevocationUpdate.OLDER)
    # a forged list with a higher serial (to un-revoke everyone) is invalid
    forged = _rl(99, {}, key=OTHER_KEY)
    verdict, taken, detail = judge_revocations(two, forged.to_bytes(), FED_PUB, federation="fed")
    assert verdict is RevocationUpdate.INVALID and taken is None and "bad_signature" in detail
    assert judge_revocations(two, b"junk", FED_PUB, federation="fed")[0] is (
        RevocationUpdate.INVALID)


def test_revoke_writes_a_public_signed_list_with_growing_serials(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    init_federation(fed, "demo")
    path, rl = revoke(fed, PEER, "left the study", now=NOW)
    assert path == fed / REVOCATIONS_FILE and _mode(path) == 0o644
    assert _mode(fed / FEDERATION_KEY_FILE) == 0o600
    public = load_federation_public(fed / FEDERATION_PUB_FILE)
    assert load_revocations(path, public, federation="demo") == rl
    assert rl.serial == 1 and dict(rl.revoked) == {PEER: "left the study"}
    _, second = revoke(fed, OTHER_PEER, now=NOW + 1)
    assert second.serial == 2 and second.ids == {PEER, OTHER_PEER}
    assert dict(second.revoked)[PEER] == "left the study"  # earlier entries kept
    assert _reason(revoke, fed, "not-a-peer-id", now=NOW) == "wrong_peer"
    assert _reason(revoke, fed, PEER, "bad\nreason", now=NOW) == "malformed"
    # a list file someone else signed is not extended
    path.write_bytes(_rl(7, key=OTHER_KEY, federation="demo").to_bytes())
    assert _reason(revoke, fed, PEER, now=NOW) == "bad_signature"


def test_cli_revoke_writes_a_valid_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gossipfl.cli import main

    fed = tmp_path / "fed"
    assert main(["federation", "init", str(fed), "--name", "demo"]) == 0
    assert main(["federation", "revoke", str(fed), "--peer-id", PEER, "--reason", "left"]) == 0
    assert "revocation list 1 (1 revoked)" in capsys.readouterr().out
    rl = load_revocations(fed / REVOCATIONS_FILE, load_federation_public(fed / FEDERATION_PUB_FILE),
                          federation="demo")
    assert rl.ids == {PEER}
    assert main(["federation", "revoke", str(fed), "--peer-id", "nonsense"]) == 2
    assert "not" in capsys.readouterr().err
