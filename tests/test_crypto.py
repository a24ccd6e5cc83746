"""Tests for node.crypto: both suites through the same cases, and the vault."""

import functools
import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.crypto import (
    SUITES,
    CryptoSuite,
    KemPrivateKey,
    LocalVault,
    fingerprint,
    suite_by_code,
    suite_by_name,
)
from node.errors import AuthenticationFailed, ConfigError, MalformedMessage

SUITE_NAMES = sorted(SUITES)
DATA = b"join request for group 224.1.2.3"
INFO = b"smkd test group access package"


@functools.cache
def signing_keys(suite_name: str) -> tuple:
    """Two signing keys per suite, made once because tests only read them."""
    suite = SUITES[suite_name]
    return suite.generate_signing_key(), suite.generate_signing_key()


@functools.cache
def kem_keys(suite_name: str) -> tuple[KemPrivateKey, KemPrivateKey]:
    suite = SUITES[suite_name]
    return suite.generate_kem_key(), suite.generate_kem_key()


@pytest.fixture(params=SUITE_NAMES)
def suite(request) -> CryptoSuite:
    return SUITES[request.param]


def other_suite(suite: CryptoSuite) -> CryptoSuite:
    return next(other for other in SUITES.values() if other is not suite)


def assert_reason(excinfo: pytest.ExceptionInfo, reason: str) -> None:
    assert excinfo.type is AuthenticationFailed
    assert excinfo.value.reason == reason


# suite table


def test_suite_table_fields():
    default = SUITES["default"]
    pq = SUITES["pq"]

    assert (default.name, default.code) == ("default", 1)
    assert (pq.name, pq.code) == ("pq", 2)
    assert default.signature_name == "Ed25519"
    assert pq.signature_name == "ML-DSA-65"
    assert default.aead_name == pq.aead_name == "AES-128-GCM"
    assert default.key_size == pq.key_size == 16


def test_suite_by_code_known(suite):
    assert suite_by_code(suite.code) is suite


@pytest.mark.parametrize("code", [0, 3, 255, -1])
def test_suite_by_code_unknown(code):
    with pytest.raises(MalformedMessage, match=str(code)):
        suite_by_code(code)


def test_suite_by_name_unknown():
    with pytest.raises(ConfigError, match="'rot13'"):
        suite_by_name("rot13")


# signatures


def test_sign_verify_round_trip(suite):
    key, _ = signing_keys(suite.name)

    signature = suite.sign(key, DATA)

    assert len(signature) == suite.signature_size
    suite.verify(key.public_key(), signature, DATA)


def test_verify_tampered_data(suite):
    key, _ = signing_keys(suite.name)
    signature = suite.sign(key, DATA)

    with pytest.raises(AuthenticationFailed) as excinfo:
        suite.verify(key.public_key(), signature, DATA + b"!")
    assert_reason(excinfo, "bad-signature")


def test_verify_wrong_key(suite):
    key, other_key = signing_keys(suite.name)
    signature = suite.sign(key, DATA)

    with pytest.raises(AuthenticationFailed) as excinfo:
        suite.verify(other_key.public_key(), signature, DATA)
    assert_reason(excinfo, "bad-signature")


SIGNATURE_MUTATIONS = {
    "truncated": lambda sig: sig[:-1],
    "extended": lambda sig: sig + b"\x00",
    "empty": lambda sig: b"",
    "zeroed": lambda sig: bytes(len(sig)),
    "first-bit-flipped": lambda sig: bytes([sig[0] ^ 1]) + sig[1:],
    "last-bit-flipped": lambda sig: sig[:-1] + bytes([sig[-1] ^ 0x80]),
    "half": lambda sig: sig[: len(sig) // 2],
}


@pytest.mark.parametrize("mutation", sorted(SIGNATURE_MUTATIONS))
def test_verify_mangled_signature(suite, mutation):
    key, _ = signing_keys(suite.name)
    signature = SIGNATURE_MUTATIONS[mutation](suite.sign(key, DATA))

    with pytest.raises(AuthenticationFailed) as excinfo:
        suite.verify(key.public_key(), signature, DATA)
    assert_reason(excinfo, "bad-signature")


def test_verify_key_of_other_suite(suite):
    key, _ = signing_keys(suite.name)
    foreign_key, _ = signing_keys(other_suite(suite).name)
    signature = suite.sign(key, DATA)

    with pytest.raises(AuthenticationFailed) as excinfo:
        suite.verify(foreign_key.public_key(), signature, DATA)
    assert_reason(excinfo, "bad-signature")


def test_sign_key_of_other_suite(suite):
    foreign_key, _ = signing_keys(other_suite(suite).name)

    with pytest.raises(ConfigError, match=suite.signature_name):
        suite.sign(foreign_key, DATA)


@pytest.mark.parametrize("suite_name", SUITE_NAMES)
@settings(max_examples=50, deadline=None)
@given(garbage=st.binary(max_size=3400))
def test_verify_garbage_signature(suite_name, garbage):
    suite = SUITES[suite_name]
    key, _ = signing_keys(suite_name)

    with pytest.raises(AuthenticationFailed) as excinfo:
        suite.verify(key.public_key(), garbage, DATA)
    assert_reason(excinfo, "bad-signature")


@pytest.mark.parametrize("suite_name", SUITE_NAMES)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_verify_random_full_size_signature(suite_name, data):
    suite = SUITES[suite_name]
    key, _ = signing_keys(suite_name)
    size = suite.signature_size
    garbage = data.draw(st.binary(min_size=size, max_size=size))

    with pytest.raises(AuthenticationFailed) as excinfo:
        suite.verify(key.public_key(), garbage, DATA)
    assert_reason(excinfo, "bad-signature")


# hpke sealing


def test_seal_open_round_trip(suite):
    recipient, _ = kem_keys(suite.name)
    plaintext = bytes(range(16))

    sealed = suite.seal(recipient.public_key, plaintext, INFO)

    assert len(sealed) == len(plaintext) + suite.seal_overhead
    assert plaintext not in sealed
    assert suite.open(recipient, sealed, INFO) == plaintext


def test_seal_is_randomized(suite):
    recipient, _ = kem_keys(suite.name)

    first = suite.seal(recipient.public_key, DATA, INFO)
    second = suite.seal(recipient.public_key, DATA, INFO)

    assert first != second


def test_open_wrong_recipient(suite):
    recipient, other = kem_keys(suite.name)
    sealed = suite.seal(recipient.public_key, DATA, INFO)

    with pytest.raises(AuthenticationFailed) as excinfo:
        suite.open(other, sealed, INFO)
    assert_reason(excinfo, "bad-seal")


def test_open_wrong_info(suite):
    recipient, _ = kem_keys(suite.name)
    sealed = suite.seal(recipient.public_key, DATA, INFO)

    with pytest.raises(AuthenticationFailed) as excinfo:
        suite.open(recipient, sealed, INFO + b"x")
    assert_reason(excinfo, "bad-seal")


SEAL_MUTATIONS = {
    "empty": lambda sealed: b"",
    "truncated": lambda sealed: sealed[:-1],
    "extended": lambda sealed: sealed + b"\x00",
    "enc-only": lambda sealed: sealed[:32],
    "enc-bit-flipped": lambda sealed: bytes([sealed[0] ^ 1]) + sealed[1:],
    "tag-bit-flipped": lambda sealed: sealed[:-1] + bytes([sealed[-1] ^ 1]),
}


@pytest.mark.parametrize("mutation", sorted(SEAL_MUTATIONS))
def test_open_mangled_seal(suite, mutation):
    recipient, _ = kem_keys(suite.name)
    sealed = SEAL_MUTATIONS[mutation](suite.seal(recipient.public_key, DATA, INFO))

    with pytest.raises(AuthenticationFailed) as excinfo:
        suite.open(recipient, sealed, INFO)
    assert_reason(excinfo, "bad-seal")


def test_open_every_byte_flipped_default():
    suite = SUITES["default"]
    recipient, _ = kem_keys(suite.name)
    sealed = suite.seal(recipient.public_key, DATA, INFO)

    for index in range(len(sealed)):
        mangled = bytearray(sealed)
        mangled[index] ^= 0x01
        with pytest.raises(AuthenticationFailed) as excinfo:
            suite.open(recipient, bytes(mangled), INFO)
        assert_reason(excinfo, "bad-seal")


def test_open_key_of_other_suite(suite):
    recipient, _ = kem_keys(suite.name)
    foreign, _ = kem_keys(other_suite(suite).name)
    sealed = suite.seal(recipient.public_key, DATA, INFO)

    with pytest.raises(AuthenticationFailed) as excinfo:
        suite.open(foreign, sealed, INFO)
    assert_reason(excinfo, "bad-seal")


def test_seal_key_of_other_suite(suite):
    foreign, _ = kem_keys(other_suite(suite).name)

    with pytest.raises(ConfigError, match=suite.name):
        suite.seal(foreign.public_key, DATA, INFO)


@pytest.mark.parametrize("suite_name", SUITE_NAMES)
@settings(max_examples=50, deadline=None)
@given(garbage=st.binary(max_size=1300))
def test_open_garbage_sealed(suite_name, garbage):
    suite = SUITES[suite_name]
    recipient, _ = kem_keys(suite_name)

    with pytest.raises(AuthenticationFailed) as excinfo:
        suite.open(recipient, garbage, INFO)
    assert_reason(excinfo, "bad-seal")


# kem key encoding


def test_kem_public_raw_round_trip(suite):
    recipient, _ = kem_keys(suite.name)
    raw = recipient.public_key.raw

    decoded = suite.kem_public_from_bytes(raw)
    sealed = suite.seal(decoded, DATA, INFO)

    assert len(raw) == suite.kem_public_size
    assert decoded == recipient.public_key
    assert suite.open(recipient, sealed, INFO) == DATA


@pytest.mark.parametrize("delta", [-1, 1])
def test_kem_public_wrong_length(suite, delta):
    raw = bytes(suite.kem_public_size + delta)

    with pytest.raises(MalformedMessage, match="KEM public key"):
        suite.kem_public_from_bytes(raw)


def test_kem_key_from_parts_rebuilds_key(suite):
    recipient, _ = kem_keys(suite.name)

    rebuilt = suite.kem_key_from_parts(recipient.parts)
    sealed = suite.seal(recipient.public_key, DATA, INFO)

    assert rebuilt.public_key == recipient.public_key
    assert suite.open(rebuilt, sealed, INFO) == DATA


def test_kem_key_from_wrong_parts(suite):
    foreign, _ = kem_keys(other_suite(suite).name)

    with pytest.raises(ConfigError, match="KEM key parts"):
        suite.kem_key_from_parts(foreign.parts)


def test_generate_kem_key_parts(suite):
    recipient, other = kem_keys(suite.name)
    expected_parts = 2 if suite.name == "pq" else 1

    assert len(recipient.parts) == expected_parts
    assert recipient.public_key.raw != other.public_key.raw


# fingerprints


def test_fingerprint_shape():
    value = fingerprint(b"\x01" * 16)

    assert len(value) == 16
    assert all(char in "0123456789abcdef" for char in value)


def test_fingerprint_is_stable_and_distinct():
    key = bytes(range(16))

    assert fingerprint(key) == fingerprint(bytes(key))
    assert fingerprint(key) != fingerprint(key[:-1] + b"\xff")


def test_fingerprint_is_labelled():
    key = bytes(range(16))

    assert fingerprint(key) != hashlib.sha256(key).hexdigest()[:16]
    assert key.hex() not in fingerprint(key)


# local vault


def counting_randbytes():
    """A deterministic random source: successive counter bytes."""
    counter = itertools.count()
    return lambda size: bytes(next(counter) % 256 for _ in range(size))


VAULT_KEY = bytes(range(16))


def test_vault_round_trip():
    vault = LocalVault(VAULT_KEY, counting_randbytes())
    secret = b"kek private key bytes"

    blob = vault.seal(secret, "group 224.1.2.3 kek")

    assert secret not in blob
    assert blob[:12] == bytes(range(12))
    assert vault.open(blob, "group 224.1.2.3 kek") == secret


def test_vault_deterministic_with_fixed_source():
    first = LocalVault(VAULT_KEY, counting_randbytes()).seal(DATA, "label")
    second = LocalVault(VAULT_KEY, counting_randbytes()).seal(DATA, "label")

    assert first == second


def test_vault_nonce_changes_between_seals():
    vault = LocalVault(VAULT_KEY, counting_randbytes())

    first = vault.seal(DATA, "label")
    second = vault.seal(DATA, "label")

    assert first[:12] != second[:12]
    assert first != second


def test_vault_tampered_blob():
    vault = LocalVault(VAULT_KEY, counting_randbytes())
    blob = vault.seal(DATA, "label")

    for index in range(len(blob)):
        mangled = bytearray(blob)
        mangled[index] ^= 0x01
        with pytest.raises(AuthenticationFailed) as excinfo:
            vault.open(bytes(mangled), "label")
        assert_reason(excinfo, "bad-seal")


def test_vault_wrong_label():
    vault = LocalVault(VAULT_KEY, counting_randbytes())
    blob = vault.seal(DATA, "label")

    with pytest.raises(AuthenticationFailed) as excinfo:
        vault.open(blob, "other label")
    assert_reason(excinfo, "bad-seal")


def test_vault_wrong_key():
    blob = LocalVault(VAULT_KEY, counting_randbytes()).seal(DATA, "label")
    other = LocalVault(bytes(16), counting_randbytes())

    with pytest.raises(AuthenticationFailed) as excinfo:
        other.open(blob, "label")
    assert_reason(excinfo, "bad-seal")


@pytest.mark.parametrize("size", [0, 11, 12, 27])
def test_vault_short_blob(size):
    vault = LocalVault(VAULT_KEY, counting_randbytes())

    with pytest.raises(AuthenticationFailed) as excinfo:
        vault.open(bytes(size), "label")
    assert_reason(excinfo, "bad-seal")


@pytest.mark.parametrize("size", [0, 15, 17, 32])
def test_vault_key_size(size):
    with pytest.raises(ConfigError, match=f"{size} bytes"):
        LocalVault(bytes(size), counting_randbytes())


def test_vault_short_random_source():
    vault = LocalVault(VAULT_KEY, lambda size: bytes(size - 1))

    with pytest.raises(ConfigError, match="random source"):
        vault.seal(DATA, "label")
