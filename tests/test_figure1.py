"""RFC 1949 section 6.2, Figure 1, replayed message by message.

Host h joins group G behind its designated router A. The join travels A, B,
C (the primary core), and the join-acks come back C, B, A, each carrying the
group access package. Every test here runs once per crypto suite.
"""

from __future__ import annotations

import dataclasses

import pytest
from harness import GROUP_ADDRESS, Network, build, figure1_spec

from node.documents import KeyBundle
from node.messages import JoinAck, JoinRequest, KeyDelivery, MembershipReport
from node.messages import MessageType as T

SUITES = ["default", "pq"]


@pytest.fixture(scope="module", params=SUITES)
def figure1(request, pki_for) -> Network:
    """The Figure 1 network after the ACL upload and h's join."""
    spec = figure1_spec(suite=request.param)
    net = build(spec, pki_for(spec))
    net.run()
    net.join("h")
    return net


def one(net: Network, message_type: T, source: str, destination: str):
    deliveries = net.delivered(message_type, source, destination)
    assert len(deliveries) == 1, f"{source}->{destination} {message_type.name}"
    return deliveries[0].message


def installed_bundle(net: Network) -> KeyBundle:
    membership = net.machines["h"].memberships[GROUP_ADDRESS]
    assert membership.sa is not None
    return membership.sa


def holds_bytes(value, needle: bytes, seen: set[int] | None = None) -> bool:
    """Whether ``needle`` appears in clear anywhere in a node's object graph.

    Objects of the cryptography library (private keys, AEAD contexts) are
    opaque and skipped, and every object of this project is walked.
    """
    seen = set() if seen is None else seen
    if id(value) in seen:
        return False
    seen.add(id(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return needle in bytes(value)
    if isinstance(value, str):
        return needle.hex() in value
    if isinstance(value, dict):
        return any(holds_bytes(k, needle, seen) or holds_bytes(v, needle, seen)
                   for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(holds_bytes(item, needle, seen) for item in value)
    if type(value).__module__.split(".")[0] in ("node", "harness"):
        if dataclasses.is_dataclass(value):
            items = [getattr(value, f.name) for f in dataclasses.fields(value)]
        else:
            items = list(vars(value).values())
        return any(holds_bytes(item, needle, seen) for item in items)
    return False


def test_message_order(figure1):
    assert figure1.flow() == [
        ("init", "C", "ACL_UPLOAD"),
        ("C", "init", "ACL_ACCEPT"),
        ("h", "A", "MEMBERSHIP_REPORT"),
        ("A", "B", "JOIN_REQUEST"),
        ("B", "C", "JOIN_REQUEST"),
        ("C", "B", "JOIN_ACK"),
        ("B", "A", "JOIN_ACK"),
        ("A", "h", "KEY_DELIVERY"),
    ]


def test_report_carries_host_signed_token(figure1):
    report = one(figure1, T.MEMBERSHIP_REPORT, "h", "A")

    assert isinstance(report, MembershipReport)
    assert report.signature.signer == "h"
    assert report.host_token.host == "h"
    assert report.host_token.group == GROUP_ADDRESS
    assert report.host_token.signature


@pytest.mark.parametrize("sender, receiver, path", [
    ("A", "B", ("A",)),
    ("B", "C", ("A", "B")),
])
def test_join_signed_by_each_hop(figure1, sender, receiver, path):
    join = one(figure1, T.JOIN_REQUEST, sender, receiver)

    assert isinstance(join, JoinRequest)
    assert join.signature.signer == sender
    assert join.token.sender == sender
    assert join.token.recipient == receiver
    assert join.path.routers == path
    assert join.header.target_core == figure1.addresses["C"]
    assert join.header.origin == figure1.addresses["A"]


def test_host_token_copied_unchanged(figure1):
    report = one(figure1, T.MEMBERSHIP_REPORT, "h", "A")
    hops = [
        one(figure1, T.JOIN_REQUEST, "A", "B"),
        one(figure1, T.JOIN_REQUEST, "B", "C"),
        one(figure1, T.JOIN_ACK, "C", "B"),
        one(figure1, T.JOIN_ACK, "B", "A"),
        one(figure1, T.KEY_DELIVERY, "A", "h"),
    ]

    for message in hops:
        assert message.host_token == report.host_token
        assert message.host_token.signature == report.host_token.signature


@pytest.mark.parametrize("sender, receiver", [("C", "B"), ("B", "A")])
def test_ack_signed_by_each_hop(figure1, sender, receiver):
    ack = one(figure1, T.JOIN_ACK, sender, receiver)

    assert isinstance(ack, JoinAck)
    assert ack.signature.signer == sender
    assert ack.token.sender == sender
    assert ack.token.recipient == receiver


@pytest.mark.parametrize("sender, receiver", [("C", "B"), ("B", "A")])
def test_hop_bundle_sealed_to_next_hop(figure1, sender, receiver):
    ack = one(figure1, T.JOIN_ACK, sender, receiver)

    assert ack.hop_bundle is not None
    assert ack.hop_bundle.recipient == receiver
    assert ack.host_bundle.recipient == "h"


def test_host_bundle_never_resealed(figure1):
    from_core = one(figure1, T.JOIN_ACK, "C", "B").host_bundle
    from_b = one(figure1, T.JOIN_ACK, "B", "A").host_bundle
    delivered = one(figure1, T.KEY_DELIVERY, "A", "h").host_bundle

    assert from_b.sealed == from_core.sealed
    assert delivered.sealed == from_core.sealed


def test_hop_bundles_differ_per_hop(figure1):
    to_b = one(figure1, T.JOIN_ACK, "C", "B").hop_bundle
    to_a = one(figure1, T.JOIN_ACK, "B", "A").hop_bundle

    assert to_b.sealed != to_a.sealed


def test_acl_travels_as_initiator_signed_it(figure1):
    installed = figure1.machines["C"].groups[GROUP_ADDRESS].acl
    carriers = [
        one(figure1, T.JOIN_ACK, "C", "B"),
        one(figure1, T.JOIN_ACK, "B", "A"),
        one(figure1, T.KEY_DELIVERY, "A", "h"),
    ]

    for message in carriers:
        assert message.acl.body == installed.body
        assert message.acl.signature == installed.signature
        assert message.acl.acl.initiator == "init"


def test_key_delivery_from_designated_router(figure1):
    delivery = one(figure1, T.KEY_DELIVERY, "A", "h")

    assert isinstance(delivery, KeyDelivery)
    assert delivery.signature.signer == "A"
    assert delivery.token.sender == "A"
    assert delivery.token.recipient == "h"


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_routers_on_path_become_gkdcs(figure1, name):
    router = figure1.machines[name]

    assert router.is_gkdc(router.groups[GROUP_ADDRESS])
    assert router.holds_keys("G")


def test_tree_state_after_join(figure1):
    state = {name: figure1.machines[name].groups[GROUP_ADDRESS]
             for name in ("A", "B", "C")}

    assert state["A"].parent == "B"
    assert state["B"].parent == "C"
    assert state["C"].children == {"B"}
    assert state["B"].children == {"A"}
    assert state["A"].members == {"h"}
    assert all(s.on_tree for s in state.values())
    assert all(not s.requests for s in state.values())


def test_host_holds_key(figure1):
    assert figure1.machines["h"].holds_key("G")
    assert len(figure1.trace("h", "key_installed")) == 1


def test_all_hold_core_key_fingerprint(figure1):
    (created,) = figure1.trace("C", "keys_created")
    holders = {
        "A": figure1.trace("A", "became_gkdc"),
        "B": figure1.trace("B", "became_gkdc"),
        "h": figure1.trace("h", "key_installed"),
    }

    for name, events in holders.items():
        assert len(events) == 1, name
        for field in ("group_key_fp", "kek_fp", "spi", "epoch"):
            assert events[0].fields[field] == created.fields[field], (name, field)


def test_routers_store_core_bundle(figure1):
    sa = installed_bundle(figure1)

    for name in ("A", "B", "C"):
        assert figure1.stored_bundle(name) == sa


def test_host_token_verified_twice(figure1):
    # section 6.2 NOTE 2: the host token is authenticated at most twice
    def verified(name):
        return [e for e in figure1.trace(name, "token_verified")
                if e.fields.get("host") == "h"]

    assert len(verified("A")) == 1
    assert len(verified("B")) == 0
    assert len(verified("C")) == 1


@pytest.mark.parametrize("secret", ["group_key", "kek"])
def test_no_datagram_carries_keys(figure1, secret):
    needle = getattr(installed_bundle(figure1), secret)

    for delivery in figure1.deliveries:
        assert needle not in delivery.datagram


@pytest.mark.parametrize("secret", ["group_key", "kek"])
def test_no_trace_event_carries_keys(figure1, secret):
    needle = getattr(installed_bundle(figure1), secret)

    for node, events in figure1.events.items():
        for event in events:
            assert not holds_bytes(event.fields, needle), (node, event.name)
            assert needle.hex() not in repr(event.fields), (node, event.name)


@pytest.mark.parametrize("name", ["A", "B", "C"])
def test_router_vault_hides_keys(figure1, name):
    sa = installed_bundle(figure1)
    vaulted = figure1.machines[name].groups[GROUP_ADDRESS].vaulted_bundle

    assert vaulted is not None
    assert sa.group_key not in vaulted
    assert sa.kek not in vaulted


@pytest.mark.parametrize("name", ["A", "B", "C", "init", "h2", "h9"])
def test_no_node_keeps_clear_keys(figure1, name):
    sa = installed_bundle(figure1)
    machine = figure1.machines[name]

    assert not holds_bytes(machine, sa.group_key)
    assert not holds_bytes(machine, sa.kek)


def test_key_scan_finds_host_sa(figure1):
    # the scan above must be able to see a key that is held in clear
    sa = installed_bundle(figure1)

    assert holds_bytes(figure1.machines["h"], sa.group_key)
    assert holds_bytes(figure1.machines["h"], sa.kek)


@pytest.mark.parametrize("name", ["h2", "h9"])
def test_other_hosts_hold_nothing(figure1, name):
    host = figure1.machines[name]

    assert not host.holds_key("G")
    assert figure1.trace(name, "key_installed") == []
    assert figure1.delivered(T.KEY_DELIVERY, destination=name) == []


def test_initiator_receives_only_acl_answer(figure1):
    received = [d.message.header.type for d in figure1.deliveries
                if d.destination == "init"]

    assert received == [T.ACL_ACCEPT]
    assert figure1.machines["init"].status()["groups"]["G"]["accepted"]


def test_nothing_dropped(figure1):
    for node, events in figure1.events.items():
        drops = [e.fields for e in events if e.name == "drop"]
        assert drops == [], node
