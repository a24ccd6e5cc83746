"""The testbed PKI: one CA per crypto suite, node certificates and node keys.

A PKI directory contains PEM files in this layout::

    <pki>/ca/<suite>.crt                CA certificate (public)
    <pki>/ca/<suite>.key                CA private key (runner only)
    <pki>/certs/<name>.<suite>.crt      node certificate (public)
    <pki>/keys/<name>/<suite>.sign.key  node signing private key (PKCS8)
    <pki>/keys/<name>/<suite>.kem.key   node KEM private key (PKCS8)

A node is handed ``ca/*.crt``, ``certs/`` and only its own ``keys/<name>/``.
The ``default`` KEM key file contains one X25519 key. The ``pq`` KEM key file
contains two PEM blocks, the ML-KEM-768 key first and the X25519 key second. Private key
files are written with mode 0600 and key directories with mode 0700.

A node certificate has the node name as subject CN and the node's signing key
(Ed25519 or ML-DSA-65) as subject public key, and the suite's CA signs it. It
carries the node's IPv4 address as a SubjectAlternativeName and two
non-critical private extensions whose values are raw bytes, not DER:

- ``ROLE_OID`` (2.25.225565027223722635025845804920576132210): the role name
  in ASCII, one of ``ROLES``.
- ``KEM_KEY_OID`` (2.25.160776441139745271545513435700693181069): the node's
  KEM public key as ``node.crypto.KemPublicKey.raw`` lays it out.

X.509 times have whole-second resolution, so validity bounds are the given
times rounded down to the second.
"""

from __future__ import annotations

import datetime
import ipaddress
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from node.crypto import (
    SUITES,
    CryptoSuite,
    KemPrivateKey,
    KemPublicKey,
    SigningKey,
    VerifyingKey,
    suite_by_name,
)
from node.errors import AuthenticationFailed, ConfigError, MalformedMessage

ROLES = ("host", "router", "core", "initiator")
ROLE_OID = x509.ObjectIdentifier("2.25.225565027223722635025845804920576132210")
KEM_KEY_OID = x509.ObjectIdentifier("2.25.160776441139745271545513435700693181069")

# long enough for any scenario run; expiry tests pass their own validity
DEFAULT_VALIDITY_SECONDS = 30 * 24 * 3600

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NAME_RULE = "expected 1-64 characters of [A-Za-z0-9_.-], other than . and .."
PEM_PRIVATE_KEY = re.compile(
    rb"-----BEGIN PRIVATE KEY-----.+?-----END PRIVATE KEY-----\n?", re.DOTALL
)

KEY_FILE_MODE = 0o600
KEY_DIR_MODE = 0o700
PUBLIC_FILE_MODE = 0o644


def is_valid_name(name: str) -> bool:
    """Return whether name is usable as a node name and as a file name.

    Names are 1-64 characters of ``[A-Za-z0-9_.-]``, except ``.`` and ``..``,
    which would name directories.
    """
    return (
        isinstance(name, str)
        and NAME_PATTERN.fullmatch(name) is not None
        and name not in (".", "..")
    )


def ca_certificate_path(pki_dir: Path, suite_name: str) -> Path:
    return Path(pki_dir) / "ca" / f"{suite_name}.crt"


def ca_key_path(pki_dir: Path, suite_name: str) -> Path:
    return Path(pki_dir) / "ca" / f"{suite_name}.key"


def certificate_path(pki_dir: Path, name: str, suite_name: str) -> Path:
    return Path(pki_dir) / "certs" / f"{name}.{suite_name}.crt"


def keys_dir(pki_dir: Path, name: str) -> Path:
    return Path(pki_dir) / "keys" / name


class CertificateAuthority:
    """The testbed CA: one signing key and self-signed certificate per suite."""

    def __init__(
        self,
        pki_dir: Path,
        keys: dict[str, SigningKey],
        certificates: dict[str, x509.Certificate],
    ):
        self.pki_dir = Path(pki_dir)
        self._keys = keys
        self._certificates = certificates

    @property
    def suites(self) -> tuple[str, ...]:
        return tuple(self._keys)

    @classmethod
    def create(
        cls,
        pki_dir: Path,
        suites: Iterable[str],
        now: float,
        validity_seconds: float,
    ) -> CertificateAuthority:
        """Create a CA key and certificate for each suite under ``pki_dir/ca``.

        Raises ConfigError for an unknown suite, a non-positive validity, or a
        CA file that already exists, because replacing a CA would orphan the
        certificates it issued.
        """
        pki_dir = Path(pki_dir)
        suite_list = _check_suites(suites)
        _check_validity(validity_seconds)
        for suite in suite_list:
            _check_no_ca_file(ca_key_path(pki_dir, suite.name))
            _check_no_ca_file(ca_certificate_path(pki_dir, suite.name))

        _make_layout(pki_dir)
        keys: dict[str, SigningKey] = {}
        certificates: dict[str, x509.Certificate] = {}
        for suite in suite_list:
            key = suite.generate_signing_key()
            certificate = _build_ca_certificate(suite, key, now, validity_seconds)
            _write_private_key(ca_key_path(pki_dir, suite.name), [key])
            _write_file(
                ca_certificate_path(pki_dir, suite.name),
                certificate.public_bytes(serialization.Encoding.PEM),
                PUBLIC_FILE_MODE,
            )
            keys[suite.name] = key
            certificates[suite.name] = certificate
        return cls(pki_dir, keys, certificates)

    @classmethod
    def load(cls, pki_dir: Path) -> CertificateAuthority:
        """Load every suite's CA key and certificate found under ``pki_dir/ca``.

        Raises ConfigError naming the path when no CA key exists or a file is
        unreadable.
        """
        pki_dir = Path(pki_dir)
        keys: dict[str, SigningKey] = {}
        certificates: dict[str, x509.Certificate] = {}
        for suite_name in SUITES:
            key_path = ca_key_path(pki_dir, suite_name)
            if not key_path.exists():
                continue
            suite = suite_by_name(suite_name)
            keys[suite_name] = _load_signing_key(key_path, suite)
            certificates[suite_name] = _load_ca_certificate(
                ca_certificate_path(pki_dir, suite_name)
            )

        if not keys:
            raise ConfigError(f"no CA key found under {pki_dir / 'ca'}")
        return cls(pki_dir, keys, certificates)

    def issue(
        self,
        name: str,
        role: str,
        address: str | ipaddress.IPv4Address,
        suites: Iterable[str],
        now: float,
        validity_seconds: float,
    ) -> None:
        """Generate a node's keys and certificate for each suite and write them.

        An earlier certificate and keys for the same name and suite are
        replaced. Raises ConfigError for an invalid name, role, address or
        validity, or a suite this CA has no key for.
        """
        _check_node(name, role)
        checked_address = _check_address(address, name)
        _check_validity(validity_seconds)
        suite_list = _check_suites(suites)
        for suite in suite_list:
            if suite.name not in self._keys:
                raise ConfigError(
                    f"the CA in {self.pki_dir} has no {suite.name} key, "
                    f"it has {list(self.suites)}"
                )

        node_dir = keys_dir(self.pki_dir, name)
        node_dir.mkdir(mode=KEY_DIR_MODE, exist_ok=True)
        for suite in suite_list:
            self._issue_one(
                suite, name, role, checked_address, now, validity_seconds, node_dir
            )

    def _issue_one(
        self,
        suite: CryptoSuite,
        name: str,
        role: str,
        address: ipaddress.IPv4Address,
        now: float,
        validity_seconds: float,
        node_dir: Path,
    ) -> None:
        signing_key = suite.generate_signing_key()
        kem_key = suite.generate_kem_key()
        certificate = _build_node_certificate(
            issuer=self._certificates[suite.name].subject,
            ca_key=self._keys[suite.name],
            name=name,
            role=role,
            address=address,
            public_key=signing_key.public_key(),
            kem_public=kem_key.public_key,
            now=now,
            validity_seconds=validity_seconds,
        )

        _write_private_key(node_dir / f"{suite.name}.sign.key", [signing_key])
        _write_private_key(node_dir / f"{suite.name}.kem.key", list(kem_key.parts))
        _write_file(
            certificate_path(self.pki_dir, name, suite.name),
            certificate.public_bytes(serialization.Encoding.PEM),
            PUBLIC_FILE_MODE,
        )


def generate_pki(
    pki_dir: Path,
    nodes: Iterable[tuple[str, str, str | ipaddress.IPv4Address]],
    suites: Iterable[str],
    now: float | None = None,
    validity_seconds: float = DEFAULT_VALIDITY_SECONDS,
) -> None:
    """Create a CA and issue every node's keys and certificates in one call.

    ``nodes`` contains ``(name, role, address)`` tuples. ``now`` defaults to the
    system clock. All nodes are checked before anything is written, and
    ConfigError names the first invalid name, role, address or suite, or a
    duplicate name.
    """
    node_list = list(nodes)
    suite_names = [suite.name for suite in _check_suites(suites)]
    _check_validity(validity_seconds)
    _check_nodes(node_list)
    if now is None:
        now = time.time()

    authority = CertificateAuthority.create(
        pki_dir, suite_names, now, validity_seconds
    )
    for name, role, address in node_list:
        authority.issue(name, role, address, suite_names, now, validity_seconds)


@dataclass(frozen=True)
class PeerCertificate:
    """A node certificate whose CA signature has been checked."""

    name: str
    role: str
    address: str
    suite: CryptoSuite
    not_valid_before: float
    not_valid_after: float
    verifying_key: VerifyingKey = field(repr=False)
    kem_public_key: KemPublicKey = field(repr=False)

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check the node's signature over data.

        Raises AuthenticationFailed with reason ``bad-signature``.
        """
        self.suite.verify(self.verifying_key, signature, data)

    def seal(self, plaintext: bytes, info: bytes) -> bytes:
        """Encrypt plaintext to this node with HPKE, binding ``info``."""
        return self.suite.seal(self.kem_public_key, plaintext, info)


@dataclass(frozen=True)
class _CaEntry:
    certificate: x509.Certificate
    public_key: VerifyingKey
    not_valid_before: float
    not_valid_after: float


class Directory:
    """The public half of a PKI directory: CA certificates and node certificates.

    Parsed and CA-verified certificates are cached, so a repeated lookup costs
    one ``stat`` call and no signature check. A certificate file that changes
    (a re-issued certificate) is read and verified again. CA certificates are
    read once per Directory.
    """

    def __init__(self, pki_dir: Path):
        self.pki_dir = Path(pki_dir)
        self._cas: dict[str, _CaEntry] = {}
        self._certificates: dict[
            tuple[str, str], tuple[tuple[int, int, int], PeerCertificate]
        ] = {}
        # CA signature checks done on node certificates, for tests and statistics
        self.verifications = 0

    def lookup(
        self, name: str, suite_name: str, now: float, roles: Iterable[str]
    ) -> PeerCertificate:
        """Return a node's certificate if it is valid at ``now`` for one of roles.

        ``roles`` is an iterable of role names, or a single role name.

        Raises AuthenticationFailed with reason ``unknown-certificate`` (no such
        node, or no CA for the suite), ``bad-certificate`` (unparsable, or not
        signed by the suite's CA), ``expired-certificate`` (the node or CA
        certificate is expired or not yet valid) or ``wrong-role``. Raises
        ConfigError for an unknown suite or role in the arguments.
        """
        suite = suite_by_name(suite_name)
        allowed = _check_roles(roles)
        if not is_valid_name(name):
            raise AuthenticationFailed(
                f"no certificate for invalid node name {name!r}",
                reason="unknown-certificate",
            )

        ca = self._ca(suite)
        peer = self._peer_certificate(name, suite, ca)
        _check_time(f"CA certificate for suite {suite.name}", ca, now)
        _check_time(f"certificate of {name}", peer, now)
        if peer.role not in allowed:
            raise AuthenticationFailed(
                f"{name} has role {peer.role}, expected one of {sorted(allowed)}",
                reason="wrong-role",
            )
        return peer

    def _peer_certificate(
        self, name: str, suite: CryptoSuite, ca: _CaEntry
    ) -> PeerCertificate:
        path = certificate_path(self.pki_dir, name, suite.name)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise AuthenticationFailed(
                f"no {suite.name} certificate for {name}",
                reason="unknown-certificate",
            ) from None
        except OSError as exc:
            raise ConfigError(f"cannot read certificate {path}: {exc}") from None

        # a changed file means a re-issued certificate, so verify it again
        version = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = self._certificates.get((name, suite.name))
        if cached is not None and cached[0] == version:
            return cached[1]

        data = _read_file(path)
        self.verifications += 1
        peer = _verify_node_certificate(data, name, suite, ca)
        self._certificates[(name, suite.name)] = (version, peer)
        return peer

    def _ca(self, suite: CryptoSuite) -> _CaEntry:
        entry = self._cas.get(suite.name)
        if entry is not None:
            return entry

        path = ca_certificate_path(self.pki_dir, suite.name)
        if not path.exists():
            raise AuthenticationFailed(
                f"no CA certificate for suite {suite.name} at {path}",
                reason="unknown-certificate",
            )
        certificate = _load_ca_certificate(path)
        public_key = certificate.public_key()
        if not isinstance(public_key, suite.verifying_key_type):
            raise ConfigError(
                f"CA certificate {path} has a {type(public_key).__name__}, "
                f"expected a {suite.signature_name} key"
            )

        entry = _CaEntry(
            certificate,
            public_key,
            certificate.not_valid_before_utc.timestamp(),
            certificate.not_valid_after_utc.timestamp(),
        )
        self._cas[suite.name] = entry
        return entry


class Identity:
    """A node's own private keys, one signing key and one KEM key per suite."""

    def __init__(
        self,
        name: str,
        signing_keys: dict[str, SigningKey],
        kem_keys: dict[str, KemPrivateKey],
    ):
        self.name = name
        self._signing_keys = signing_keys
        self._kem_keys = kem_keys

    @property
    def suites(self) -> tuple[str, ...]:
        return tuple(self._signing_keys)

    @classmethod
    def load(cls, pki_dir: Path, name: str, suites: Iterable[str]) -> Identity:
        """Load a node's keys from ``pki_dir/keys/<name>/``.

        Raises ConfigError for an invalid name or unknown suite, and ConfigError
        naming the path for a missing, unreadable or mismatched key file.
        """
        if not is_valid_name(name):
            raise ConfigError(f"invalid node name {name!r}: {_NAME_RULE}")
        suite_list = _check_suites(suites)

        node_dir = keys_dir(Path(pki_dir), name)
        signing_keys: dict[str, SigningKey] = {}
        kem_keys: dict[str, KemPrivateKey] = {}
        for suite in suite_list:
            signing_path = node_dir / f"{suite.name}.sign.key"
            signing_keys[suite.name] = _load_signing_key(signing_path, suite)
            kem_path = node_dir / f"{suite.name}.kem.key"
            kem_keys[suite.name] = _load_kem_key(kem_path, suite)
        return cls(name, signing_keys, kem_keys)

    def sign(self, suite_name: str, data: bytes) -> bytes:
        """Sign data with this node's key for a suite.

        Raises ConfigError when that suite's key was not loaded.
        """
        key = self._signing_key(suite_name)
        return suite_by_name(suite_name).sign(key, data)

    def open(self, suite_name: str, sealed: bytes, info: bytes) -> bytes:
        """Decrypt a message sealed to this node.

        Raises AuthenticationFailed with reason ``bad-seal`` when it does not
        open, including when no key of that suite was loaded.
        """
        key = self._kem_keys.get(suite_name)
        if key is None:
            raise AuthenticationFailed(
                f"{self.name} has no {suite_name!r} KEM key loaded",
                reason="bad-seal",
            )
        return suite_by_name(suite_name).open(key, sealed, info)

    def verifying_key(self, suite_name: str) -> VerifyingKey:
        """Return the public half of this node's signing key for a suite."""
        return self._signing_key(suite_name).public_key()

    def kem_public_key(self, suite_name: str) -> KemPublicKey:
        """Return the public half of this node's KEM key for a suite."""
        key = self._kem_keys.get(suite_name)
        if key is None:
            raise ConfigError(f"{self.name} has no {suite_name!r} KEM key loaded")
        return key.public_key

    def _signing_key(self, suite_name: str) -> SigningKey:
        key = self._signing_keys.get(suite_name)
        if key is None:
            raise ConfigError(
                f"{self.name} has no {suite_name!r} signing key loaded, "
                f"it has {list(self.suites)}"
            )
        return key


def _check_no_ca_file(path: Path) -> None:
    if path.exists():
        raise ConfigError(
            f"CA file {path} already exists. Remove the PKI directory, "
            "or use CertificateAuthority.load to issue more certificates"
        )


def _check_suites(suites: Iterable[str]) -> list[CryptoSuite]:
    if isinstance(suites, str):
        raise ConfigError(f"suites must be a list of names, got the string {suites!r}")
    checked: list[CryptoSuite] = []
    for name in suites:
        suite = suite_by_name(name)
        if suite not in checked:
            checked.append(suite)
    if not checked:
        raise ConfigError(f"no crypto suite given, expected some of {tuple(SUITES)}")
    return checked


def _check_roles(roles: Iterable[str]) -> frozenset[str]:
    if isinstance(roles, str):
        roles = (roles,)
    allowed = frozenset(roles)
    unknown = allowed.difference(ROLES)
    if unknown:
        raise ConfigError(f"unknown roles {sorted(unknown)}, expected some of {ROLES}")
    return allowed


def _check_validity(validity_seconds: float) -> None:
    if not validity_seconds > 0:
        raise ConfigError(
            f"certificate validity is {validity_seconds} seconds, expected more than 0"
        )


def _check_node(name: str, role: str) -> None:
    if not is_valid_name(name):
        raise ConfigError(f"invalid node name {name!r}: {_NAME_RULE}")
    if role not in ROLES:
        raise ConfigError(
            f"invalid role {role!r} for node {name}, expected one of {ROLES}"
        )


def _check_address(
    address: str | ipaddress.IPv4Address, name: str
) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(address)
    except ValueError:
        raise ConfigError(
            f"invalid address {address!r} for node {name}, expected an IPv4 address"
        ) from None


def _check_nodes(nodes: list[tuple[str, str, str | ipaddress.IPv4Address]]) -> None:
    seen: set[str] = set()
    for index, node in enumerate(nodes):
        if len(node) != 3:
            raise ConfigError(
                f"node entry {index} is {node!r}, expected (name, role, address)"
            )
        name, role, address = node
        _check_node(name, role)
        _check_address(address, name)
        if name in seen:
            raise ConfigError(f"duplicate node name {name!r}")
        seen.add(name)


def _check_time(label: str, holder: PeerCertificate | _CaEntry, now: float) -> None:
    if now < holder.not_valid_before:
        raise AuthenticationFailed(
            f"{label} is not valid before {_format_time(holder.not_valid_before)}, "
            f"now is {_format_time(now)}",
            reason="expired-certificate",
        )
    if now > holder.not_valid_after:
        raise AuthenticationFailed(
            f"{label} expired at {_format_time(holder.not_valid_after)}, "
            f"now is {_format_time(now)}",
            reason="expired-certificate",
        )


def _format_time(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.timezone.utc)
    return moment.isoformat(timespec="seconds")


def _to_datetime(seconds: float) -> datetime.datetime:
    whole_seconds = math.floor(seconds)
    return datetime.datetime.fromtimestamp(whole_seconds, tz=datetime.timezone.utc)


def _ca_name(suite: CryptoSuite) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, f"smkd testbed CA ({suite.name})")]
    )


def _build_ca_certificate(
    suite: CryptoSuite, key: SigningKey, now: float, validity_seconds: float
) -> x509.Certificate:
    name = _ca_name(suite)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_to_datetime(now))
        .not_valid_after(_to_datetime(now + validity_seconds))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    )
    # Ed25519 and ML-DSA sign the message itself, so no hash algorithm is given
    return builder.sign(key, None)


def _build_node_certificate(
    *,
    issuer: x509.Name,
    ca_key: SigningKey,
    name: str,
    role: str,
    address: ipaddress.IPv4Address,
    public_key: VerifyingKey,
    kem_public: KemPublicKey,
    now: float,
    validity_seconds: float,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(_to_datetime(now))
        .not_valid_after(_to_datetime(now + validity_seconds))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(address)]), critical=False
        )
        .add_extension(
            x509.UnrecognizedExtension(ROLE_OID, role.encode("ascii")), critical=False
        )
        .add_extension(
            x509.UnrecognizedExtension(KEM_KEY_OID, kem_public.raw), critical=False
        )
    )
    return builder.sign(ca_key, None)


def _verify_node_certificate(
    data: bytes, name: str, suite: CryptoSuite, ca: _CaEntry
) -> PeerCertificate:
    """Parse a node certificate and check it against the suite's CA.

    Raises AuthenticationFailed with reason ``bad-certificate``.
    """
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise _bad_certificate(name, suite, f"cannot be parsed: {exc}") from None

    # the signature first, so that nothing unverified is interpreted
    if certificate.issuer != ca.certificate.subject:
        raise _bad_certificate(name, suite, "issuer is not the suite's CA")
    if certificate.signature_algorithm_oid != ca.certificate.signature_algorithm_oid:
        raise _bad_certificate(name, suite, "signature algorithm is not the CA's")
    try:
        suite.verify(
            ca.public_key, certificate.signature, certificate.tbs_certificate_bytes
        )
    except AuthenticationFailed:
        raise _bad_certificate(name, suite, "CA signature does not verify") from None

    try:
        return _read_node_fields(certificate, name, suite)
    except (ValueError, MalformedMessage, x509.ExtensionNotFound) as exc:
        raise _bad_certificate(name, suite, str(exc)) from None


def _read_node_fields(
    certificate: x509.Certificate, name: str, suite: CryptoSuite
) -> PeerCertificate:
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [attribute.value for attribute in common_names] != [name]:
        raise ValueError(f"subject is {certificate.subject.rfc4514_string()}")

    public_key = certificate.public_key()
    if not isinstance(public_key, suite.verifying_key_type):
        raise ValueError(f"subject key is a {type(public_key).__name__}")

    extensions = certificate.extensions
    role = extensions.get_extension_for_oid(ROLE_OID).value.value.decode("ascii")
    if role not in ROLES:
        raise ValueError(f"role {role!r} is not one of {ROLES}")
    kem_raw = extensions.get_extension_for_oid(KEM_KEY_OID).value.value
    kem_public = suite.kem_public_from_bytes(kem_raw)
    san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    addresses = san.get_values_for_type(x509.IPAddress)
    if len(addresses) != 1 or not isinstance(addresses[0], ipaddress.IPv4Address):
        raise ValueError(f"expected one IPv4 address, found {addresses}")

    return PeerCertificate(
        name=name,
        role=role,
        address=str(addresses[0]),
        suite=suite,
        not_valid_before=certificate.not_valid_before_utc.timestamp(),
        not_valid_after=certificate.not_valid_after_utc.timestamp(),
        verifying_key=public_key,
        kem_public_key=kem_public,
    )


def _bad_certificate(
    name: str, suite: CryptoSuite, problem: str
) -> AuthenticationFailed:
    return AuthenticationFailed(
        f"{suite.name} certificate of {name} is invalid: {problem}",
        reason="bad-certificate",
    )


def _make_layout(pki_dir: Path) -> None:
    pki_dir.mkdir(parents=True, exist_ok=True)
    (pki_dir / "ca").mkdir(exist_ok=True)
    (pki_dir / "certs").mkdir(exist_ok=True)
    (pki_dir / "keys").mkdir(mode=KEY_DIR_MODE, exist_ok=True)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    # os.open sets the mode at creation, so a private key is never world-readable
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)

    # a reader sees the old file or the new one, never a partial write, and the
    # new inode shows a Directory cache that the certificate changed
    os.replace(temporary, path)


def _write_private_key(path: Path, keys: list) -> None:
    blocks = [
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for key in keys
    ]
    _write_file(path, b"".join(blocks), KEY_FILE_MODE)


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None


def _load_private_keys(path: Path) -> list:
    blocks = PEM_PRIVATE_KEY.findall(_read_file(path))
    if not blocks:
        raise ConfigError(f"no PEM private key found in {path}")
    try:
        return [serialization.load_pem_private_key(block, None) for block in blocks]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid private key in {path}: {exc}") from None


def _load_signing_key(path: Path, suite: CryptoSuite) -> SigningKey:
    keys = _load_private_keys(path)
    if len(keys) != 1 or not isinstance(keys[0], suite.signing_key_type):
        found = [type(key).__name__ for key in keys]
        raise ConfigError(
            f"{path} contains {found}, expected one {suite.signature_name} key"
        )
    return keys[0]


def _load_kem_key(path: Path, suite: CryptoSuite) -> KemPrivateKey:
    parts = _load_private_keys(path)
    try:
        return suite.kem_key_from_parts(parts)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _load_ca_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read_file(path))
    except ValueError as exc:
        raise ConfigError(f"invalid CA certificate {path}: {exc}") from None
