"""The re-key notice: codec, the primary core's signature and the sealed bundle."""

from __future__ import annotations

import dataclasses
import random

import pytest
from harness import START, build, figure1_spec, make_acl

from node.codec import Reader, Writer
from node.errors import AuthenticationFailed, MalformedMessage
from node.lkh import KeyTree
from node.rekey import (
    MAX_WRAPS,
    BranchWrap,
    BranchWraps,
    RekeyKind,
    RekeyNotice,
    SignedRekey,
    open_bundle_under,
    seal_bundle_under,
    verify_rekey,
)

GROUP = "239.1.1.1"
KEK = bytes(range(16))
NONCE = bytes(12)


@pytest.fixture(scope="module")
def net(pki_for):
    spec = figure1_spec()
    network = build(spec, pki_for(spec))
    network.run()
    return network


def notice(**changes) -> RekeyNotice:
    base = RekeyNotice(
        group=GROUP, epoch=2, kind=RekeyKind.SCHEDULED, issued_ms=int(START * 1000),
        activation_ms=500, grace_ms=2000,
        sealed_bundle=seal_bundle_under(KEK, b"bundle", GROUP, 2,
                                        RekeyKind.SCHEDULED, NONCE),
    )
    return dataclasses.replace(base, **changes)


def round_trip(signed: SignedRekey) -> SignedRekey:
    w = Writer()
    signed.encode(w)
    r = Reader(w.getvalue())
    decoded = SignedRekey.decode(r)
    assert r.at_end()
    return decoded


def sign_as(net, signer: str, value: RekeyNotice) -> SignedRekey:
    return SignedRekey.sign(value, net.machines[signer].identity, "default")


def reason_of(call, *args) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        call(*args)
    return caught.value.reason


def test_scheduled_notice_round_trip(net):
    signed = sign_as(net, "C", notice())

    decoded = round_trip(signed)

    assert decoded == signed
    assert decoded.notice == notice()


def test_eviction_notice_round_trip(net):
    acl = net.sign_acl(make_acl(figure1_spec()))
    value = notice(kind=RekeyKind.EVICTION, sealed_bundle=b"", acl=acl)

    decoded = round_trip(sign_as(net, "C", value)).notice

    assert decoded == value
    assert decoded.acl.body == acl.body


def test_eviction_with_bundle_is_malformed(net):
    acl = net.sign_acl(make_acl(figure1_spec()))
    value = notice(kind=RekeyKind.EVICTION, acl=acl)

    with pytest.raises(MalformedMessage):
        RekeyNotice.decode(value.encode())


def test_eviction_without_acl_is_malformed():
    value = notice(kind=RekeyKind.EVICTION, sealed_bundle=b"")

    with pytest.raises(MalformedMessage):
        RekeyNotice.decode(value.encode())


def test_scheduled_without_bundle_is_malformed():
    with pytest.raises(MalformedMessage):
        RekeyNotice.decode(notice(sealed_bundle=b"").encode())


def test_branch_wraps_round_trip():
    tree = KeyTree(GROUP, random.Random(1).randbytes)
    for name in ("h", "h2", "h9"):
        tree.register(name)
    wraps = BranchWraps((
        BranchWrap("C", tree.evict(["h9"], 2), b"\x01" * 70),
        BranchWrap("B", tree.evict([], 3), b"\x02" * 71),
    ))
    w = Writer()
    wraps.encode(w)

    r = Reader(w.getvalue())
    assert BranchWraps.decode(r) == wraps
    assert r.at_end()


def test_too_many_branch_wraps_are_malformed():
    w = Writer()
    w.push_u8(MAX_WRAPS + 1)

    with pytest.raises(MalformedMessage):
        BranchWraps.decode(Reader(w.getvalue()))


def test_bundle_under_owner_opens_only_for_owner():
    sealed = seal_bundle_under(KEK, b"bundle", GROUP, 2, RekeyKind.EVICTION, NONCE,
                               "C")

    assert open_bundle_under(KEK, sealed, GROUP, 2, RekeyKind.EVICTION, "C") == (
        b"bundle"
    )
    assert reason_of(open_bundle_under, KEK, sealed, GROUP, 2, RekeyKind.EVICTION,
                     "B") == "bad-seal"


def test_unknown_kind_is_malformed():
    data = bytearray(notice().encode())
    data[8] = 9

    with pytest.raises(MalformedMessage):
        RekeyNotice.decode(bytes(data))


def test_primary_signed_notice_verifies(net):
    signed = sign_as(net, "C", notice())

    assert verify_rekey(signed, net.machines["A"].directory, net.group("A"),
                        net.now) == notice()


def test_notice_not_signed_by_primary_is_rejected(net):
    signed = sign_as(net, "B", notice())

    assert reason_of(verify_rekey, signed, net.machines["A"].directory,
                     net.group("A"), net.now) == "not-primary"


def test_notice_claiming_primary_with_other_key_is_rejected(net):
    forged = dataclasses.replace(sign_as(net, "B", notice()), signer="C")

    assert reason_of(verify_rekey, forged, net.machines["A"].directory,
                     net.group("A"), net.now) == "bad-signature"


def test_altered_notice_is_rejected(net):
    signed = sign_as(net, "C", notice())
    altered = dataclasses.replace(signed, body=notice(epoch=3).encode())

    assert reason_of(verify_rekey, altered, net.machines["A"].directory,
                     net.group("A"), net.now) == "bad-signature"


def test_notice_for_other_group_is_rejected(net):
    signed = sign_as(net, "C", notice(group="239.9.9.9"))

    assert reason_of(verify_rekey, signed, net.machines["A"].directory,
                     net.group("A"), net.now) == "bad-rekey"


def test_bundle_opens_under_its_key():
    sealed = seal_bundle_under(KEK, b"bundle", GROUP, 2, RekeyKind.SCHEDULED, NONCE)

    assert open_bundle_under(KEK, sealed, GROUP, 2, RekeyKind.SCHEDULED) == b"bundle"


@pytest.mark.parametrize(
    "key, epoch, kind",
    [
        (bytes(16), 2, RekeyKind.SCHEDULED),
        (KEK, 3, RekeyKind.SCHEDULED),
        (KEK, 2, RekeyKind.EVICTION),
    ],
)
def test_bundle_does_not_open_otherwise(key, epoch, kind):
    sealed = seal_bundle_under(KEK, b"bundle", GROUP, 2, RekeyKind.SCHEDULED, NONCE)

    assert reason_of(open_bundle_under, key, sealed, GROUP, epoch, kind) == "bad-seal"


def test_truncated_bundle_does_not_open():
    assert reason_of(open_bundle_under, KEK, b"short", GROUP, 2,
                     RekeyKind.SCHEDULED) == "bad-seal"
