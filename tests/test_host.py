"""The host and initiator state machines: reports, key delivery, ACL upload."""

from __future__ import annotations

import dataclasses

import pytest
from harness import GROUP_ADDRESS, Network, figure1_spec, with_checksum

from node.bundles import seal_bundle, sign_bundle
from node.errors import ConfigError
from node.host import Host, make_machine
from node.messages import (
    AclUpload,
    KeyDelivery,
    MessageType,
    ReasonCode,
    ReportCode,
    SealedAcl,
    SealedBundle,
    decode_message,
    replace,
)

T = MessageType


def drops(net: Network, node: str, reason: str | None = None) -> list[dict]:
    return [e.fields for e in net.trace(node, "drop")
            if reason is None or e.fields["reason"] == reason]


def drop_first(message_type: T, count: int = 1):
    """Return an intercept that drops the first ``count`` datagrams of a type."""
    dropped: list[bytes] = []

    def intercept(delivery):
        if delivery.message.header.type is message_type and len(dropped) < count:
            dropped.append(delivery.datagram)
            return None
        return delivery.datagram

    intercept.dropped = dropped
    return intercept


def resent_delivery(net: Network, **changes) -> bytes:
    """Return A's key delivery to h, changed, with a fresh token, signed again."""
    (delivery,) = net.delivered(T.KEY_DELIVERY, "A", "h")
    token = net.machines["A"].new_token("h", net.now)
    return net.sign_as("A", replace(delivery.message, token=token, **changes))


def held_delivery(network) -> tuple[Network, KeyDelivery]:
    """Join h, but hold back A's key delivery before it reaches h."""
    net = network()
    net.intercept = drop_first(T.KEY_DELIVERY)
    net.join("h")
    (datagram,) = net.intercept.dropped
    net.intercept = None
    return net, decode_message(datagram)


# the membership report and its repetition

def test_report_repeats_when_dropped(network):
    net = network()
    net.intercept = drop_first(T.MEMBERSHIP_REPORT)

    net.join("h")
    assert not net.machines["h"].holds_key("G")
    net.advance(1.5)

    assert [e.fields["attempt"] for e in net.trace("h", "report_sent")] == [1, 2]
    (lost,) = net.intercept.dropped
    (repeated,) = net.delivered(T.MEMBERSHIP_REPORT, "h", "A")
    first = decode_message(lost).host_token
    second = repeated.message.host_token
    assert second.nonce != first.nonce
    assert second.timestamp_ms > first.timestamp_ms
    assert net.machines["h"].holds_key("G")


def test_report_gives_up_after_retries(network):
    net = network()
    net.intercept = drop_first(T.MEMBERSHIP_REPORT, count=100)
    retries = net.machines["h"].config.timers.report_retries

    net.join("h")
    net.advance(20)

    attempts = [e.fields["attempt"] for e in net.trace("h", "report_sent")]
    assert attempts == list(range(1, retries + 2))
    assert len(net.trace("h", "join_timeout")) == 1
    assert net.machines["h"].next_timer() is None
    assert not net.machines["h"].holds_key("G")


def test_report_stops_once_key_installed(network):
    net = network()

    net.join("h")
    net.advance(20)

    assert len(net.trace("h", "report_sent")) == 1
    assert net.machines["h"].next_timer() is None


def test_duplicate_report_causes_no_second_join(network):
    # the host repeats its report while the first join is still pending
    net = network()
    net.intercept = drop_first(T.JOIN_ACK)

    net.join("h")
    net.advance(1.5)

    assert len(net.trace("A", "report_duplicate")) >= 1
    joins = net.delivered(T.JOIN_REQUEST, "A", "B")
    assert len({d.message.host_token.nonce for d in joins}) == 1
    attempts = [e.fields["attempt"] for e in net.trace("A", "join_sent")]
    assert attempts == list(range(1, len(joins) + 1))
    assert net.machines["h"].holds_key("G")


# key delivery rejections

def test_unrequested_key_delivery_is_dropped(network):
    net = network()
    net.join("h")
    token = net.machines["h"].new_host_token(net.group("h"), net.now)

    net.inject("A", net.addresses["h"], resent_delivery(net, host_token=token))
    net.run()

    assert len(drops(net, "h", "unexpected-answer")) == 1


def test_replayed_key_delivery_is_dropped(network):
    net = network()
    net.join("h")
    (delivery,) = net.delivered(T.KEY_DELIVERY, "A", "h")

    net.inject("A", net.addresses["h"], delivery.datagram)
    net.run()

    assert len(drops(net, "h", "replayed-token")) == 1
    assert len(net.trace("h", "key_installed")) == 1


def test_key_delivery_after_leave_is_dropped(network):
    net, delivery = held_delivery(network)

    net.machines["h"].leave("G", net.now)
    net.run()
    net.inject("A", net.addresses["h"], net.sign_as("A", delivery))
    net.run()

    assert len(drops(net, "h", "unexpected-answer")) == 1
    assert not net.machines["h"].holds_key("G")


def test_late_key_delivery_is_installed(network):
    # the held delivery itself is good: the rejections above are not spurious
    net, delivery = held_delivery(network)

    net.inject("A", net.addresses["h"], net.sign_as("A", delivery))
    net.run()

    assert net.machines["h"].holds_key("G")


def test_tampered_host_bundle_fails_to_open(network):
    net, delivery = held_delivery(network)
    sealed = bytearray(delivery.host_bundle.sealed)
    sealed[10] ^= 0x01
    bundle = SealedBundle("h", bytes(sealed))

    net.inject("A", net.addresses["h"],
               net.sign_as("A", replace(delivery, host_bundle=bundle)))
    net.run()

    assert len(drops(net, "h", "bad-seal")) == 1
    assert not net.machines["h"].holds_key("G")


def test_other_hosts_bundle_fails_to_open(network):
    net, delivery = held_delivery(network)
    core = net.machines["C"]
    group = net.group("C")
    signed = sign_bundle(net.stored_bundle("C"), core.identity, group)
    peer = core.directory.lookup("h2", group.suite, net.now, ("host",))
    relabelled = SealedBundle("h", seal_bundle(signed, peer, group).sealed)

    net.inject("A", net.addresses["h"],
               net.sign_as("A", replace(delivery, host_bundle=relabelled)))
    net.run()

    assert len(drops(net, "h", "bad-seal")) == 1
    assert not net.machines["h"].holds_key("G")


def test_bundle_not_from_primary_dropped(network):
    # a DR cannot mint group keys: only the primary core signs bundles
    net, delivery = held_delivery(network)
    a = net.machines["A"]
    group = net.group("A")
    minted = dataclasses.replace(net.stored_bundle("C"), group_key=bytes(16))
    signed = sign_bundle(minted, a.identity, group)
    peer = a.directory.lookup("h", group.suite, net.now, ("host",))

    net.inject("A", net.addresses["h"], net.sign_as(
        "A", replace(delivery, host_bundle=seal_bundle(signed, peer, group))))
    net.run()

    assert len(drops(net, "h", "bad-bundle")) == 1
    assert not net.machines["h"].holds_key("G")


def test_tampered_acl_in_delivery_is_dropped(network):
    net, delivery = held_delivery(network)
    acl = delivery.acl
    widened = dataclasses.replace(acl.acl, hosts=acl.acl.hosts + ("h9",))
    tampered = dataclasses.replace(acl, body=widened.encode(), acl=widened)

    net.inject("A", net.addresses["h"],
               net.sign_as("A", replace(delivery, acl=tampered)))
    net.run()

    assert len(drops(net, "h", "bad-signature")) == 1
    assert not net.machines["h"].holds_key("G")


def test_key_delivery_from_non_dr_dropped(network):
    # h is wired to its DR A and also to B, but only A may hand it keys
    spec = figure1_spec()
    spec.links = spec.links + [("h", "B")]
    net = network(spec)
    assert net.machines["h"].config.gateway == "A"
    net.intercept = drop_first(T.KEY_DELIVERY)
    net.join("h")
    delivery = decode_message(net.intercept.dropped[0])
    net.intercept = None
    b = net.machines["B"]
    header = b.header(T.KEY_DELIVERY, net.group("B"), origin=net.addresses["B"])
    from_b = replace(delivery, header=header, token=b.new_token("h", net.now))

    net.inject("B", net.addresses["h"], net.sign_as("B", from_b))
    net.run()

    assert len(drops(net, "h", "not-my-dr")) == 1
    assert not net.machines["h"].holds_key("G")


def test_host_drops_unexpected_message(network):
    net = network()
    net.join("h")
    (join,) = net.delivered(T.JOIN_REQUEST, "A", "B")
    message = replace(join.message, token=net.machines["A"].new_token("h", net.now))

    net.inject("A", net.addresses["h"], net.sign_as("A", message))
    net.run()

    assert len(drops(net, "h", "unexpected-message")) == 1


def test_host_survives_garbage(network):
    net = network()

    net.inject("A", net.addresses["h"], with_checksum(b"\x10" + bytes(40)))
    net.run()

    assert len(drops(net, "h", "malformed")) == 1


def test_host_never_installs_expired_key(network):
    net = network()
    lifetime = net.group("init").acl.key_lifetime

    net.advance(lifetime + 60)
    net.join("h")

    sa = net.machines["h"].memberships[GROUP_ADDRESS].sa
    assert sa is None or sa.not_after > net.now


# leaving

def test_leave_erases_key_and_membership(network):
    net = network()
    net.join("h")

    net.machines["h"].leave("G", net.now)
    net.run()

    assert not net.machines["h"].holds_key("G")
    assert len(net.trace("h", "key_erased")) == 1
    assert len(net.trace("A", "member_left")) == 1
    assert net.machines["A"].groups[GROUP_ADDRESS].members == set()
    report = net.delivered(T.MEMBERSHIP_REPORT, "h", "A")[-1].message
    assert report.header.code == ReportCode.LEAVE


# the initiator and its ACL upload

def test_acl_upload_accepted(network):
    net = network()

    status = net.machines["init"].status()["groups"]["G"]
    assert status == {"accepted": True, "attempts": 1}
    assert net.trace("C", "acl_installed")[0].fields["serial"] == 1
    assert net.machines["init"].next_timer() is None


def test_sealed_acl_upload_works(network):
    net = network(seal_acl=True)

    (upload,) = net.delivered(T.ACL_UPLOAD, "init", "C")
    message = upload.message
    assert message.acl is None
    assert message.sealed_acl is not None
    acl_body = net.group("init").acl.encode()
    assert acl_body not in upload.datagram
    assert b"\x01h\x02h2" not in upload.datagram  # the encoded host list
    assert net.machines["C"].groups[GROUP_ADDRESS].acl.body == acl_body
    assert net.trace("init", "acl_uploaded")[0].fields["sealed"] is True
    net.join("h")
    assert net.machines["h"].holds_key("G")


def test_unopenable_sealed_acl_is_dropped(network):
    net = network()
    init = net.machines["init"]
    group = net.group("init")
    header = init.header(T.ACL_UPLOAD, group, origin=net.addresses["init"])
    upload = AclUpload(header, init.new_token("C", net.now),
                       sealed_acl=SealedAcl(bytes(100)))

    net.inject("init", net.addresses["C"], net.sign_as("init", upload))
    net.run()

    assert len(drops(net, "C", "bad-seal")) == 1


def test_acl_upload_repeats_when_dropped(network):
    net = network(intercept=drop_first(T.ACL_UPLOAD))
    assert not net.machines["init"].status()["groups"]["G"]["accepted"]

    net.advance(1.5)

    assert net.machines["init"].status()["groups"]["G"] == {
        "accepted": True, "attempts": 2}
    assert len(net.trace("C", "acl_installed")) == 1


def test_repeated_upload_is_accepted_once(network):
    # the core's answer is lost, so the initiator uploads the same ACL again
    net = network(intercept=drop_first(T.ACL_ACCEPT))

    net.advance(1.5)

    answers = net.delivered(T.ACL_ACCEPT, "C", "init")
    assert [a.message.reason.code.name for a in answers] == ["ACCEPTED"]
    assert len(net.delivered(T.ACL_UPLOAD, "init", "C")) == 2
    assert len(net.trace("C", "acl_installed")) == 1
    assert len(net.trace("C", "keys_created")) == 1
    assert net.machines["init"].status()["groups"]["G"]["accepted"]


def test_host_signed_upload_is_dropped(network):
    net = network()
    h = net.machines["h"]
    group = net.group("init")
    header = h.header(T.ACL_UPLOAD, group, origin=net.addresses["h"])
    acl = net.machines["C"].groups[GROUP_ADDRESS].acl
    upload = AclUpload(header, h.new_token("C", net.now), acl=acl)

    net.inject("h", net.addresses["C"], net.sign_as("h", upload))
    net.run()

    assert len(drops(net, "C", "wrong-role")) == 1


def test_acl_with_bad_signature_is_rejected(network):
    net = network()
    init = net.machines["init"]
    group = net.group("init")
    acl = dataclasses.replace(group.acl, serial=2, hosts=("h9",))
    signed = net.sign_acl(dataclasses.replace(group.acl, serial=2))
    forged = dataclasses.replace(signed, body=acl.encode(), acl=acl)
    header = init.header(T.ACL_UPLOAD, group, origin=net.addresses["init"])
    upload = AclUpload(header, init.new_token("C", net.now), acl=forged)

    net.inject("init", net.addresses["C"], net.sign_as("init", upload))
    net.run()

    rejected = net.trace("C", "acl_rejected")
    assert [e.fields["reason"] for e in rejected] == ["bad-signature"]
    answer = net.delivered(T.ACL_ACCEPT, "C", "init")[-1].message
    assert answer.reason.code is ReasonCode.INVALID_ACL
    assert net.machines["C"].groups[GROUP_ADDRESS].acl.acl.serial == 1


def test_upload_to_non_primary_dropped(network):
    net = network()
    init = net.machines["init"]
    group = net.group("init")
    header = init.header(T.ACL_UPLOAD, group, origin=net.addresses["init"])
    acl = net.machines["C"].groups[GROUP_ADDRESS].acl
    upload = AclUpload(header, init.new_token("B", net.now), acl=acl)

    net.inject("init", net.addresses["B"], net.sign_as("init", upload))
    net.run()

    assert len(drops(net, "B", "not-primary")) == 1
    assert net.machines["B"].groups[GROUP_ADDRESS].acl is None


# construction errors

def test_make_machine_rejects_unknown_role(network):
    net = network()
    h = net.machines["h"]
    config = dataclasses.replace(h.config, role="switch")

    with pytest.raises(ConfigError, match="unknown role 'switch'"):
        make_machine(config, h.identity, h.directory, h.randbytes)


def test_host_without_gateway_is_rejected(network):
    net = network()
    h = net.machines["h"]
    config = dataclasses.replace(h.config, gateway=None)

    with pytest.raises(ConfigError, match="no designated router"):
        Host(config, h.identity, h.directory, h.randbytes)


def test_join_of_unknown_group_is_rejected(network):
    net = network()

    with pytest.raises(ConfigError, match="no group 'X'"):
        net.machines["h"].join("X", net.now)
