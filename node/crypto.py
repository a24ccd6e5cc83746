"""Crypto suites: signatures, HPKE sealing, key fingerprints and the local vault.

A topology picks one or more suites, and the wire names each by a one-byte code:

- ``default`` (code 1): Ed25519 signatures, and HPKE (RFC 9180) with
  DHKEM(X25519), HKDF-SHA256 and AES-128-GCM.
- ``pq`` (code 2): ML-DSA-65 signatures (FIPS 204), and HPKE with the hybrid
  ML-KEM-768 + X25519 KEM, HKDF-SHA256 and AES-128-GCM.

Every primitive comes from ``cryptography``. Nothing here reads the clock. Key
generation and HPKE sealing draw from the library's random source, and the
local vault takes its nonces from the caller.
The receiving operations (``CryptoSuite.verify``, ``CryptoSuite.open`` and
``LocalVault.open``) raise only ``AuthenticationFailed`` on bad input, so callers
can turn any failure into a NACK or a drop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa, mlkem, x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from node.errors import AuthenticationFailed, ConfigError, MalformedMessage

SigningKey = Union[ed25519.Ed25519PrivateKey, mldsa.MLDSA65PrivateKey]
VerifyingKey = Union[ed25519.Ed25519PublicKey, mldsa.MLDSA65PublicKey]
KemPart = Union[mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey]

X25519_PUBLIC_SIZE = 32
MLKEM768_PUBLIC_SIZE = 1184
AES_GCM_TAG_SIZE = 16

# domain separation, so a fingerprint never equals a hash computed elsewhere
FINGERPRINT_LABEL = b"smkd key fingerprint v1\x00"
VAULT_LABEL = b"smkd local vault v1\x00"


@dataclass(frozen=True)
class KemPublicKey:
    """A recipient's HPKE public key and the raw bytes that certificates carry.

    ``raw`` is the X25519 public key (32 bytes) for ``default``, and the ML-KEM-768
    encapsulation key followed by the X25519 public key (1184 + 32 bytes) for
    ``pq``.
    """

    suite_name: str
    raw: bytes
    hpke_key: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class KemPrivateKey:
    """A recipient's HPKE private key.

    ``parts`` is the X25519 key alone for ``default``, and the ML-KEM-768 key
    followed by the X25519 key for ``pq``. They are kept apart because the
    library's hybrid key type cannot be serialized or asked for its parts.
    """

    suite_name: str
    parts: tuple[KemPart, ...] = field(repr=False)
    hpke_key: Any = field(repr=False, compare=False)
    public_key: KemPublicKey


@dataclass(frozen=True)
class CryptoSuite:
    """A signature algorithm and an HPKE configuration, named on the wire by code.

    The size fields let wire decoders check lengths before calling in here.
    ``seal_overhead`` is the HPKE encapsulated key plus the AEAD tag, so a sealed
    message is that many bytes longer than its plaintext.
    """

    name: str
    code: int
    signature_name: str
    kem_name: str
    aead_name: str
    key_size: int
    signature_size: int
    kem_public_size: int
    seal_overhead: int
    signing_key_type: type = field(repr=False)
    verifying_key_type: type = field(repr=False)
    hpke_kem: Any = field(repr=False)

    def _hpke_suite(self) -> hpke.Suite:
        return hpke.Suite(self.hpke_kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_128_GCM)

    @property
    def is_hybrid(self) -> bool:
        return self.hpke_kem == hpke.KEM.MLKEM768_X25519

    def generate_signing_key(self) -> SigningKey:
        """Generate a signing private key for this suite."""
        return self.signing_key_type.generate()

    def generate_kem_key(self) -> KemPrivateKey:
        """Generate an HPKE private key for this suite."""
        if self.is_hybrid:
            parts: tuple[KemPart, ...] = (
                mlkem.MLKEM768PrivateKey.generate(),
                x25519.X25519PrivateKey.generate(),
            )
        else:
            parts = (x25519.X25519PrivateKey.generate(),)
        return self.kem_key_from_parts(parts)

    def kem_key_from_parts(self, parts: Sequence[KemPart]) -> KemPrivateKey:
        """Build this suite's HPKE private key from its stored parts.

        Raises ConfigError when the parts are not the types ``KemPrivateKey``
        documents for this suite.
        """
        expected = self._kem_part_types()
        actual = tuple(type(part).__name__ for part in parts)
        matches = len(parts) == len(expected) and all(
            isinstance(part, kind) for part, kind in zip(parts, expected)
        )
        if not matches:
            names = tuple(kind.__name__ for kind in expected)
            raise ConfigError(
                f"suite {self.name} expects KEM key parts {names}, got {actual}"
            )

        if self.is_hybrid:
            ml_key, x_key = parts
            hpke_key = hpke.MLKEM768X25519PrivateKey(ml_key, x_key)
            raw = ml_key.public_key().public_bytes_raw() + (
                x_key.public_key().public_bytes_raw()
            )
        else:
            (hpke_key,) = parts
            raw = hpke_key.public_key().public_bytes_raw()
        public = self.kem_public_from_bytes(raw)
        return KemPrivateKey(self.name, tuple(parts), hpke_key, public)

    def _kem_part_types(self) -> tuple[type, ...]:
        if self.is_hybrid:
            return (mlkem.MLKEM768PrivateKey, x25519.X25519PrivateKey)
        return (x25519.X25519PrivateKey,)

    def kem_public_from_bytes(self, raw: bytes) -> KemPublicKey:
        """Decode a raw KEM public key, laid out as ``KemPublicKey.raw`` describes.

        Raises MalformedMessage when the length or the key is invalid.
        """
        if len(raw) != self.kem_public_size:
            raise MalformedMessage(
                f"{self.name} KEM public key is {len(raw)} bytes, "
                f"expected {self.kem_public_size}"
            )

        try:
            if self.is_hybrid:
                ml_public = mlkem.MLKEM768PublicKey.from_public_bytes(
                    raw[:MLKEM768_PUBLIC_SIZE]
                )
                x_public = x25519.X25519PublicKey.from_public_bytes(
                    raw[MLKEM768_PUBLIC_SIZE:]
                )
                hpke_key: Any = hpke.MLKEM768X25519PublicKey(ml_public, x_public)
            else:
                hpke_key = x25519.X25519PublicKey.from_public_bytes(raw)
        except ValueError as exc:
            raise MalformedMessage(
                f"invalid {self.name} KEM public key: {exc}"
            ) from None
        return KemPublicKey(self.name, bytes(raw), hpke_key)

    def sign(self, private_key: SigningKey, data: bytes) -> bytes:
        """Sign data. Raises ConfigError when the key belongs to another suite."""
        if not isinstance(private_key, self.signing_key_type):
            raise ConfigError(
                f"suite {self.name} signs with {self.signature_name}, "
                f"not {type(private_key).__name__}"
            )
        return private_key.sign(data)

    def verify(self, public_key: VerifyingKey, signature: bytes, data: bytes) -> None:
        """Check a signature over data.

        Raises AuthenticationFailed with reason ``bad-signature`` when the
        signature does not verify, has the wrong length, or the key is not this
        suite's type.
        """
        if not isinstance(public_key, self.verifying_key_type):
            raise AuthenticationFailed(
                f"{type(public_key).__name__} is not a {self.signature_name} key",
                reason="bad-signature",
            )
        if len(signature) != self.signature_size:
            raise AuthenticationFailed(
                f"{self.signature_name} signature is {len(signature)} bytes, "
                f"expected {self.signature_size}",
                reason="bad-signature",
            )

        try:
            public_key.verify(signature, data)
        except (InvalidSignature, ValueError):
            raise AuthenticationFailed(
                f"{self.signature_name} signature does not verify",
                reason="bad-signature",
            ) from None

    def seal(self, kem_public: KemPublicKey, plaintext: bytes, info: bytes) -> bytes:
        """Encrypt plaintext to a recipient with HPKE base mode.

        ``info`` binds the context (message type, group, sender) because the
        library's single-shot API takes no AAD. Returns the encapsulated key
        followed by the ciphertext. Raises ConfigError when the key belongs to
        another suite.
        """
        if not isinstance(kem_public, KemPublicKey):
            raise ConfigError(f"cannot seal to a {type(kem_public).__name__}")
        if kem_public.suite_name != self.name:
            raise ConfigError(
                f"suite {self.name} cannot seal to a {kem_public.suite_name} KEM key"
            )
        return self._hpke_suite().encrypt(plaintext, kem_public.hpke_key, info=info)

    def open(self, kem_private: KemPrivateKey, sealed: bytes, info: bytes) -> bytes:
        """Decrypt what ``seal`` produced.

        Raises AuthenticationFailed with reason ``bad-seal`` for any failure: a
        truncated or altered message, another recipient, another ``info``, or a
        key of another suite.
        """
        if not isinstance(kem_private, KemPrivateKey) or (
            kem_private.suite_name != self.name
        ):
            raise AuthenticationFailed(
                f"suite {self.name} cannot open with a key of another suite",
                reason="bad-seal",
            )

        try:
            return self._hpke_suite().decrypt(
                bytes(sealed), kem_private.hpke_key, info=info
            )
        except (InvalidTag, ValueError):
            raise AuthenticationFailed(
                f"{self.name} sealed message does not open", reason="bad-seal"
            ) from None


SUITES: dict[str, CryptoSuite] = {
    "default": CryptoSuite(
        name="default",
        code=1,
        signature_name="Ed25519",
        kem_name="DHKEM(X25519, HKDF-SHA256)",
        aead_name="AES-128-GCM",
        key_size=16,
        signature_size=64,
        kem_public_size=X25519_PUBLIC_SIZE,
        seal_overhead=X25519_PUBLIC_SIZE + AES_GCM_TAG_SIZE,
        signing_key_type=ed25519.Ed25519PrivateKey,
        verifying_key_type=ed25519.Ed25519PublicKey,
        hpke_kem=hpke.KEM.X25519,
    ),
    "pq": CryptoSuite(
        name="pq",
        code=2,
        signature_name="ML-DSA-65",
        kem_name="ML-KEM-768+X25519",
        aead_name="AES-128-GCM",
        key_size=16,
        signature_size=3309,
        kem_public_size=MLKEM768_PUBLIC_SIZE + X25519_PUBLIC_SIZE,
        # ML-KEM-768 ciphertext (1088 bytes) plus the X25519 ephemeral key
        seal_overhead=1088 + X25519_PUBLIC_SIZE + AES_GCM_TAG_SIZE,
        signing_key_type=mldsa.MLDSA65PrivateKey,
        verifying_key_type=mldsa.MLDSA65PublicKey,
        hpke_kem=hpke.KEM.MLKEM768_X25519,
    ),
}

_SUITES_BY_CODE = {suite.code: suite for suite in SUITES.values()}


def suite_by_code(code: int) -> CryptoSuite:
    """Return the suite a wire code names. Raises MalformedMessage if unknown."""
    suite = _SUITES_BY_CODE.get(code)
    if suite is None:
        known = sorted(_SUITES_BY_CODE)
        raise MalformedMessage(f"unknown crypto suite code {code}, known: {known}")
    return suite


def suite_by_name(name: str) -> CryptoSuite:
    """Return the suite with this name. Raises ConfigError if unknown."""
    suite = SUITES.get(name)
    if suite is None:
        raise ConfigError(
            f"unknown crypto suite {name!r}, expected one of {sorted(SUITES)}"
        )
    return suite


def fingerprint(key: bytes) -> str:
    """Return 16 hex digits of a labelled SHA-256 over a key, safe to publish.

    Traces carry fingerprints so that a test can prove two nodes have the same
    key, and scan captures for the key in clear, without logging the key.
    """
    return hashlib.sha256(FINGERPRINT_LABEL + bytes(key)).hexdigest()[:16]


class LocalVault:
    """Secrets kept enciphered under a node-local AES-128-GCM key.

    A router stores the group key pairs it receives here rather than in clear.
    Each sealed blob is a 12-byte nonce followed by the ciphertext and tag, and
    the label is bound as associated data, so a blob opens only under the label
    it was sealed with.
    """

    KEY_SIZE = 16
    NONCE_SIZE = 12

    def __init__(self, key: bytes, randbytes: Callable[[int], bytes]):
        if len(key) != self.KEY_SIZE:
            raise ConfigError(
                f"local vault key is {len(key)} bytes, expected {self.KEY_SIZE}"
            )
        self._aead = AESGCM(bytes(key))
        self._randbytes = randbytes

    def seal(self, plaintext: bytes, label: str) -> bytes:
        """Encrypt plaintext under the local key, bound to label."""
        nonce = self._randbytes(self.NONCE_SIZE)
        if len(nonce) != self.NONCE_SIZE:
            raise ConfigError(
                f"random source returned {len(nonce)} bytes, "
                f"expected {self.NONCE_SIZE}"
            )
        return nonce + self._aead.encrypt(nonce, plaintext, _vault_aad(label))

    def open(self, blob: bytes, label: str) -> bytes:
        """Decrypt a sealed blob.

        Raises AuthenticationFailed with reason ``bad-seal`` when the blob is
        truncated, altered, or was sealed under another key or label.
        """
        nonce = bytes(blob[: self.NONCE_SIZE])
        ciphertext = bytes(blob[self.NONCE_SIZE :])
        if len(nonce) != self.NONCE_SIZE or len(ciphertext) < AES_GCM_TAG_SIZE:
            raise AuthenticationFailed(
                f"vault blob for {label!r} is too short", reason="bad-seal"
            )

        try:
            return self._aead.decrypt(nonce, ciphertext, _vault_aad(label))
        except InvalidTag:
            raise AuthenticationFailed(
                f"vault blob for {label!r} does not open", reason="bad-seal"
            ) from None


def _vault_aad(label: str) -> bytes:
    return VAULT_LABEL + label.encode("utf-8")
