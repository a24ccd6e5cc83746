"""Tokens, the group ACL and key bundles: encoding, decoding and policy."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.codec import Reader, Writer
from node.documents import (
    ACL_LABEL,
    BUNDLE_LABEL,
    HOST_TOKEN_LABEL,
    AclMode,
    GroupAcl,
    HostToken,
    KeyBundle,
    SignedAcl,
    SignedBundle,
    Token,
)
from node.errors import MalformedMessage

NONCE = bytes(range(16))


def make_acl(**changes) -> GroupAcl:
    acl = GroupAcl(
        group="239.1.1.1", serial=7, mode=AclMode.INCLUDE, hosts=("h", "lab-*"),
        not_before=1_000, not_after=2_000, initiator="init", suite=1,
        key_lifetime=3600,
    )
    return dataclasses.replace(acl, **changes)


def make_bundle() -> KeyBundle:
    return KeyBundle("239.1.1.1", 3, 0xDEADBEEF, 2, 1_900_000_000,
                     b"k" * 16, b"e" * 16)


def encoded(document) -> bytes:
    w = Writer()
    document.encode(w)
    return w.getvalue()


def test_token_round_trip():
    token = Token("A", "B", 1_800_000_000_123, NONCE)

    r = Reader(encoded(token))
    assert Token.decode(r) == token
    assert r.at_end()


def test_host_token_round_trip():
    token = HostToken("h", "239.1.1.1", 1_800_000_000_123, NONCE, 1, b"s" * 64)

    r = Reader(encoded(token))
    assert HostToken.decode(r) == token
    assert r.at_end()


def test_host_token_signed_bytes():
    token = HostToken("h", "239.1.1.1", 5, NONCE, 1, b"one")
    resigned = HostToken("h", "239.1.1.1", 5, NONCE, 1, b"two")
    other_group = HostToken("h", "239.1.1.2", 5, NONCE, 1, b"one")

    assert token.signed_bytes().startswith(HOST_TOKEN_LABEL)
    assert token.signed_bytes() == resigned.signed_bytes()
    assert token.signed_bytes() != other_group.signed_bytes()


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"mode": AclMode.EXCLUDE, "hosts": ()},
        {"strict": True},
        {"trusted_routers": ()},
        {"trusted_routers": ("A", "C")},
        {"hosts": tuple(f"h{i}" for i in range(300))},
        {"central": True},
    ],
    ids=["include", "exclude-empty", "strict", "no-trusted", "trusted", "300-hosts",
         "central"],
)
def test_acl_round_trip(changes):
    acl = make_acl(**changes)

    assert GroupAcl.decode(acl.encode()) == acl


def test_signed_acl_round_trip_keeps_body():
    acl = make_acl()
    signed = SignedAcl.create(acl, b"sig")

    r = Reader(encoded(signed))
    decoded = SignedAcl.decode(r)
    assert decoded == signed
    assert decoded.acl == acl
    assert decoded.signed_bytes() == ACL_LABEL + acl.encode()


def test_acl_include_admits_listed_and_patterns():
    acl = make_acl(hosts=("h", "lab-*", "r[0-3]"))

    assert acl.admits("h")
    assert acl.admits("lab-17")
    assert acl.admits("r2")
    assert not acl.admits("h9")
    assert not acl.admits("r4")
    assert not acl.admits("H")


def test_acl_exclude_admits_unlisted():
    acl = make_acl(mode=AclMode.EXCLUDE, hosts=("h9", "guest-*"))

    assert acl.admits("h")
    assert not acl.admits("h9")
    assert not acl.admits("guest-1")


def test_acl_untrusted_list_absent():
    acl = make_acl()

    assert acl.may_hold_keys("A", "router")
    assert acl.may_hold_keys("C", "core")


def test_acl_trusted_list_limits_key_holders():
    acl = make_acl(trusted_routers=("A", "C"))

    assert acl.may_hold_keys("A", "router")
    assert acl.may_hold_keys("C", "core")
    assert not acl.may_hold_keys("B", "router")


def test_strict_acl_keys_at_cores():
    acl = make_acl(strict=True)

    assert not acl.may_hold_keys("A", "router")
    assert acl.may_hold_keys("C", "core")


def test_central_acl_lets_no_router_hold_keys():
    acl = make_acl(central=True, trusted_routers=("A", "C"))

    assert not acl.may_hold_keys("A", "router")
    assert not acl.may_hold_keys("C", "core")


def test_key_bundle_round_trip():
    bundle = make_bundle()

    assert KeyBundle.decode(bundle.encode()) == bundle


def test_key_bundle_repr_hides_keys():
    text = repr(make_bundle())

    assert "kkkk" not in text
    assert "eeee" not in text


def test_signed_bundle_round_trip():
    signed = SignedBundle(make_bundle().encode(), "C", b"s" * 64)

    assert SignedBundle.decode(signed.encode()) == signed
    assert signed.signed_bytes() == BUNDLE_LABEL + signed.body


def test_acl_unknown_mode_is_malformed():
    body = bytearray(make_acl().encode())
    body[8] = 9  # the mode byte follows the group address and serial

    with pytest.raises(MalformedMessage, match="unknown ACL mode 9"):
        GroupAcl.decode(bytes(body))


def test_acl_invalid_entry_is_malformed():
    acl = make_acl(hosts=("h;rm",))

    with pytest.raises(MalformedMessage, match="invalid ACL entry"):
        GroupAcl.decode(acl.encode())


def test_acl_non_ascii_entry_is_malformed():
    acl = make_acl(hosts=("hX",))
    body = acl.encode().replace(b"\x02hX", b"\x02h\xe9")

    with pytest.raises(MalformedMessage, match="invalid ACL entry"):
        GroupAcl.decode(body)


def test_acl_trailing_bytes_are_malformed():
    with pytest.raises(MalformedMessage, match="trailing"):
        GroupAcl.decode(make_acl().encode() + b"\0")


def test_acl_bad_strict_flag_is_malformed():
    acl = make_acl()
    body = bytearray(acl.encode())
    # the strict flag follows address, serial, mode, two times, the
    # initiator name, the suite and the key lifetime
    offset = 4 + 4 + 1 + 8 + 8 + 1 + len("init") + 1 + 4
    assert body[offset] == 0
    body[offset] = 2

    with pytest.raises(MalformedMessage):
        GroupAcl.decode(bytes(body))


def test_key_bundle_trailing_bytes_are_malformed():
    with pytest.raises(MalformedMessage, match="trailing"):
        KeyBundle.decode(make_bundle().encode() + b"\0")


def test_signed_bundle_trailing_bytes_are_malformed():
    signed = SignedBundle(make_bundle().encode(), "C", b"s" * 64)

    with pytest.raises(MalformedMessage, match="trailing"):
        SignedBundle.decode(signed.encode() + b"\0")


# fuzzing: every decoder may raise MalformedMessage and nothing else

def _reader_decoder(cls):
    def decode(data: bytes) -> None:
        r = Reader(data)
        cls.decode(r)
        r.expect_end(cls.__name__)

    return decode


DECODERS = {
    "Token": _reader_decoder(Token),
    "HostToken": _reader_decoder(HostToken),
    "SignedAcl": _reader_decoder(SignedAcl),
    "GroupAcl": GroupAcl.decode,
    "KeyBundle": KeyBundle.decode,
    "SignedBundle": SignedBundle.decode,
}

VALID_DOCUMENTS = [
    encoded(Token("A", "B", 1, NONCE)),
    encoded(HostToken("h", "239.1.1.1", 1, NONCE, 1, b"s" * 64)),
    encoded(SignedAcl.create(make_acl(trusted_routers=("A",)), b"s" * 64)),
    make_acl(strict=True).encode(),
    make_bundle().encode(),
    SignedBundle(make_bundle().encode(), "C", b"s" * 64).encode(),
]


@st.composite
def document_bytes(draw) -> bytes:
    """Random bytes, or a valid document with bytes flipped, cut or inserted."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=400))
    data = bytearray(draw(st.sampled_from(VALID_DOCUMENTS)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip" and position < len(data):
            data[position] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[position:]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@settings(max_examples=2_000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(DECODERS)), data=document_bytes())
def test_fuzz_document_decoders(name, data):
    try:
        DECODERS[name](data)
    except MalformedMessage:
        pass
