"""Tests for node.pki: issuing, loading and checking testbed certificates."""

import datetime
import ipaddress
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from node.crypto import SUITES
from node.errors import AuthenticationFailed, ConfigError
from node.pki import (
    KEM_KEY_OID,
    ROLE_OID,
    ROLES,
    CertificateAuthority,
    Directory,
    Identity,
    certificate_path,
    generate_pki,
)

NOW = 1_700_000_000.0
VALIDITY = 3600.0
SUITE_NAMES = sorted(SUITES)
NODES = [
    ("h1", "host", "10.0.1.1"),
    ("r1", "router", "10.0.2.1"),
    ("c1", "core", "10.0.3.1"),
    ("i1", "initiator", "10.0.4.1"),
]
DATA = b"join ack"
INFO = b"group access package"


@pytest.fixture(scope="module")
def shared_pki(tmp_path_factory) -> Path:
    """A PKI with both suites that tests only read."""
    pki_dir = tmp_path_factory.mktemp("shared") / "pki"
    generate_pki(pki_dir, NODES, SUITE_NAMES, now=NOW, validity_seconds=VALIDITY)
    return pki_dir


@pytest.fixture
def pki(shared_pki, tmp_path) -> Path:
    """A private copy of the shared PKI for tests that change files."""
    copy = tmp_path / "pki"
    shutil.copytree(shared_pki, copy)
    return copy


@pytest.fixture(params=SUITE_NAMES)
def suite_name(request) -> str:
    return request.param


def lookup_error(
    directory: Directory, name: str, suite_name: str, now: float = NOW, roles=ROLES
) -> AuthenticationFailed:
    with pytest.raises(AuthenticationFailed) as excinfo:
        directory.lookup(name, suite_name, now, roles)
    assert excinfo.type is AuthenticationFailed
    return excinfo.value


def load_ca_key(pki_dir: Path, suite_name: str):
    data = (pki_dir / "ca" / f"{suite_name}.key").read_bytes()
    return serialization.load_pem_private_key(data, None)


def node_certificate_builder(
    pki_dir: Path, name: str, suite_name: str, extensions: list
) -> x509.CertificateBuilder:
    """A builder that copies a real node certificate except for its extensions."""
    original = x509.load_pem_x509_certificate(
        certificate_path(pki_dir, name, suite_name).read_bytes()
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(original.subject)
        .issuer_name(original.issuer)
        .public_key(original.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(original.not_valid_before_utc)
        .not_valid_after(original.not_valid_after_utc)
    )
    for extension in extensions:
        builder = builder.add_extension(extension, critical=False)
    return builder


def write_certificate(pki_dir: Path, name: str, suite_name: str, certificate) -> None:
    path = certificate_path(pki_dir, name, suite_name)
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


# layout


def test_generate_pki_layout(shared_pki):
    for suite_name in SUITE_NAMES:
        assert (shared_pki / "ca" / f"{suite_name}.crt").is_file()
        assert (shared_pki / "ca" / f"{suite_name}.key").is_file()
        for name, _, _ in NODES:
            assert certificate_path(shared_pki, name, suite_name).is_file()
            assert (shared_pki / "keys" / name / f"{suite_name}.sign.key").is_file()
            assert (shared_pki / "keys" / name / f"{suite_name}.kem.key").is_file()


def test_generate_pki_private_key_modes(shared_pki):
    private_files = list((shared_pki / "keys").rglob("*.key"))
    private_files += list((shared_pki / "ca").glob("*.key"))

    assert len(private_files) == len(SUITE_NAMES) * (2 * len(NODES) + 1)
    for path in private_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for name, _, _ in NODES:
        key_dir = shared_pki / "keys" / name
        assert stat.S_IMODE(key_dir.stat().st_mode) & 0o077 == 0, key_dir


def test_pq_kem_key_file_has_two_blocks(shared_pki):
    text = (shared_pki / "keys" / "r1" / "pq.kem.key").read_text()

    assert text.count("-----BEGIN PRIVATE KEY-----") == 2


def test_certificate_contents(shared_pki, suite_name):
    certificate = x509.load_pem_x509_certificate(
        certificate_path(shared_pki, "r1", suite_name).read_bytes()
    )
    identity = Identity.load(shared_pki, "r1", [suite_name])
    extensions = certificate.extensions

    common_name = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [attribute.value for attribute in common_name] == ["r1"]
    assert extensions.get_extension_for_oid(ROLE_OID).value.value == b"router"
    assert not extensions.get_extension_for_oid(ROLE_OID).critical
    kem_value = extensions.get_extension_for_oid(KEM_KEY_OID).value.value
    assert kem_value == identity.kem_public_key(suite_name).raw
    assert certificate.public_key() == identity.verifying_key(suite_name)
    assert certificate.not_valid_before_utc.timestamp() == NOW
    assert certificate.not_valid_after_utc.timestamp() == NOW + VALIDITY


# issue and look up


@pytest.mark.parametrize("name, role, address", NODES)
def test_lookup_issued_node(shared_pki, suite_name, name, role, address):
    directory = Directory(shared_pki)

    peer = directory.lookup(name, suite_name, NOW + 10, ROLES)

    assert peer.name == name
    assert peer.role == role
    assert peer.address == address
    assert peer.suite is SUITES[suite_name]
    assert peer.not_valid_before == NOW
    assert peer.not_valid_after == NOW + VALIDITY


def test_peer_verifies_identity_signature(shared_pki, suite_name):
    identity = Identity.load(shared_pki, "c1", [suite_name])
    peer = Directory(shared_pki).lookup("c1", suite_name, NOW, ["core"])

    signature = identity.sign(suite_name, DATA)

    peer.verify(signature, DATA)
    with pytest.raises(AuthenticationFailed) as excinfo:
        peer.verify(signature, DATA + b"x")
    assert excinfo.value.reason == "bad-signature"


def test_peer_rejects_other_node_signature(shared_pki, suite_name):
    impostor = Identity.load(shared_pki, "h1", [suite_name])
    peer = Directory(shared_pki).lookup("c1", suite_name, NOW, ["core"])

    with pytest.raises(AuthenticationFailed) as excinfo:
        peer.verify(impostor.sign(suite_name, DATA), DATA)
    assert excinfo.value.reason == "bad-signature"


def test_seal_to_peer_opens_at_identity(shared_pki, suite_name):
    peer = Directory(shared_pki).lookup("h1", suite_name, NOW, ["host"])
    identity = Identity.load(shared_pki, "h1", [suite_name])
    other = Identity.load(shared_pki, "r1", [suite_name])

    sealed = peer.seal(DATA, INFO)

    assert identity.open(suite_name, sealed, INFO) == DATA
    with pytest.raises(AuthenticationFailed) as excinfo:
        other.open(suite_name, sealed, INFO)
    assert excinfo.value.reason == "bad-seal"


def test_lookup_caches_verification(shared_pki, suite_name):
    directory = Directory(shared_pki)

    first = directory.lookup("r1", suite_name, NOW, ROLES)
    second = directory.lookup("r1", suite_name, NOW + 1, ["router"])

    assert second is first
    assert directory.verifications == 1


def test_cached_lookup_checks_time_role(shared_pki, suite_name):
    directory = Directory(shared_pki)
    directory.lookup("r1", suite_name, NOW, ROLES)

    expired = lookup_error(directory, "r1", suite_name, now=NOW + VALIDITY + 1)
    wrong_role = lookup_error(directory, "r1", suite_name, roles=["core"])

    assert expired.reason == "expired-certificate"
    assert wrong_role.reason == "wrong-role"
    assert directory.verifications == 1


def test_reissued_certificate_reverified(pki):
    directory = Directory(pki)
    before = directory.lookup("r1", "default", NOW, ROLES)
    authority = CertificateAuthority.load(pki)

    authority.issue("r1", "core", "10.9.9.9", ["default"], NOW + 60, VALIDITY)
    after = directory.lookup("r1", "default", NOW + 60, ROLES)

    assert directory.verifications == 2
    assert after.role == "core"
    assert after.address == "10.9.9.9"
    assert after.verifying_key != before.verifying_key


def test_ca_load_then_issue(pki, suite_name):
    authority = CertificateAuthority.load(pki)

    authority.issue("h2", "host", "10.0.1.2", [suite_name], NOW, VALIDITY)
    peer = Directory(pki).lookup("h2", suite_name, NOW, ["host"])
    identity = Identity.load(pki, "h2", [suite_name])

    assert set(authority.suites) == set(SUITE_NAMES)
    assert peer.address == "10.0.1.2"
    peer.verify(identity.sign(suite_name, DATA), DATA)


# rejected lookups


def test_lookup_unknown_name(shared_pki, suite_name):
    error = lookup_error(Directory(shared_pki), "nobody", suite_name)

    assert error.reason == "unknown-certificate"


@pytest.mark.parametrize("name", ["../ca/default", "..", "", "a/b", "x" * 65])
def test_lookup_invalid_name(shared_pki, name):
    error = lookup_error(Directory(shared_pki), name, "default")

    assert error.reason == "unknown-certificate"


def test_lookup_suite_without_ca(tmp_path):
    pki_dir = tmp_path / "pki"
    generate_pki(pki_dir, NODES[:1], ["default"], now=NOW, validity_seconds=VALIDITY)

    error = lookup_error(Directory(pki_dir), "h1", "pq")

    assert error.reason == "unknown-certificate"


def test_lookup_expired(shared_pki, suite_name):
    error = lookup_error(
        Directory(shared_pki), "h1", suite_name, now=NOW + VALIDITY + 1
    )

    assert error.reason == "expired-certificate"
    assert "expired" in error.detail


def test_lookup_not_yet_valid(shared_pki, suite_name):
    error = lookup_error(Directory(shared_pki), "h1", suite_name, now=NOW - 1)

    assert error.reason == "expired-certificate"
    assert "not valid before" in error.detail


def test_lookup_validity_bounds_inclusive(shared_pki, suite_name):
    directory = Directory(shared_pki)

    assert directory.lookup("h1", suite_name, NOW, ROLES).name == "h1"
    assert directory.lookup("h1", suite_name, NOW + VALIDITY, ROLES).name == "h1"


def test_lookup_expired_ca(tmp_path):
    pki_dir = tmp_path / "pki"
    authority = CertificateAuthority.create(pki_dir, ["default"], NOW, 100.0)
    authority.issue("h1", "host", "10.0.1.1", ["default"], NOW, VALIDITY)
    directory = Directory(pki_dir)

    assert directory.lookup("h1", "default", NOW + 50, ROLES).name == "h1"
    error = lookup_error(directory, "h1", "default", now=NOW + 200)
    assert error.reason == "expired-certificate"
    assert "CA certificate" in error.detail


def test_lookup_wrong_role(shared_pki, suite_name):
    error = lookup_error(
        Directory(shared_pki), "h1", suite_name, roles=["router", "core"]
    )

    assert error.reason == "wrong-role"
    assert "host" in error.detail


def test_lookup_unknown_role_argument(shared_pki):
    with pytest.raises(ConfigError, match="'gkdc'"):
        Directory(shared_pki).lookup("h1", "default", NOW, ["gkdc"])


def test_lookup_unknown_suite_argument(shared_pki):
    with pytest.raises(ConfigError, match="'rot13'"):
        Directory(shared_pki).lookup("h1", "rot13", NOW, ROLES)


def test_certificate_from_other_ca(pki, tmp_path, suite_name):
    # the other CA has the same subject name, so only its signature differs
    other_dir = tmp_path / "other"
    generate_pki(other_dir, NODES, [suite_name], now=NOW, validity_seconds=VALIDITY)
    source = certificate_path(other_dir, "r1", suite_name)
    shutil.copyfile(source, certificate_path(pki, "r1", suite_name))

    error = lookup_error(Directory(pki), "r1", suite_name)

    assert error.reason == "bad-certificate"
    assert "signature" in error.detail


def test_forged_certificate_self_signed(pki, suite_name):
    # a forger keeps the real layout and issuer name but signs with its own key
    suite = SUITES[suite_name]
    forger_key = suite.generate_signing_key()
    identity = Identity.load(pki, "h1", [suite_name])
    extensions = [
        x509.UnrecognizedExtension(ROLE_OID, b"core"),
        x509.UnrecognizedExtension(
            KEM_KEY_OID, identity.kem_public_key(suite_name).raw
        ),
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.0.1.1"))]),
    ]
    builder = node_certificate_builder(pki, "h1", suite_name, extensions)
    write_certificate(pki, "h1", suite_name, builder.sign(forger_key, None))

    error = lookup_error(Directory(pki), "h1", suite_name)

    assert error.reason == "bad-certificate"


@pytest.mark.parametrize(
    "content",
    [b"", b"not a certificate", b"-----BEGIN CERTIFICATE-----\nAAAA\n"],
    ids=["empty", "text", "broken-pem"],
)
def test_forged_certificate_garbage(pki, suite_name, content):
    certificate_path(pki, "h1", suite_name).write_bytes(content)

    error = lookup_error(Directory(pki), "h1", suite_name)

    assert error.reason == "bad-certificate"


def test_forged_certificate_tampered_signature(pki, suite_name):
    path = certificate_path(pki, "h1", suite_name)
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    der = bytearray(certificate.public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    tampered = x509.load_der_x509_certificate(bytes(der))
    write_certificate(pki, "h1", suite_name, tampered)

    error = lookup_error(Directory(pki), "h1", suite_name)

    assert error.reason == "bad-certificate"


def test_forged_certificate_tampered_role(pki, suite_name):
    # the role bytes sit inside the signed part, so editing them breaks it
    path = certificate_path(pki, "h1", suite_name)
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    der = certificate.public_bytes(serialization.Encoding.DER)
    assert der.count(b"host") == 1
    tampered = x509.load_der_x509_certificate(der.replace(b"host", b"core"))
    write_certificate(pki, "h1", suite_name, tampered)

    error = lookup_error(Directory(pki), "h1", suite_name)

    assert error.reason == "bad-certificate"


def test_certificate_under_other_name(pki, suite_name):
    source = certificate_path(pki, "c1", suite_name)
    shutil.copyfile(source, certificate_path(pki, "h1", suite_name))

    error = lookup_error(Directory(pki), "h1", suite_name)

    assert error.reason == "bad-certificate"
    assert "subject" in error.detail


def test_certificate_of_other_suite(pki):
    source = certificate_path(pki, "h1", "pq")
    shutil.copyfile(source, certificate_path(pki, "h1", "default"))

    error = lookup_error(Directory(pki), "h1", "default")

    assert error.reason == "bad-certificate"


@pytest.mark.parametrize("missing", ["role", "kem", "address"])
def test_ca_signed_missing_field(pki, suite_name, missing):
    # signed by the real CA, so only the field check can reject it
    identity = Identity.load(pki, "h1", [suite_name])
    extensions = {
        "role": x509.UnrecognizedExtension(ROLE_OID, b"host"),
        "kem": x509.UnrecognizedExtension(
            KEM_KEY_OID, identity.kem_public_key(suite_name).raw
        ),
        "address": x509.SubjectAlternativeName([x509.DNSName("h1.example")]),
    }
    del extensions[missing]
    builder = node_certificate_builder(pki, "h1", suite_name, list(extensions.values()))
    certificate = builder.sign(load_ca_key(pki, suite_name), None)
    write_certificate(pki, "h1", suite_name, certificate)

    error = lookup_error(Directory(pki), "h1", suite_name)

    assert error.reason == "bad-certificate"


@pytest.mark.parametrize(
    "field, value",
    [("role", b"gkdc"), ("kem", b"\x00" * 5)],
)
def test_ca_signed_invalid_field(pki, suite_name, field, value):
    identity = Identity.load(pki, "h1", [suite_name])
    values = {"role": b"host", "kem": identity.kem_public_key(suite_name).raw}
    values[field] = value
    extensions = [
        x509.UnrecognizedExtension(ROLE_OID, values["role"]),
        x509.UnrecognizedExtension(KEM_KEY_OID, values["kem"]),
        x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("10.0.1.1"))]),
    ]
    builder = node_certificate_builder(pki, "h1", suite_name, extensions)
    certificate = builder.sign(load_ca_key(pki, suite_name), None)
    write_certificate(pki, "h1", suite_name, certificate)

    error = lookup_error(Directory(pki), "h1", suite_name)

    assert error.reason == "bad-certificate"


# identity


def node_view(pki_dir: Path, name: str, destination: Path) -> Path:
    """Copy what a node is handed: CA certificates, certs/ and its own keys."""
    (destination / "ca").mkdir(parents=True)
    for path in (pki_dir / "ca").glob("*.crt"):
        shutil.copy(path, destination / "ca" / path.name)
    shutil.copytree(pki_dir / "certs", destination / "certs")
    shutil.copytree(pki_dir / "keys" / name, destination / "keys" / name)
    return destination


def test_identity_needs_only_own_keys(shared_pki, tmp_path):
    view = node_view(shared_pki, "r1", tmp_path / "r1")

    identity = Identity.load(view, "r1", SUITE_NAMES)
    directory = Directory(view)

    assert identity.name == "r1"
    assert list((view / "keys").iterdir()) == [view / "keys" / "r1"]
    assert not list((view / "ca").glob("*.key"))
    for suite_name in SUITE_NAMES:
        peer = directory.lookup("r1", suite_name, NOW, ["router"])
        peer.verify(identity.sign(suite_name, DATA), DATA)
        assert identity.open(suite_name, peer.seal(DATA, INFO), INFO) == DATA


def test_identity_other_node_missing(shared_pki, tmp_path):
    view = node_view(shared_pki, "r1", tmp_path / "r1")

    with pytest.raises(ConfigError, match="h1/default.sign.key"):
        Identity.load(view, "h1", ["default"])


@pytest.mark.parametrize("file_name", ["default.sign.key", "default.kem.key"])
def test_identity_missing_file(pki, file_name):
    path = pki / "keys" / "h1" / file_name
    path.unlink()

    with pytest.raises(ConfigError, match=str(path)):
        Identity.load(pki, "h1", ["default"])


def test_identity_garbage_file(pki):
    path = pki / "keys" / "h1" / "default.sign.key"
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")

    with pytest.raises(ConfigError, match=str(path)):
        Identity.load(pki, "h1", ["default"])


def test_identity_key_of_wrong_suite(pki):
    default_key = pki / "keys" / "h1" / "default.sign.key"
    pq_key = pki / "keys" / "h1" / "pq.sign.key"
    shutil.copyfile(default_key, pq_key)

    with pytest.raises(ConfigError, match=str(pq_key)):
        Identity.load(pki, "h1", ["pq"])


def test_identity_kem_key_missing_part(pki):
    path = pki / "keys" / "h1" / "pq.kem.key"
    first_block = path.read_text().split("-----END PRIVATE KEY-----")[0]
    path.write_text(first_block + "-----END PRIVATE KEY-----\n")

    with pytest.raises(ConfigError, match=str(path)):
        Identity.load(pki, "h1", ["pq"])


def test_identity_invalid_name(shared_pki):
    with pytest.raises(ConfigError, match="'../h1'"):
        Identity.load(shared_pki, "../h1", ["default"])


def test_identity_suite_not_loaded(shared_pki):
    identity = Identity.load(shared_pki, "h1", ["default"])

    with pytest.raises(ConfigError, match="'pq'"):
        identity.sign("pq", DATA)
    with pytest.raises(AuthenticationFailed) as excinfo:
        identity.open("pq", b"sealed", INFO)
    assert excinfo.value.reason == "bad-seal"


# generate_pki input checks


@pytest.mark.parametrize(
    "name", ["", "x" * 65, "a/b", "a b", "..", ".", "h\u00e9", "a\x00b"]
)
def test_generate_pki_rejects_bad_name(tmp_path, name):
    nodes = [*NODES, (name, "host", "10.0.9.9")]

    with pytest.raises(ConfigError, match="invalid node name"):
        generate_pki(tmp_path / "pki", nodes, ["default"], now=NOW)
    assert not (tmp_path / "pki").exists()


def test_generate_pki_accepts_long_name(tmp_path):
    name = "A-z_0.9" + "x" * 57

    generate_pki(tmp_path / "pki", [(name, "host", "10.0.0.1")], ["default"], now=NOW)

    assert Directory(tmp_path / "pki").lookup(name, "default", NOW, ROLES).name == name


def test_generate_pki_rejects_bad_role(tmp_path):
    nodes = [*NODES, ("g1", "gkdc", "10.0.9.9")]

    with pytest.raises(ConfigError, match="'gkdc'") as excinfo:
        generate_pki(tmp_path / "pki", nodes, ["default"], now=NOW)
    assert "router" in str(excinfo.value)
    assert not (tmp_path / "pki").exists()


def test_generate_pki_rejects_duplicate(tmp_path):
    nodes = [*NODES, ("r1", "router", "10.0.9.9")]

    with pytest.raises(ConfigError, match="duplicate node name 'r1'"):
        generate_pki(tmp_path / "pki", nodes, ["default"], now=NOW)
    assert not (tmp_path / "pki").exists()


def test_generate_pki_rejects_unknown_suite(tmp_path):
    with pytest.raises(ConfigError, match="'rot13'") as excinfo:
        generate_pki(tmp_path / "pki", NODES, ["default", "rot13"], now=NOW)
    assert "pq" in str(excinfo.value)
    assert not (tmp_path / "pki").exists()


@pytest.mark.parametrize("address", ["10.0.0.256", "::1", "host.example", ""])
def test_generate_pki_rejects_bad_address(tmp_path, address):
    nodes = [("h9", "host", address)]

    with pytest.raises(ConfigError, match="invalid address"):
        generate_pki(tmp_path / "pki", nodes, ["default"], now=NOW)
    assert not (tmp_path / "pki").exists()


def test_generate_pki_rejects_no_suite(tmp_path):
    with pytest.raises(ConfigError, match="no crypto suite"):
        generate_pki(tmp_path / "pki", NODES, [], now=NOW)


def test_generate_pki_rejects_bad_validity(tmp_path):
    with pytest.raises(ConfigError, match="validity"):
        generate_pki(tmp_path / "pki", NODES, ["default"], now=NOW, validity_seconds=0)


def test_generate_pki_now_defaults_to_clock(tmp_path):
    before = datetime.datetime.now(datetime.timezone.utc).timestamp()

    generate_pki(tmp_path / "pki", NODES[:1], ["default"])
    peer = Directory(tmp_path / "pki").lookup("h1", "default", before + 1, ROLES)

    assert before - 1 <= peer.not_valid_before <= before + 1


def test_ca_create_rejects_existing(pki):
    with pytest.raises(ConfigError, match="already exists"):
        CertificateAuthority.create(pki, ["default"], NOW, VALIDITY)


def test_ca_issue_suite_without_ca_key(tmp_path):
    authority = CertificateAuthority.create(tmp_path / "pki", ["default"], NOW, 60.0)

    with pytest.raises(ConfigError, match="no pq key"):
        authority.issue("h1", "host", "10.0.0.1", ["pq"], NOW, 60.0)


def test_ca_load_empty_directory(tmp_path):
    with pytest.raises(ConfigError, match="no CA key"):
        CertificateAuthority.load(tmp_path)
