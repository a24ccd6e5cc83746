"""The router and core state machine: join handling, GKDCs and every rejection.

Each rejection path has its own test. A test crafts the offending datagram
with the real key of the node that would send it (``Network.sign_as``), so the
check under test is the only one that can fail.
"""

from __future__ import annotations

import dataclasses
import shutil

import pytest
from harness import (
    GROUP_ADDRESS,
    START,
    Network,
    Spec,
    build,
    figure1_spec,
    with_checksum,
)

from node.bundles import seal_bundle, sign_bundle
from node.codec import Reader
from node.documents import AclMode, SignedAcl
from node.machine import Timers, Transmit
from node.messages import (
    AclUpload,
    ControlHeader,
    JoinRequest,
    MembershipReport,
    MessageType,
    Path,
    ReasonCode,
    ReportCode,
    SealedBundle,
    Signature,
    TlvType,
    decode_message,
    replace,
    sign_message,
)
from node.pki import CertificateAuthority

T = MessageType


def drops(net: Network, node: str, reason: str | None = None) -> list[dict]:
    return [e.fields for e in net.trace(node, "drop")
            if reason is None or e.fields["reason"] == reason]


def tlv_types(datagram: bytes) -> list[int]:
    """Return the TLV types of a datagram in wire order."""
    header_length = int.from_bytes(datagram[4:6], "big")
    r = Reader(datagram, header_length)
    types = []
    while not r.at_end():
        types.append(r.pull_u8())
        r.pull_blob16()
    return types


def report_from(net: Network, host: str, timestamp: float | None = None,
                code: int = ReportCode.JOIN) -> bytes:
    """Craft a membership report signed by ``host`` with a fresh token."""
    machine = net.machines[host]
    group = net.group(host)
    token = machine.new_host_token(group, net.now if timestamp is None else timestamp)
    header = ControlHeader(T.MEMBERSHIP_REPORT, group.address,
                           origin=net.addresses[host], code=code)
    return net.sign_as(host, MembershipReport(header, token))


def first_transmit(net: Network, node: str) -> bytes:
    """Take the one datagram a node has queued, without delivering it."""
    (transmit,) = [output for output in net.machines[node].pop_outputs()
                   if isinstance(output, Transmit)]
    return transmit.datagram


class Rewriter:
    """An intercept that rewrites or drops the first ``times`` datagrams of one hop.

    ``change`` returns the new datagram, or ``None`` to drop it. ``seen``
    records every datagram of that hop, changed or not.
    """

    def __init__(self, message_type: T, source: str, destination: str, change,
                 times: int = 1):
        self.match = (message_type, source, destination)
        self.change = change
        self.times = times
        self.seen: list[bytes] = []

    def __call__(self, delivery):
        key = (delivery.message.header.type, delivery.source, delivery.destination)
        if key != self.match:
            return delivery.datagram
        self.seen.append(delivery.datagram)
        if len(self.seen) > self.times:
            return delivery.datagram
        return self.change(delivery.datagram)


# a host the ACL does not admit

def test_host_not_on_acl_is_nacked(network):
    net = network()
    secret = net.stored_bundle("C")

    net.join("h9")

    assert net.flow()[2:] == [
        ("h9", "A", "MEMBERSHIP_REPORT"),
        ("A", "B", "JOIN_REQUEST"),
        ("B", "C", "JOIN_REQUEST"),
        ("C", "B", "JOIN_NACK"),
        ("B", "A", "JOIN_NACK"),
    ]
    (denied,) = net.trace("A", "join_denied")
    assert denied.fields["host"] == "h9"
    assert denied.fields["reason"] == "not-on-acl"
    assert net.trace("C", "denied")[0].fields["reason"] == "not-on-acl"
    assert not net.machines["h9"].holds_key("G")
    for name in ("A", "B"):
        assert not net.machines[name].holds_keys("G")
    for delivery in net.delivered(T.JOIN_NACK):
        assert delivery.message.reason.code is ReasonCode.NOT_ON_ACL
        assert TlvType.HOST_BUNDLE not in tlv_types(delivery.datagram)
        assert TlvType.HOP_BUNDLE not in tlv_types(delivery.datagram)
        assert TlvType.ACL not in tlv_types(delivery.datagram)
        assert secret.group_key not in delivery.datagram
        assert secret.kek not in delivery.datagram


def test_excluded_host_is_nacked(network):
    net = network(acl_mode=AclMode.EXCLUDE, acl_hosts=("h9",))

    net.join("h9")
    net.join("h")

    assert net.trace("C", "denied")[0].fields == {
        "group": "G", "host": "h9", "reason": "excluded"}
    assert net.trace("A", "join_denied")[0].fields["host"] == "h9"
    assert not net.machines["h9"].holds_key("G")
    assert net.machines["h"].holds_key("G")


# token freshness and replay

def test_replayed_report_is_dropped(network):
    net = network()
    net.machines["h"].join("G", net.now)
    report = first_transmit(net, "h")

    net.inject("h", net.addresses["A"], report)
    net.inject("h", net.addresses["A"], report)
    net.run()

    assert len(drops(net, "A", "replayed-token")) == 1
    assert len(drops(net, "A")) == 1
    assert len(net.delivered(T.JOIN_REQUEST, "A", "B")) == 1
    assert len(net.trace("A", "join_sent")) == 1
    assert len(net.delivered(T.KEY_DELIVERY, "A", "h")) == 1


def test_replayed_report_gets_no_keys(network):
    net = network()
    net.join("h")
    (report,) = net.delivered(T.MEMBERSHIP_REPORT, "h", "A")

    net.inject("h", net.addresses["A"], report.datagram)
    net.run()

    assert len(drops(net, "A", "replayed-token")) == 1
    assert len(net.delivered(T.KEY_DELIVERY, "A", "h")) == 1


def test_stale_report_is_dropped(network):
    net = network()
    window = net.machines["A"].config.token_window

    net.inject("h", net.addresses["A"], report_from(net, "h", net.now - window - 1))
    net.run()

    assert len(drops(net, "A", "stale-token")) == 1
    assert net.trace("A", "token_rejected")[0].fields["reason"] == "stale-token"
    assert net.delivered(T.JOIN_REQUEST) == []


def test_future_report_is_dropped(network):
    net = network()
    window = net.machines["A"].config.token_window

    net.inject("h", net.addresses["A"], report_from(net, "h", net.now + window + 1))
    net.run()

    assert len(drops(net, "A", "stale-token")) == 1
    assert net.delivered(T.JOIN_REQUEST) == []


def test_report_with_foreign_token_dropped(network):
    net = network()
    group = net.group("h2")
    token = net.machines["h2"].new_host_token(group, net.now)
    header = ControlHeader(T.MEMBERSHIP_REPORT, group.address,
                           origin=net.addresses["h"], code=ReportCode.JOIN)

    net.inject("h", net.addresses["A"],
               net.sign_as("h", MembershipReport(header, token)))
    net.run()

    assert len(drops(net, "A", "token-mismatch")) == 1
    assert net.delivered(T.JOIN_REQUEST) == []


def test_unknown_report_code_is_dropped(network):
    net = network()

    net.inject("h", net.addresses["A"], report_from(net, "h", code=7))
    net.run()

    assert len(drops(net, "A", "malformed")) == 1
    assert net.delivered(T.JOIN_REQUEST) == []


# signatures and certificates

def flip_signature_byte(datagram: bytes) -> bytes:
    edited = bytearray(datagram)
    edited[-1] ^= 0x01  # the last byte belongs to the signature value
    return with_checksum(bytes(edited))


def test_forged_join_signature_is_dropped(network):
    net = network()
    net.intercept = Rewriter(T.JOIN_REQUEST, "A", "B", flip_signature_byte)

    net.join("h")

    assert len(drops(net, "B", "bad-signature")) == 1
    assert net.delivered(T.JOIN_REQUEST, "B", "C") == []
    assert net.trace("B", "join_received") == []
    assert not net.machines["B"].groups[GROUP_ADDRESS].on_tree
    assert not net.machines["h"].holds_key("G")


def test_unknown_signer_is_dropped(network):
    net = network()
    report = decode_message(report_from(net, "h"))
    unsigned = report.encode_unsigned()
    group = net.group("h")
    value = net.machines["h"].identity.sign(group.suite, unsigned)
    forged = sign_message(unsigned, Signature("mallory", group.suite_code, value))

    net.inject("h", net.addresses["A"], forged)
    net.run()

    assert len(drops(net, "A", "unknown-certificate")) == 1
    assert net.delivered(T.JOIN_REQUEST) == []


def test_host_signed_join_is_dropped(network):
    net = network()
    h = net.machines["h"]
    group = net.group("h")
    header = h.header(T.JOIN_REQUEST, group, origin=net.addresses["h"])
    join = JoinRequest(header, h.new_token("A", net.now),
                       h.new_host_token(group, net.now), Path(("h",)))

    net.inject("h", net.addresses["A"], net.sign_as("h", join))
    net.run()

    assert len(drops(net, "A", "wrong-role")) == 1
    assert net.delivered(T.JOIN_REQUEST, "A", "B") == []


def test_datagram_from_wrong_address_is_dropped(network):
    net = network()

    net.inject("h2", net.addresses["A"], report_from(net, "h"))
    net.run()

    assert len(drops(net, "A", "wrong-source")) == 1


def short_lived_host_network(pki_for, tmp_path) -> Network:
    """Build Figure 1 on a PKI copy where h's certificate expires 30 s after start."""
    spec = figure1_spec()
    pki = tmp_path / "pki"
    shutil.copytree(pki_for(spec), pki)
    addresses = build(spec, pki).addresses
    CertificateAuthority.load(pki).issue(
        "h", "host", addresses["h"], [spec.suite], now=START - 3600,
        validity_seconds=3600 + 30,
    )
    net = build(spec, pki)
    net.run()
    return net


def test_expired_certificate_is_dropped(pki_for, tmp_path):
    net = short_lived_host_network(pki_for, tmp_path)

    net.advance(60)
    net.join("h")

    assert len(drops(net, "A", "expired-certificate")) == 1
    assert net.delivered(T.JOIN_REQUEST) == []
    assert not net.machines["h"].holds_key("G")


def test_certificate_before_expiry_works(pki_for, tmp_path):
    # the same re-issued certificate still works inside its validity
    net = short_lived_host_network(pki_for, tmp_path)

    net.join("h")

    assert net.machines["h"].holds_key("G")


# the ACL inside acks

def test_tampered_acl_in_ack_is_dropped(network):
    net = network()

    def widen_acl(datagram: bytes) -> bytes:
        ack = decode_message(datagram)
        widened = dataclasses.replace(ack.acl.acl, hosts=ack.acl.acl.hosts + ("h9",))
        tampered = SignedAcl(widened.encode(), ack.acl.signature, widened)
        return net.sign_as("C", replace(ack, acl=tampered))

    net.intercept = Rewriter(T.JOIN_ACK, "C", "B", widen_acl)
    net.join("h")

    assert len(drops(net, "B", "bad-signature")) == 1
    assert not net.machines["B"].holds_keys("G")
    assert net.machines["B"].groups[GROUP_ADDRESS].acl is None
    assert net.delivered(T.JOIN_ACK, "B", "A") == []
    assert not net.machines["h"].holds_key("G")


def test_ack_acl_for_other_group_dropped(network):
    net = network()

    def move_acl(datagram: bytes) -> bytes:
        ack = decode_message(datagram)
        moved = dataclasses.replace(ack.acl.acl, group="239.9.9.9")
        return net.sign_as("C", replace(ack, acl=net.sign_acl(moved)))

    net.intercept = Rewriter(T.JOIN_ACK, "C", "B", move_acl)
    net.join("h")

    assert len(drops(net, "B", "invalid-acl")) == 1
    assert not net.machines["B"].holds_keys("G")


def test_older_acl_upload_is_rejected(network):
    net = network(serial=5)
    init = net.machines["init"]
    group = net.group("init")
    older = net.sign_acl(dataclasses.replace(group.acl, serial=3))
    header = init.header(T.ACL_UPLOAD, group, origin=net.addresses["init"])
    upload = AclUpload(header, init.new_token("C", net.now), acl=older)

    net.inject("init", net.addresses["C"], net.sign_as("init", upload))
    net.run()

    rejected = net.trace("C", "acl_rejected")
    assert [e.fields["reason"] for e in rejected] == ["older-acl"]
    assert rejected[0].fields["serial"] == 3
    answer = net.delivered(T.ACL_ACCEPT, "C", "init")[-1].message
    assert answer.reason.code is ReasonCode.OLDER_ACL
    assert net.machines["C"].groups[GROUP_ADDRESS].acl.acl.serial == 5
    assert net.trace("init", "acl_rejected")[0].fields["reason"] == "older-acl"


def test_newer_acl_upload_replaces_acl(network):
    net = network(serial=5)
    init = net.machines["init"]
    group = net.group("init")
    newer = net.sign_acl(dataclasses.replace(group.acl, serial=6, hosts=("h9",)))
    header = init.header(T.ACL_UPLOAD, group, origin=net.addresses["init"])
    upload = AclUpload(header, init.new_token("C", net.now), acl=newer)

    net.inject("init", net.addresses["C"], net.sign_as("init", upload))
    net.run()
    net.join("h9")

    assert net.machines["C"].groups[GROUP_ADDRESS].acl.acl.serial == 6
    assert net.trace("C", "acl_installed")[-1].fields["serial"] == 6
    assert net.machines["h9"].holds_key("G")


def test_ack_with_older_acl_is_dropped(network):
    # strict mode keeps B from serving joins, so h2's join reaches C
    net = network(strict=True, serial=5)
    net.join("h")
    older = net.sign_acl(dataclasses.replace(net.group("init").acl, serial=4))

    def downgrade(datagram: bytes) -> bytes:
        return net.sign_as("C", replace(decode_message(datagram), acl=older))

    net.intercept = Rewriter(T.JOIN_ACK, "C", "B", downgrade)
    net.join("h2")

    assert len(drops(net, "B", "older-acl")) == 1
    assert net.machines["B"].groups[GROUP_ADDRESS].acl.acl.serial == 5
    assert not net.machines["h2"].holds_key("G")


# key bundles

def chain(*intercepts):
    """Run intercepts in order, and stop at the first one that drops the datagram."""
    def run(delivery):
        for intercept in intercepts:
            datagram = intercept(delivery)
            if datagram is None:
                return None
            delivery.datagram = datagram
        return delivery.datagram

    return run


def record_hop_bundles(captured: list[SealedBundle]):
    """Return an intercept that records the hop bundle of each C->B ack."""
    def record(delivery):
        if (delivery.message.header.type, delivery.source) == (T.JOIN_ACK, "C"):
            captured.append(delivery.message.hop_bundle)
        return delivery.datagram

    return record


def offer_b_bundle_to_a(network, recipient_label: str) -> Network:
    """Join h while B puts the hop bundle sealed to B into its ack to A."""
    net = network()
    captured: list[SealedBundle] = []

    def swap(datagram: bytes) -> bytes:
        ack = decode_message(datagram)
        offered = SealedBundle(recipient_label, captured[0].sealed)
        return net.sign_as("B", replace(ack, hop_bundle=offered))

    net.intercept = chain(record_hop_bundles(captured),
                          Rewriter(T.JOIN_ACK, "B", "A", swap))
    net.join("h")
    assert captured[0].recipient == "B"
    return net


def test_relabelled_bundle_fails_to_open(network):
    net = offer_b_bundle_to_a(network, "A")

    assert len(drops(net, "A", "bad-seal")) == 1
    assert not net.machines["A"].holds_keys("G")
    assert net.trace("A", "became_gkdc") == []
    assert not net.machines["h"].holds_key("G")
    # the join stays pending, so a retransmission can still succeed
    assert net.machines["A"].groups[GROUP_ADDRESS].requests


def test_foreign_hop_bundle_is_rejected(network):
    net = offer_b_bundle_to_a(network, "B")

    assert len(drops(net, "A")) == 1
    assert not net.machines["A"].groups[GROUP_ADDRESS].on_tree


def test_foreign_hop_bundle_gives_no_keys(network):
    # whatever A decides about the ack, it can never hold B's keys
    net = offer_b_bundle_to_a(network, "B")

    assert not net.machines["A"].holds_keys("G")
    assert net.trace("A", "became_gkdc") == []


def test_tampered_hop_bundle_fails_to_open(network):
    net = network()

    def corrupt(datagram: bytes) -> bytes:
        ack = decode_message(datagram)
        sealed = bytearray(ack.hop_bundle.sealed)
        sealed[-1] ^= 0x01
        bundle = SealedBundle("B", bytes(sealed))
        return net.sign_as("C", replace(ack, hop_bundle=bundle))

    net.intercept = Rewriter(T.JOIN_ACK, "C", "B", corrupt)
    net.join("h")

    assert len(drops(net, "B", "bad-seal")) == 1
    assert not net.machines["B"].holds_keys("G")
    assert net.machines["B"].groups[GROUP_ADDRESS].acl is None


def test_bundle_to_untrusted_router_dropped(network):
    # C seals keys to B although the trusted-router list leaves B out
    net = network(trusted_routers=("A", "C"))
    core = net.machines["C"]
    group = net.group("C")

    def seal_to_b(datagram: bytes) -> bytes:
        signed = sign_bundle(net.stored_bundle("C"), core.identity, group)
        peer = core.directory.lookup("B", group.suite, net.now, ("router",))
        bundle = seal_bundle(signed, peer, group)
        return net.sign_as("C", replace(decode_message(datagram), hop_bundle=bundle))

    net.intercept = Rewriter(T.JOIN_ACK, "C", "B", seal_to_b)
    net.join("h")

    assert len(drops(net, "B", "not-eligible")) == 1
    assert not net.machines["B"].holds_keys("G")
    assert net.delivered(T.JOIN_ACK, "B", "A") == []


# acks that match no pending join

def test_unexpected_ack_is_dropped(network):
    net = network()
    net.join("h")
    (ack,) = net.delivered(T.JOIN_ACK, "C", "B")
    message = replace(ack.message, token=net.machines["C"].new_token("B", net.now))

    net.inject("C", net.addresses["B"], net.sign_as("C", message))
    net.run()

    assert len(drops(net, "B", "unexpected-answer")) == 1
    assert len(net.delivered(T.JOIN_ACK, "B", "A")) == 1


def test_ack_from_non_neighbour_is_dropped(network):
    net = network()
    net.intercept = Rewriter(T.JOIN_ACK, "B", "A", lambda datagram: None)
    net.join("h")
    (ack,) = net.delivered(T.JOIN_ACK, "C", "B")
    message = replace(ack.message, token=net.machines["C"].new_token("A", net.now))

    net.inject("C", net.addresses["A"], net.sign_as("C", message))
    net.run()

    assert len(drops(net, "A", "not-neighbour")) == 1
    assert not net.machines["h"].holds_key("G")


def test_ack_from_non_upstream_is_dropped(network):
    # S waits for C's ack, so an ack from its downstream neighbour A is unexpected
    net = network(secondary_core_spec())
    net.intercept = Rewriter(T.JOIN_ACK, "C", "S", lambda datagram: None)
    net.join("h")
    (dropped,) = net.intercept.seen
    ack = decode_message(dropped)
    message = replace(ack, token=net.machines["A"].new_token("S", net.now))

    net.inject("A", net.addresses["S"], net.sign_as("A", message))
    net.run()

    assert len(drops(net, "S", "unexpected-answer")) == 1
    assert not net.machines["S"].holds_keys("G")


def test_join_loop_is_dropped(network):
    net = network()
    b = net.machines["B"]
    group = net.group("B")
    token = net.machines["h"].new_host_token(group, net.now)
    header = b.header(T.JOIN_REQUEST, group, origin=net.addresses["A"])
    join = JoinRequest(header, b.new_token("A", net.now), token, Path(("A", "B")))

    net.inject("B", net.addresses["A"], net.sign_as("B", join))
    net.run()

    assert len(drops(net, "A", "loop")) == 1


def test_join_path_without_sender_dropped(network):
    net = network()
    a = net.machines["A"]
    group = net.group("A")
    token = net.machines["h"].new_host_token(group, net.now)
    header = a.header(T.JOIN_REQUEST, group, origin=net.addresses["A"])
    join = JoinRequest(header, a.new_token("B", net.now), token, Path(("C",)))

    net.inject("A", net.addresses["B"], net.sign_as("A", join))
    net.run()

    assert len(drops(net, "B", "malformed")) == 1
    assert net.delivered(T.JOIN_REQUEST, "B", "C") == []


def test_forged_host_token_is_nacked(network):
    # A vouches for a token h never signed: C must still check it (NOTE 2)
    net = network()
    a = net.machines["A"]
    group = net.group("A")
    genuine = net.machines["h"].new_host_token(group, net.now)
    forged = dataclasses.replace(genuine, signature=bytes(len(genuine.signature)))
    header = a.header(T.JOIN_REQUEST, group, origin=net.addresses["A"])
    join = JoinRequest(header, a.new_token("B", net.now), forged, Path(("A",)))

    net.inject("A", net.addresses["B"], net.sign_as("A", join))
    net.run()

    rejected = net.trace("C", "token_rejected")
    assert [e.fields["reason"] for e in rejected] == ["bad-signature"]
    nack = net.delivered(T.JOIN_NACK, "C", "B")[0].message
    assert nack.reason.code is ReasonCode.AUTHENTICATION_FAILED
    assert net.delivered(T.JOIN_ACK) == []


def test_join_before_acl_is_nacked(pki_for):
    spec = figure1_spec()
    net = build(spec, pki_for(spec))
    net.intercept = lambda delivery: (
        None if delivery.source == "init" else delivery.datagram)
    net.run()

    net.join("h")

    assert net.delivered(T.JOIN_NACK, "C", "B")[0].message.reason.code is (
        ReasonCode.NO_ACL)
    assert net.trace("A", "join_denied")[0].fields["reason"] == "no-acl"


# malformed input

def test_malformed_datagram_is_dropped(network):
    net = network()

    net.inject("h", net.addresses["A"], b"\x10garbage")
    net.run()

    assert len(drops(net, "A", "malformed")) == 1
    assert net.machines["A"].counters["drop:malformed"] == 1


def test_truncated_datagram_is_dropped(network):
    net = network()
    report = report_from(net, "h")

    net.inject("h", net.addresses["A"], with_checksum(report[:-10]))
    net.run()

    assert len(drops(net, "A", "malformed")) == 1
    assert net.delivered(T.JOIN_REQUEST) == []


def test_bad_checksum_is_dropped(network):
    net = network()
    report = bytearray(report_from(net, "h"))
    report[6] ^= 0xFF

    net.inject("h", net.addresses["A"], bytes(report))
    net.run()

    assert len(drops(net, "A", "malformed")) == 1


def test_message_for_unknown_group_is_dropped(network):
    net = network()
    h = net.machines["h"]
    group = dataclasses.replace(net.group("h"), address="239.9.9.9")
    header = ControlHeader(T.MEMBERSHIP_REPORT, group.address,
                           origin=net.addresses["h"], code=ReportCode.JOIN)
    report = MembershipReport(header, h.new_host_token(group, net.now))

    net.inject("h", net.addresses["A"], net.sign_as("h", report))
    net.run()

    assert len(drops(net, "A", "unknown-group")) == 1


def test_unexpected_message_type_dropped(network):
    net = network()
    net.join("h")
    (delivery,) = net.delivered(T.KEY_DELIVERY, "A", "h")
    message = replace(delivery.message,
                      token=net.machines["A"].new_token("B", net.now))

    net.inject("A", net.addresses["B"], net.sign_as("A", message))
    net.run()

    assert len(drops(net, "B", "unexpected-message")) == 1


# serving joins

def test_second_host_served_by_dr(network):
    net = network()
    net.join("h")
    before = len(net.deliveries)

    net.join("h2")

    assert net.flow()[before:] == [
        ("h2", "A", "MEMBERSHIP_REPORT"),
        ("A", "h2", "KEY_DELIVERY"),
    ]
    verified = [e for e in net.trace("A", "token_verified")
                if e.fields["host"] == "h2"]
    assert len(verified) == 1
    assert net.trace("h2", "key_installed")[0].fields["group_key_fp"] == (
        net.trace("C", "keys_created")[0].fields["group_key_fp"])
    assert net.machines["A"].groups[GROUP_ADDRESS].members == {"h", "h2"}


def test_joins_queue_while_dr_waits(network):
    # h2 reports while A's join for h is still on its way to C
    net = network()
    net.machines["h"].join("G", net.now)
    net.machines["h2"].join("G", net.now)
    net.run()

    assert len(net.trace("A", "join_queued")) == 1
    assert len(net.delivered(T.JOIN_REQUEST, "A", "B")) == 1
    assert net.machines["h"].holds_key("G")
    assert net.machines["h2"].holds_key("G")


def test_strict_mode_keeps_keys_at_cores(network):
    net = network(strict=True)

    net.join("h")
    before = len(net.deliveries)
    net.join("h2")

    for name in ("A", "B"):
        router = net.machines[name]
        assert not router.is_gkdc(router.groups[GROUP_ADDRESS])
        assert not router.holds_keys("G")
        assert router.groups[GROUP_ADDRESS].on_tree
    for ack in net.delivered(T.JOIN_ACK):
        assert ack.message.hop_bundle is None
    assert net.machines["h"].holds_key("G")
    assert net.machines["h2"].holds_key("G")
    assert net.flow()[before:] == [
        ("h2", "A", "MEMBERSHIP_REPORT"),
        ("A", "B", "JOIN_REQUEST"),
        ("B", "C", "JOIN_REQUEST"),
        ("C", "B", "JOIN_ACK"),
        ("B", "A", "JOIN_ACK"),
        ("A", "h2", "KEY_DELIVERY"),
    ]


def test_untrusted_router_relays_without_keys(network):
    net = network(trusted_routers=("A", "C"))

    net.join("h")

    b = net.machines["B"]
    assert not b.holds_keys("G")
    assert not b.is_gkdc(b.groups[GROUP_ADDRESS])
    assert b.groups[GROUP_ADDRESS].on_tree
    to_b = net.delivered(T.JOIN_ACK, "C", "B")[0].message
    to_a = net.delivered(T.JOIN_ACK, "B", "A")[0].message
    assert to_b.hop_bundle.recipient == "A"
    assert to_a.hop_bundle == to_b.hop_bundle
    assert net.machines["A"].is_gkdc(net.machines["A"].groups[GROUP_ADDRESS])
    assert net.stored_bundle("A") == net.stored_bundle("C")
    assert net.machines["h"].holds_key("G")


def test_untrusted_dr_gets_no_hop_bundle(network):
    net = network(trusted_routers=("B", "C"))

    net.join("h")

    to_a = net.delivered(T.JOIN_ACK, "B", "A")[0].message
    assert to_a.hop_bundle is None
    assert net.delivered(T.JOIN_ACK, "C", "B")[0].message.hop_bundle.recipient == "B"
    assert net.machines["B"].holds_keys("G")
    assert not net.machines["A"].holds_keys("G")
    assert net.machines["h"].holds_key("G")


def secondary_core_spec(**changes) -> Spec:
    """h behind DR A, then the secondary core S, then the primary core C."""
    spec = Spec(
        roles={"h": "host", "A": "router", "S": "core", "C": "core",
               "init": "initiator"},
        links=[("h", "A"), ("A", "S"), ("S", "C"), ("init", "C")],
        cores=("C", "S"),
        acl_hosts=("h",),
    )
    return dataclasses.replace(spec, **changes)


def test_secondary_core_forwards_join_to_primary(network):
    net = network(secondary_core_spec())

    net.join("h")

    assert net.flow()[2:] == [
        ("h", "A", "MEMBERSHIP_REPORT"),
        ("A", "S", "JOIN_REQUEST"),
        ("S", "C", "JOIN_REQUEST"),
        ("C", "S", "JOIN_ACK"),
        ("S", "A", "JOIN_ACK"),
        ("A", "h", "KEY_DELIVERY"),
    ]
    s = net.machines["S"]
    assert s.is_gkdc(s.groups[GROUP_ADDRESS])
    assert net.stored_bundle("S") == net.stored_bundle("C")
    assert net.delivered(T.JOIN_ACK, "C", "S")[0].message.hop_bundle.recipient == "S"
    assert net.machines["h"].holds_key("G")


def test_strict_secondary_core_holds_keys(network):
    # strict mode leaves keys with cores, and a secondary core is one
    net = network(secondary_core_spec(strict=True))

    net.join("h")

    assert net.machines["S"].holds_keys("G")
    assert not net.machines["A"].holds_keys("G")
    assert net.machines["h"].holds_key("G")


# retransmission

def test_join_retransmitted_with_fresh_token(network):
    net = network()
    rewriter = Rewriter(T.JOIN_REQUEST, "A", "B", lambda datagram: None)
    net.intercept = rewriter

    net.join("h")
    assert not net.machines["h"].holds_key("G")
    net.advance(1.5)

    first, second = (decode_message(d) for d in rewriter.seen[:2])
    assert second.token.nonce != first.token.nonce
    assert second.token.timestamp_ms > first.token.timestamp_ms
    assert second.host_token == first.host_token
    assert [e.fields["attempt"] for e in net.trace("A", "join_sent")] == [1, 2]
    assert net.machines["h"].holds_key("G")
    assert net.machines["A"].holds_keys("G")


def test_pending_join_expires(network):
    net = network()
    net.intercept = Rewriter(T.JOIN_REQUEST, "A", "B", lambda datagram: None,
                             times=1000)

    net.join("h")
    net.advance(15)

    assert len(net.trace("A", "join_expired")) == 1
    assert net.machines["A"].groups[GROUP_ADDRESS].requests == {}
    assert net.machines["A"].next_timer() is None


def host_joins(net: Network, host: str, source: str = "A") -> list:
    """The join requests that ``source`` sent on behalf of ``host``."""
    return [d for d in net.delivered(T.JOIN_REQUEST, source)
            if d.message.host_token.host == host]


def test_queued_join_served_after_nack(network):
    # h2 waits behind h9's join, and h9's NACK must release it
    net = network()
    net.machines["h9"].join("G", net.now)
    net.machines["h2"].join("G", net.now)
    net.run()

    assert len(net.trace("A", "join_queued")) == 1
    assert net.trace("A", "join_denied")[0].fields["host"] == "h9"
    assert net.machines["h2"].holds_key("G")
    assert not net.machines["h9"].holds_key("G")


def test_queued_host_joins_once(network):
    net = network(strict=True)
    # B->C joins are lost for a while, so h9's join keeps A waiting
    release = net.now + 1.5
    net.intercept = lambda delivery: None if (
        delivery.source == "B" and net.now < release
        and delivery.message.header.type is T.JOIN_REQUEST) else delivery.datagram
    net.machines["h9"].join("G", net.now)
    net.machines["h2"].join("G", net.now)
    net.run()

    net.advance(5)

    assert net.machines["h2"].holds_key("G")
    # retransmissions repeat one join, so they share its host token nonce
    nonces = {d.message.host_token.nonce for d in host_joins(net, "h2")}
    assert len(nonces) == 1
    assert len(net.delivered(T.KEY_DELIVERY, "A", "h2")) == 1


def with_default_timers(net: Network) -> Network:
    """Give every node CBTv1's default timers in place of the harness's short ones."""
    for machine in net.machines.values():
        machine.config = dataclasses.replace(machine.config, timers=Timers())
    return net


def test_join_survives_long_outage(network):
    net = with_default_timers(network())
    outage_end = net.now + 35
    net.intercept = lambda delivery: None if (
        delivery.source == "A" and net.now < outage_end
        and delivery.message.header.type is T.JOIN_REQUEST) else delivery.datagram

    net.join("h")
    net.advance(60)

    assert net.trace("C", "token_rejected") == []
    assert net.machines["h"].holds_key("G")


def test_join_survives_short_outage(network):
    # the same outage, shorter than the token window, heals by retransmission
    net = with_default_timers(network())
    outage_end = net.now + 12
    net.intercept = lambda delivery: None if (
        delivery.source == "A" and net.now < outage_end
        and delivery.message.header.type is T.JOIN_REQUEST) else delivery.datagram

    net.join("h")
    net.advance(60)

    assert net.machines["h"].holds_key("G")


# validity of the ACL and of the group key

def short_lived_acl_network(network, seconds: int) -> Network:
    """Figure 1 after h's join, under an ACL (serial 2) valid ``seconds`` more."""
    net = network()
    init = net.machines["init"]
    group = net.group("init")
    acl = dataclasses.replace(group.acl, serial=2, not_after=int(net.now) + seconds)
    header = init.header(T.ACL_UPLOAD, group, origin=net.addresses["init"])
    upload = AclUpload(header, init.new_token("C", net.now), acl=net.sign_acl(acl))
    net.inject("init", net.addresses["C"], net.sign_as("init", upload))
    net.run()
    net.join("h")
    assert net.machines["A"].groups[GROUP_ADDRESS].acl.acl.serial == 2
    return net


def test_expired_acl_admits_nobody(network):
    net = short_lived_acl_network(network, 60)

    net.advance(70)
    net.join("h2")

    assert net.delivered(T.KEY_DELIVERY, "A", "h2") == []


def test_gkdc_denies_under_expired_acl(network):
    net = short_lived_acl_network(network, 60)

    net.advance(70)
    net.join("h2")

    denials = [e for e in net.trace("A", "denied") if e.fields["host"] == "h2"]
    assert denials
    assert denials[0].fields["reason"] == "expired-acl"
    assert not net.machines["h2"].holds_key("G")
