"""Group data, packet handles and sender keys through the fake network.

The tree has two branches under the primary core C: members h and h2 behind
designated router A (then B), and h3 behind D. Host s, which the ACL admits,
and host x, which it does not, sit behind router E, which is off the tree.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
from harness import Delivery, Network, Spec
from hypothesis import given, settings
from hypothesis import strategies as st

from node.datapacket import DataKind, DataPacket, is_data_packet
from node.errors import AuthenticationFailed, ConfigError
from node.messages import MessageType, Rekey
from node.rekey import RekeyKind, RekeyNotice, SignedRekey
from node.sender import MAX_SIZE

ROLES = {
    "h": "host", "h2": "host", "h3": "host", "s": "host", "x": "host",
    "A": "router", "B": "router", "D": "router", "E": "router", "C": "core",
    "init": "initiator",
}
LINKS = [
    ("h", "A"), ("h2", "A"), ("h3", "D"), ("s", "E"), ("x", "E"), ("A", "B"),
    ("B", "C"), ("D", "C"), ("E", "B"), ("init", "C"),
]
MEMBERS = ("h", "h2", "h3")


def two_branch_spec() -> Spec:
    return Spec(roles=dict(ROLES), links=list(LINKS), acl_hosts=("h", "h2", "h3", "s"))


@pytest.fixture
def net(network) -> Network:
    """The two-branch network with h, h2 and h3 joined and their keys settled."""
    tree = network(two_branch_spec())
    for host in MEMBERS:
        tree.join(host)
    tree.advance(1.0)
    return tree


def send(net: Network, host: str, count: int = 1, **options) -> None:
    net.machines[host].send_data("G", net.now, count=count, interval=0.01, **options)
    net.run()
    net.advance(0.5)


def received(net: Network, host: str, sender: str | None = None) -> list[int]:
    return [
        e.fields["seq"] for e in net.trace(host, "data_received")
        if sender is None or e.fields["sender"] == sender
    ]


def rejected(net: Network, node: str) -> list[str]:
    return [e.fields["reason"] for e in net.trace(node, "data_rejected")]


def data_deliveries(net: Network, destination: str) -> list[Delivery]:
    return data_deliveries_of(net.deliveries, destination)


def data_deliveries_of(deliveries: list[Delivery], destination: str) -> list[Delivery]:
    """Return the deliveries of application data (not announcements) to a node."""
    return [
        d for d in deliveries
        if d.destination == destination and is_data_packet(d.datagram)
        and DataPacket.decode(d.datagram).kind is DataKind.DATA
    ]


def is_message(delivery: Delivery, message_type: MessageType) -> bool:
    if is_data_packet(delivery.datagram):
        return False
    return delivery.message.header.type is message_type


def is_announcement(delivery: Delivery) -> bool:
    if not is_data_packet(delivery.datagram):
        return False
    return DataPacket.decode(delivery.datagram).kind is DataKind.SENDER_KEY


def epoch_of(net: Network, host: str) -> int:
    newest = net.machines[host].member_state["239.1.1.1"].sa.newest
    assert newest is not None
    return newest.epoch


# delivery along the tree


def test_every_member_receives_each_packet_once(net):
    send(net, "h", count=5)

    assert received(net, "h2") == [2, 3, 4, 5, 6]
    assert received(net, "h3") == [2, 3, 4, 5, 6]
    assert received(net, "h") == []


def test_packets_reach_members_and_not_others(net):
    send(net, "h3", count=3)

    assert data_deliveries(net, "s") == []
    assert data_deliveries(net, "x") == []
    assert data_deliveries(net, "E") == []


def test_captured_data_holds_only_ciphertext(net):
    send(net, "h", count=3)

    pattern = b"smkd data from h"
    assert all(pattern not in d.datagram for d in net.deliveries)
    assert received(net, "h3")


def test_send_size_is_checked(net):
    with pytest.raises(ConfigError):
        net.machines["h"].send_data("G", net.now, size=MAX_SIZE + 1)


# rejection paths


def test_replayed_data_is_rejected(net):
    send(net, "h", count=1)
    original = data_deliveries(net, "h3")[0]

    net.inject("D", net.addresses["h3"], original.datagram)

    assert rejected(net, "h3") == ["replayed-data"]
    assert received(net, "h3") == [2]


def test_bad_handle_at_host_is_rejected(net):
    send(net, "h", count=1)
    datagram = bytearray(data_deliveries(net, "h3")[0].datagram)
    datagram[-1] ^= 1

    net.inject("D", net.addresses["h3"], bytes(datagram))

    assert rejected(net, "h3") == ["bad-handle"]


def test_bad_handle_at_router_is_rejected(net):
    def spoil(delivery: Delivery) -> bytes:
        if delivery.source == "h" and is_data_packet(delivery.datagram):
            return delivery.datagram[:-1] + bytes([delivery.datagram[-1] ^ 1])
        return delivery.datagram

    net.intercept = spoil
    send(net, "h", count=2)

    assert rejected(net, "A").count("bad-handle") == 3
    assert received(net, "h2") == []
    assert received(net, "h3") == []


def test_member_data_without_handle_is_rejected(net):
    send(net, "h", count=1)
    packet = DataPacket.decode(data_deliveries(net, "A")[0].datagram)
    stripped = dataclasses.replace(packet, on_tree=False, handle=b"", seq=50)

    net.inject("h", net.addresses["A"], stripped.encode())

    assert "no-handle" in rejected(net, "A")


def test_on_tree_data_from_outside_the_tree_is_rejected(net):
    send(net, "h", count=1)
    packet = DataPacket.decode(data_deliveries(net, "A")[0].datagram)

    net.inject("E", net.addresses["B"], packet.encode())

    assert rejected(net, "B") == ["not-tree-neighbour"]


def test_data_under_erased_key_is_rejected(net):
    held: list[Delivery] = []

    def hold(delivery: Delivery) -> bytes | None:
        if delivery in data_deliveries_of([delivery], "h3"):
            held.append(delivery)
            return None
        return delivery.datagram

    net.intercept = hold
    send(net, "h", count=1)
    net.intercept = None
    net.machines["C"].rekey("G", net.now)
    net.run()
    net.advance(7.0)

    net.inject("D", net.addresses["h3"], held[-1].datagram)

    assert epoch_of(net, "h3") == 2
    assert rejected(net, "h3") == ["erased-key"]


def test_data_under_old_key_within_grace_is_accepted(net):
    held: list[Delivery] = []

    def hold(delivery: Delivery) -> bytes | None:
        if delivery in data_deliveries_of([delivery], "h3"):
            held.append(delivery)
            return None
        return delivery.datagram

    net.intercept = hold
    send(net, "h", count=1)
    net.intercept = None
    net.machines["C"].rekey("G", net.now)
    net.run()
    net.advance(2.0)

    net.inject("D", net.addresses["h3"], held[-1].datagram)

    assert rejected(net, "h3") == []
    assert received(net, "h3") == [2]


def test_hop_limit_ends_a_loop(net):
    send(net, "h", count=1)
    packet = DataPacket.decode(data_deliveries(net, "A")[0].datagram)
    machine = net.machines["A"]
    handles = machine.data_plane["239.1.1.1"].handles
    spent = dataclasses.replace(packet, hop_limit=1, seq=60, handle=b"")
    tagged = dataclasses.replace(
        spent, handle=net.machines["h"].member_state["239.1.1.1"].handles.tag(
            "A", spent.handled_bytes())
    )

    net.inject("h", net.addresses["A"], tagged.encode())

    assert "hop-limit" in rejected(net, "A")
    assert "h" in handles


# sender keys


def test_forged_origin_is_rejected(net):
    send(net, "h", count=2)

    send(net, "h2", count=3, forge_as="h")

    assert rejected(net, "h3") == ["forged-origin"] * 3
    assert received(net, "h3", "h") == [2, 3]


def test_data_before_announcement_waits_then_fails(net):
    def drop_announcements(delivery: Delivery) -> bytes | None:
        if delivery.destination == "h3" and is_announcement(delivery):
            return None
        return delivery.datagram

    net.intercept = drop_announcements
    send(net, "h", count=2)
    assert rejected(net, "h3") == []

    net.advance(2.0)

    assert rejected(net, "h3") == ["unknown-sender-key"] * 2


def test_non_member_sender_reaches_members(net):
    send(net, "s", count=3)
    net.advance(1.0)

    for host in MEMBERS:
        assert received(net, host, "s") == [1, 2, 3]
    granted = net.trace("C", "sender_key_granted")
    assert [e.fields["sender"] for e in granted] == ["s"]
    assert not net.machines["s"].member_state["239.1.1.1"].holds_keys()


def test_initiator_sends_as_non_member(net):
    send(net, "init", count=2)
    net.advance(1.0)

    assert received(net, "h2", "init") == [1, 2]


def test_sender_outside_acl_is_refused(net):
    send(net, "x", count=2)
    net.advance(1.0)

    assert [e.fields["reason"] for e in net.trace("C", "sender_rejected")] == [
        "not-on-acl"
    ]
    assert [e.fields["reason"] for e in net.trace("x", "send_failed")] == [
        "not-on-acl"
    ]
    assert data_deliveries(net, "E") == []


def test_non_member_session_key_never_in_clear(net):
    send(net, "s", count=1)
    machine = net.machines["s"]
    session = machine.member_state["239.1.1.1"].session
    assert session is not None
    key = bytes(session._key)

    assert all(key not in d.datagram for d in net.deliveries)


# re-keying


def test_rekey_moves_every_member_to_new_epoch(net):
    net.machines["C"].rekey("G", net.now)
    net.run()

    assert {epoch_of(net, host) for host in MEMBERS} == {2}
    for router in ("A", "B", "D"):
        assert net.stored_bundle(router).epoch == 2


def test_rekey_keeps_kek_and_changes_group_key(net):
    before = net.stored_bundle("A")

    net.machines["C"].rekey("G", net.now)
    net.run()

    after = net.stored_bundle("A")
    assert after.kek == before.kek
    assert after.group_key != before.group_key
    assert after.spi != before.spi


def test_members_send_under_new_key_after_activation(net):
    net.machines["C"].rekey("G", net.now)
    net.run()
    send(net, "h", count=1)
    net.advance(1.0)
    send(net, "h", count=1)

    epochs = [e.fields["epoch"] for e in net.trace("h3", "data_received")]
    assert epochs == [1, 2]


def test_old_epoch_is_erased_after_grace(net):
    net.machines["C"].rekey("G", net.now)
    net.run()

    net.advance(6.5)

    erased = [e.fields["epoch"] for e in net.trace("h2", "epoch_erased")]
    assert erased == [1]
    assert len(net.machines["h2"].member_state["239.1.1.1"].sa) == 1


def test_rekey_before_lifetime_ends(net):
    bundle = net.stored_bundle("C")
    timers = net.machines["C"].config.timers

    net.advance(bundle.not_after - net.now)

    sent = net.trace("C", "rekey_sent")
    assert [e.fields["reason"] for e in sent] == ["lifetime"]
    assert sent[0].time <= bundle.not_after - timers.rekey_activation - timers.rekey_grace
    assert epoch_of(net, "h3") == 2


def rekey_from(net: Network, signer: str, parent: str, child: str) -> bytes:
    """Return a re-key notice that ``signer`` signed, sent by ``parent``."""
    current = net.stored_bundle("C")
    notice = RekeyNotice(
        group="239.1.1.1", epoch=current.epoch + 1, kind=RekeyKind.SCHEDULED,
        issued_ms=int(net.now * 1000), activation_ms=1000, grace_ms=5000,
        sealed_bundle=b"\x00" * 60,
    )
    signed = SignedRekey.sign(notice, net.machines[signer].identity, "default")
    machine = net.machines[parent]
    group = net.group(parent)
    header = machine.header(MessageType.REKEY, group, origin=group.core_addresses[0])
    message = Rekey(header, machine.new_token(child, net.now), signed)
    return net.sign_as(parent, message)


def test_rekey_not_signed_by_primary_is_rejected(net):
    datagram = rekey_from(net, "B", "B", "A")

    net.inject("B", net.addresses["A"], datagram)

    events = net.trace("A", "rekey_rejected")
    assert [e.fields["reason"] for e in events] == ["not-primary"]
    assert net.stored_bundle("A").epoch == 1
    assert net.delivered(MessageType.REKEY, "A") == []


def test_rekey_from_non_parent_is_rejected(net):
    datagram = rekey_from(net, "C", "D", "C")
    machine = net.machines["C"]

    net.inject("D", net.addresses["C"], datagram)

    assert machine.counters["drop:unexpected-message"] == 1
    assert net.stored_bundle("C").epoch == 1


def test_missed_rekey_is_recovered(net):
    def drop_rekey(delivery: Delivery) -> bytes | None:
        if delivery.destination == "h3" and is_message(delivery, MessageType.REKEY):
            return None
        return delivery.datagram

    net.intercept = drop_rekey
    net.machines["C"].rekey("G", net.now)
    net.run()
    net.intercept = None
    net.advance(1.5)

    send(net, "h", count=1)
    net.advance(1.0)

    assert [e.fields["reason"] for e in net.trace("h3", "rekey_missed")] == [
        "newer-data"
    ]
    assert epoch_of(net, "h3") == 2


def test_only_primary_rekeys(net):
    with pytest.raises(ConfigError):
        net.machines["B"].rekey("G", net.now)


# eviction


def evict(net: Network, host: str) -> None:
    net.machines["init"].update_acl("G", net.now, remove=(host,))
    net.run()
    net.advance(1.0)


def test_evicted_member_cannot_follow(net):
    evict(net, "h2")

    assert [e.name for e in net.trace("h2", "evicted")] == ["evicted"]
    assert net.machines["h2"].member_state["239.1.1.1"].sa.newest is None
    assert epoch_of(net, "h") == 2
    assert epoch_of(net, "h3") == 2


def test_eviction_changes_kek(net):
    before = net.stored_bundle("D")

    evict(net, "h2")

    assert net.stored_bundle("D").kek != before.kek


def test_evicted_member_gets_no_later_data(net):
    evict(net, "h2")
    net.advance(1.5)

    send(net, "h3", count=3)

    assert received(net, "h", "h3") == [2, 3, 4]
    assert received(net, "h2", "h3") == []
    assert data_deliveries(net, "h2") == []


def test_evicted_member_rejoin_is_denied(net):
    evict(net, "h2")

    denials = [e.fields["host"] for e in net.trace("A", "join_denied")]
    assert "h2" in denials
    assert "h2" not in net.machines["A"].groups["239.1.1.1"].members


def test_evicted_member_cannot_open_the_wraps(net):
    captured: list[Delivery] = []

    def keep(delivery: Delivery) -> bytes:
        if delivery.destination == "h2" and is_message(delivery, MessageType.REKEY):
            captured.append(delivery)
        return delivery.datagram

    # h2 erases its paths when evicted, so the test keeps a copy of them
    paths = copy.deepcopy(net.machines["h2"].member_state["239.1.1.1"].paths)
    assert len(paths) == 1
    net.intercept = keep
    net.machines["init"].update_acl("G", net.now, remove=("h2",))
    net.run()

    message = captured[0].message
    assert message.wraps is not None
    assert message.wraps.wraps[0].owner == "C"
    with pytest.raises(AuthenticationFailed) as caught:
        paths.follow(message.wraps, "239.1.1.1", message.rekey.notice.epoch)
    assert caught.value.reason == "evicted"


def test_eviction_costs_few_wraps(net):
    evict(net, "h2")

    events = [
        e for node in ("A", "B", "C", "D") for e in net.trace(node, "branch_rekeyed")
    ]
    assert [e.fields["evicted"] for e in events if e.fields["evicted"]] == [["h2"]]
    for event in events:
        leaves = event.fields["leaves"] + len(event.fields["evicted"])
        # RFC 2627: about two wraps per level of a GKDC's key tree
        assert event.fields["wraps"] <= 2 * max(1, leaves.bit_length())


# garbage on the data path


@pytest.fixture(scope="module")
def fuzz_net(pki_for) -> tuple[Network, list[Delivery]]:
    """The two-branch network after some data, and the data it carried."""
    from harness import build

    spec = two_branch_spec()
    tree = build(spec, pki_for(spec))
    tree.run()
    for host in MEMBERS:
        tree.join(host)
    tree.advance(1.0)
    send(tree, "h", count=3)
    send(tree, "s", count=2)
    tree.advance(1.0)
    carried = [d for d in tree.deliveries if is_data_packet(d.datagram)]
    return tree, carried


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzz_data_packets_never_raise(fuzz_net, data):
    tree, carried = fuzz_net
    original = data.draw(st.sampled_from(carried))
    datagram = bytearray(original.datagram)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(datagram) - 1))
        action = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        if action == "flip":
            datagram[position] ^= data.draw(st.integers(1, 255))
        elif action == "cut":
            del datagram[position:]
            if not datagram:
                datagram = bytearray(b"\x10\xff")
        else:
            datagram[position:position] = data.draw(st.binary(min_size=1, max_size=8))
    before = {host: len(received(tree, host)) for host in MEMBERS}

    tree.inject(original.source, tree.addresses[original.destination], bytes(datagram))
    tree.run()

    # a changed packet is never delivered as data, whatever it became
    assert {host: len(received(tree, host)) for host in MEMBERS} == before
