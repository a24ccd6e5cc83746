"""CBT tree maintenance: keepalives, parent loss, re-joins, loops, quits, pruning.

Every timer path has its own test: join retransmission, next-core
fallback, loop detection, echo timeout and quit retransmission. Networks
come from ``tree_support``, with short timers, and fail by dropping what
crosses a link or reaches a node.
"""

from __future__ import annotations

import dataclasses

import pytest
from harness import GROUP_ADDRESS, Network, Spec, with_checksum
from tree_support import FAST, build_network, restart

from node.messages import (
    AckCode,
    ControlHeader,
    JoinAck,
    JoinCode,
    JoinRequest,
    MessageType,
    Path,
    ReasonCode,
    TreeMessage,
    decode_message,
)

T = MessageType


def diamond() -> Spec:
    """h behind DR A; A reaches the core C through B (cheap) or D (dear)."""
    return Spec(
        roles={"h": "host", "h2": "host", "A": "router", "B": "router",
               "D": "router", "C": "core", "init": "initiator"},
        links=[("h", "A"), ("h2", "A"), ("A", "B"), ("B", "C"), ("A", "D"),
               ("D", "C"), ("init", "C")],
    )


def two_cores() -> Spec:
    """Primary C and secondary S; h behind A, h2 behind S.

    A reaches C through B and S directly, and S reaches C directly.
    """
    return Spec(
        roles={"h": "host", "h2": "host", "A": "router", "B": "router",
               "C": "core", "S": "core", "init": "initiator"},
        links=[("h", "A"), ("h2", "S"), ("A", "B"), ("B", "C"), ("A", "S"),
               ("S", "C"), ("init", "C")],
        cores=("C", "S"),
    )


def chain_with_shortcut() -> Spec:
    """C - P - R - K in a chain, and a dear shortcut K - C; hk behind K."""
    return Spec(
        roles={"hk": "host", "h": "host", "P": "router", "R": "router",
               "K": "router", "C": "core", "init": "initiator"},
        links=[("hk", "K"), ("h", "P"), ("C", "P"), ("P", "R"), ("R", "K"),
               ("K", "C"), ("init", "C")],
        acl_hosts=("hk", "h"),
    )


@pytest.fixture
def make(pki_for):
    def build(spec: Spec, **options) -> Network:
        net = build_network(spec, pki_for(spec), **options)
        net.advance(2)  # routes converge and the ACL is installed
        return net

    return build


def state(net: Network, name: str):
    return net.machines[name].groups[GROUP_ADDRESS]


def events(net: Network, node: str, name: str) -> list[dict]:
    return [e.fields for e in net.trace(node, name)]


def drops(net: Network, node: str, reason: str) -> list[dict]:
    return [f for f in events(net, node, "drop") if f["reason"] == reason]


def join_and_settle(net: Network, *hosts: str) -> None:
    for host in hosts:
        net.join(host)
    net.advance(1)
    for host in hosts:
        assert net.machines[host].holds_key("G"), host


def drop_matching(net: Network, match, times: int = 1):
    """Drop the first ``times`` deliveries for which ``match`` holds, then pass."""
    faults = net.intercept
    dropped: list[bytes] = []

    def intercept(delivery):
        if len(dropped) < times and match(delivery):
            dropped.append(delivery.datagram)
            return None
        return faults(delivery)

    net.intercept = intercept
    return dropped


def is_type(message_type: MessageType, source: str, destination: str):
    def match(delivery) -> bool:
        return (delivery.source, delivery.destination) == (source, destination) and (
            delivery.message.header.type is message_type
        )

    return match


# keepalives

def test_echo_keeps_branch(make):
    net = make(diamond())
    join_and_settle(net, "h")

    net.advance(10)

    assert events(net, "A", "parent_lost") == []
    assert len(net.delivered(T.ECHO_REQUEST, "A", "B")) >= 9
    assert len(net.delivered(T.ECHO_REPLY, "B", "A")) >= 9
    assert len(net.delivered(T.ECHO_REQUEST, "B", "C")) >= 9
    assert state(net, "A").parent == "B"


def test_echo_timeout_loses_parent(make):
    # static routes, so only the missing echo replies can reveal the loss
    net = make(diamond(), routing="static")
    join_and_settle(net, "h")
    drop_matching(net, is_type(T.ECHO_REPLY, "B", "A"), times=1000)

    net.advance(FAST.echo_timeout + 0.5)

    (lost,) = events(net, "A", "parent_lost")
    assert lost["reason"] == "echo-timeout"
    assert lost["parent"] == "B"
    (started,) = events(net, "A", "rejoin_started")
    assert started["code"] == "active_join"


def test_echo_from_stranger_is_dropped(make):
    net = make(diamond())
    join_and_settle(net, "h")
    machine = net.machines["D"]
    header = machine.header(T.ECHO_REQUEST, net.group("D"), origin=net.addresses["D"])
    echo = TreeMessage(header, machine.new_token("A", net.now))
    net.inject("D", net.addresses["A"], net.sign_as("D", echo))
    net.run()

    assert len(drops(net, "A", "not-child")) == 1
    assert net.delivered(T.ECHO_REPLY, "A", "D") == []


def test_silent_child_expires_and_prunes(make):
    net = make(diamond())
    join_and_settle(net, "h")

    net.faults.cut("A", "B")
    net.advance(FAST.router_dead_interval + FAST.child_assert_expire + 1)

    (expired,) = events(net, "B", "child_expired")
    assert expired["peer"] == "A"
    assert not state(net, "B").on_tree
    assert state(net, "C").children == {"D"}


# parent loss by route change, and the re-join around it

def test_link_failure_rejoins_around(make):
    net = make(diamond())
    join_and_settle(net, "h")
    failed_at = net.now

    net.faults.cut("A", "B")
    net.advance(FAST.router_dead_interval + 1)

    (lost,) = events(net, "A", "parent_lost")
    assert lost["reason"] == "route-change"
    (rejoined,) = net.trace("A", "rejoined")
    assert rejoined.fields["parent"] == "D"
    assert rejoined.time - failed_at < FAST.router_dead_interval + 0.5
    assert state(net, "A").parent == "D"
    assert state(net, "D").parent == "C"
    assert net.machines["h"].holds_key("G")


def test_rejoin_carries_router_token(make):
    net = make(diamond())
    join_and_settle(net, "h")
    net.deliveries.clear()

    net.faults.cut("A", "B")
    net.advance(FAST.router_dead_interval + 1)

    (join,) = [d.message for d in net.delivered(T.JOIN_REQUEST, "A", "D")]
    assert join.host_token.host == "A"
    assert join.signature.signer == "A"
    assert join.path.routers == ("A",)
    ack = net.delivered(T.JOIN_ACK, "D", "A")[0].message
    assert ack.host_bundle is None
    assert ack.hop_bundle.recipient == "A"
    verified = [e for e in events(net, "C", "token_verified") if e["kind"] == "router"]
    assert [e["host"] for e in verified] == ["A"]


def test_rejoin_retransmitted(make):
    net = make(diamond())
    join_and_settle(net, "h")
    dropped = drop_matching(net, is_type(T.JOIN_REQUEST, "A", "D"))

    net.faults.cut("A", "B")
    net.advance(FAST.router_dead_interval + FAST.pending_join_interval + 1)

    assert len(dropped) == 1
    sent = [e["attempt"] for e in events(net, "A", "join_sent") if e["host"] == "A"]
    assert sent == [1, 2]
    first = decode_message(dropped[0])
    second = net.delivered(T.JOIN_REQUEST, "A", "D")[-1].message
    assert second.host_token == first.host_token
    assert second.token.nonce != first.token.nonce
    assert state(net, "A").parent == "D"


def test_rejoin_with_children_answered_by_root(make):
    # B loses C and re-joins with child A through D, which is off the tree
    # and passes the re-join on to C: the primary answers with code 1, so B
    # needs no loop probe
    spec = diamond()
    spec.links.append(("B", "D"))
    net = make(spec)
    join_and_settle(net, "h")
    assert state(net, "B").parent == "C"

    net.faults.cut("B", "C")
    net.advance(FAST.router_dead_interval + 1)

    (started,) = events(net, "B", "rejoin_started")
    assert started["code"] == "rejoin"
    assert state(net, "B").parent == "D"
    assert state(net, "A").parent == "B"
    assert net.trace("B", "loop_probe_sent") == []
    acks = [d.message for d in net.delivered(T.JOIN_ACK, "D", "B")]
    assert [a.header.code for a in acks] == [AckCode.PRIMARY_REJOIN]


# loop detection

def test_loop_probe_detects_loop(make):
    # R loses P and its route to C now runs through its own child K, which
    # answers the re-join: the probe comes back to R, which breaks the loop
    net = make(chain_with_shortcut(), costs={("K", "C"): 10})
    join_and_settle(net, "hk")
    assert state(net, "K").parent == "R"
    assert state(net, "R").parent == "P"

    net.faults.cut("P", "R")
    net.advance(FAST.router_dead_interval + 2)

    (started,) = events(net, "R", "rejoin_started")
    assert started["code"] == "rejoin"
    assert len(events(net, "R", "loop_probe_sent")) == 1
    (loop,) = events(net, "R", "loop_detected")
    assert loop["reason"] == "probe-returned"
    assert loop["parent"] == "K"
    assert len(events(net, "K", "flush_received")) == 1
    assert state(net, "K").parent == "C"
    assert not state(net, "R").on_tree
    assert "R" not in state(net, "K").children
    assert net.machines["hk"].holds_key("G")


def test_loop_probe_answered_by_root(make):
    # A loses B and re-joins with child E through D; B, on the tree but not
    # the root, answers, so A probes: the probe climbs D, B and reaches C
    spec = Spec(
        roles={"he": "host", "E": "router", "A": "router", "B": "router",
               "D": "router", "C": "core", "init": "initiator"},
        links=[("he", "E"), ("E", "A"), ("A", "B"), ("B", "C"), ("A", "D"),
               ("D", "B"), ("init", "C")],
        acl_hosts=("he",),
    )
    net = make(spec)
    join_and_settle(net, "he")
    assert state(net, "A").parent == "B"

    net.faults.cut("A", "B")
    net.advance(FAST.router_dead_interval + 1)

    (started,) = events(net, "A", "rejoin_started")
    assert started["code"] == "rejoin"
    acks = [d.message.header.code for d in net.delivered(T.JOIN_ACK, "D", "A")]
    assert acks == [AckCode.NORMAL, AckCode.PRIMARY_LOOP_PROBE]
    assert len(events(net, "A", "loop_probe_sent")) == 1
    assert len(events(net, "C", "loop_probe_answered")) == 1
    assert len(events(net, "A", "loop_probe_ok")) == 1
    assert events(net, "A", "loop_detected") == []
    assert state(net, "A").parent == "D"
    assert state(net, "D").parent == "B"
    assert state(net, "E").parent == "A"
    assert net.machines["he"].holds_key("G")


# next-core fallback and the acting root

def test_next_core_fallback(make):
    net = make(two_cores(), routing="static")
    join_and_settle(net, "h2")
    assert state(net, "S").parent == "C"
    assert net.machines["A"].routes[net.addresses["C"]] == net.addresses["B"]

    net.faults.cut("B", "C")
    net.join("h")
    net.advance(FAST.pending_join_timeout + 1.5)

    (fallback,) = events(net, "A", "core_fallback")
    assert fallback["reason"] == "timeout"
    assert fallback["core"] == net.addresses["S"]
    sent = [e["peer"] for e in events(net, "A", "join_sent") if e["host"] == "h"]
    assert sent[-1] == "S"
    assert sent[:-1] == ["B"] * (len(sent) - 1)
    assert net.machines["h"].holds_key("G")
    assert "A" in state(net, "S").children


def test_secondary_acts_as_root_when_primary_fails(make):
    net = make(two_cores())
    join_and_settle(net, "h2")

    net.faults.nodes.add("C")
    net.advance(FAST.router_dead_interval + 1)
    net.join("h")
    net.advance(2)

    assert len(events(net, "S", "acting_root")) == 1
    assert state(net, "S").is_root
    assert net.machines["h"].holds_key("G")
    assert net.machines["h2"].holds_key("G")
    assert state(net, "A").on_tree
    # only the primary core creates keys, so the epoch stays the same
    assert net.stored_bundle("S") == net.stored_bundle("A")


def test_secondary_acts_as_root_with_static_routes(make):
    net = make(two_cores(), routing="static")
    join_and_settle(net, "h2")

    net.faults.nodes.add("C")
    net.advance(FAST.echo_timeout + FAST.pending_join_timeout + 1.5)

    assert len(events(net, "S", "acting_root")) == 1
    assert state(net, "S").is_root


# quits and pruning

def test_leave_prunes_branch(make):
    net = make(diamond())
    join_and_settle(net, "h")

    net.machines["h"].leave("G", net.now)
    net.run()

    assert not state(net, "A").on_tree
    assert not state(net, "B").on_tree
    assert state(net, "C").on_tree
    assert state(net, "C").children == set()
    for router in ("A", "B"):
        assert not net.machines[router].holds_keys("G"), router
        assert len(events(net, router, "pruned")) == 1, router
    assert len(events(net, "A", "quit_acked")) == 1


def test_leave_keeps_branch_for_other_member(make):
    net = make(diamond())
    join_and_settle(net, "h", "h2")

    net.machines["h"].leave("G", net.now)
    net.run()

    assert state(net, "A").on_tree
    assert state(net, "A").members == {"h2"}
    assert events(net, "A", "pruned") == []


def test_silent_member_expires(make):
    net = make(diamond())
    join_and_settle(net, "h")

    net.faults.nodes.add("h")
    net.advance(FAST.membership_timeout + 1)

    (expired,) = events(net, "A", "member_expired")
    assert expired["host"] == "h"
    assert not state(net, "A").on_tree


def test_quit_retransmitted_until_acked(make):
    net = make(diamond())
    join_and_settle(net, "h")
    drop_matching(net, is_type(T.QUIT_REQUEST, "A", "B"))

    net.machines["h"].leave("G", net.now)
    net.run()
    net.advance(FAST.pending_quit_interval + 0.5)

    attempts = [e["attempt"] for e in events(net, "A", "quit_sent")]
    assert attempts == [1, 2]
    assert len(events(net, "A", "quit_acked")) == 1
    assert not state(net, "B").on_tree


def test_quit_abandoned_after_retries(make):
    net = make(diamond())
    join_and_settle(net, "h")
    drop_matching(net, is_type(T.QUIT_ACK, "B", "A"), times=1000)

    net.machines["h"].leave("G", net.now)
    net.run()
    net.advance(FAST.pending_quit_retries * FAST.pending_quit_interval + 1)

    attempts = [e["attempt"] for e in events(net, "A", "quit_sent")]
    assert attempts == list(range(1, FAST.pending_quit_retries + 1))
    assert len(events(net, "A", "quit_abandoned")) == 1
    assert state(net, "A").quits == {}
    assert not state(net, "B").on_tree


def test_quit_ack_without_quit_is_dropped(make):
    net = make(diamond())
    join_and_settle(net, "h")
    machine = net.machines["B"]
    header = machine.header(T.QUIT_ACK, net.group("B"), origin=net.addresses["B"])
    ack = TreeMessage(header, machine.new_token("A", net.now))
    net.inject("B", net.addresses["A"], net.sign_as("B", ack))
    net.run()

    assert len(drops(net, "A", "unexpected-answer")) == 1


def test_stray_ack_is_answered_with_quit(make):
    # an ack from D for a join A never sent D: D took A as a child, so A quits
    net = make(diamond())
    join_and_settle(net, "h")
    d = net.machines["D"]
    group = net.group("D")
    token = net.machines["A"].new_host_token(group, net.now)
    header = d.header(T.JOIN_ACK, group, origin=net.addresses["A"])
    acl = state(net, "C").acl
    ack = JoinAck(header, d.new_token("A", net.now), token, acl)

    net.inject("D", net.addresses["A"], net.sign_as("D", ack))
    net.run()

    assert len(drops(net, "A", "unexpected-answer")) == 1
    (quit_sent,) = events(net, "A", "quit_sent")
    assert quit_sent["peer"] == "D"
    assert len(events(net, "A", "quit_acked")) == 1
    assert state(net, "A").parent == "B"


def test_flush_from_non_parent_is_dropped(make):
    net = make(diamond())
    join_and_settle(net, "h")
    machine = net.machines["D"]
    header = machine.header(T.FLUSH_TREE, net.group("D"), origin=net.addresses["D"])
    flush = TreeMessage(header, machine.new_token("A", net.now))
    net.inject("D", net.addresses["A"], net.sign_as("D", flush))
    net.run()

    assert len(drops(net, "A", "not-parent")) == 1
    assert state(net, "A").parent == "B"


# restarts and pending joins

def test_restarted_dr_serves_members_again(make, pki_for):
    spec = diamond()
    net = make(spec)
    join_and_settle(net, "h")

    restart(net, "A", pki_for(spec))
    net.advance(FAST.membership_interval + 2)

    assert state(net, "A").members == {"h"}
    assert state(net, "A").on_tree
    installs = net.trace("h", "key_installed")
    assert len(installs) == 2
    assert installs[0].fields["group_key_fp"] == installs[1].fields["group_key_fp"]


def test_join_queued_during_rejoin_is_answered(make):
    net = make(diamond())
    join_and_settle(net, "h")
    # the re-join's first ack is lost, so A still waits when h2 reports
    drop_matching(net, is_type(T.JOIN_ACK, "D", "A"))

    net.faults.cut("A", "B")
    net.advance(FAST.router_dead_interval + 0.2)
    net.join("h2")
    net.advance(FAST.pending_join_interval + 0.5)

    assert len(events(net, "A", "join_queued")) == 1
    assert net.machines["h2"].holds_key("G")
    assert state(net, "A").members == {"h", "h2"}


# a re-join is as secure as a join

def capture_rejoin(net: Network) -> list[bytes]:
    """Cut A - B, and return (and drop) A's first re-join toward D."""
    dropped = drop_matching(net, is_type(T.JOIN_REQUEST, "A", "D"))
    net.faults.cut("A", "B")
    net.advance(FAST.router_dead_interval + 0.1)
    assert len(dropped) == 1
    return dropped


def flip_last_byte(datagram: bytes) -> bytes:
    edited = bytearray(datagram)
    edited[-1] ^= 0x01
    return with_checksum(bytes(edited))


def test_forged_rejoin_is_rejected(make):
    net = make(diamond())
    join_and_settle(net, "h")
    (rejoin,) = capture_rejoin(net)

    net.inject("A", net.addresses["D"], flip_last_byte(rejoin))
    net.run()

    assert len(drops(net, "D", "bad-signature")) == 1
    assert net.delivered(T.JOIN_ACK, "D", "A") == []


def test_replayed_rejoin_is_rejected(make):
    net = make(diamond())
    join_and_settle(net, "h")
    (rejoin,) = capture_rejoin(net)
    net.advance(FAST.pending_join_interval + 0.5)
    assert state(net, "A").parent == "D"
    acks = len(net.delivered(T.JOIN_ACK, "D", "A"))

    net.inject("A", net.addresses["D"], rejoin)
    net.run()

    # the hop token was never seen, but its re-sent twin carried the same
    # router token: the hop signature and token still bind it to one use
    net.inject("A", net.addresses["D"], rejoin)
    net.run()

    assert len(drops(net, "D", "replayed-token")) == 1
    assert len(net.delivered(T.JOIN_ACK, "D", "A")) == acks + 1


def forged_rejoin(net: Network, token_signer: str, token_host: str, code: JoinCode):
    """Build a join from A to D with a router token for ``token_host``.

    ``token_signer`` signs the token, which a forger makes someone else.
    """
    a = net.machines["A"]
    group = net.group("A")
    token = net.machines[token_signer].new_host_token(group, net.now)
    token = dataclasses.replace(token, host=token_host)
    if token_signer != token_host:
        unsigned = dataclasses.replace(token, signature=b"")
        signature = net.machines[token_signer].identity.sign(
            group.suite, unsigned.signed_bytes())
        token = dataclasses.replace(token, signature=signature)
    header = a.header(T.JOIN_REQUEST, group, origin=net.addresses["A"], code=code)
    join = JoinRequest(header, a.new_token("D", net.now), token, Path(("A",)))
    return net.sign_as("A", join)


def test_rejoin_with_another_routers_token_is_rejected(make):
    net = make(diamond())
    join_and_settle(net, "h")

    net.inject("A", net.addresses["D"],
               forged_rejoin(net, "A", "B", JoinCode.REJOIN))
    net.run()

    assert len(drops(net, "D", "token-mismatch")) == 1
    assert net.delivered(T.JOIN_REQUEST, "D", "C") == []


def test_rejoin_token_signed_by_other_key_is_rejected(make):
    # A's token for itself, but signed with B's key
    net = make(diamond())
    join_and_settle(net, "h")

    net.inject("A", net.addresses["D"],
               forged_rejoin(net, "B", "A", JoinCode.ACTIVE_JOIN))
    net.run()

    rejected = events(net, "C", "token_rejected")
    assert [(e["kind"], e["reason"]) for e in rejected] == [("router", "bad-signature")]
    nack = net.delivered(T.JOIN_NACK, "C", "D")[0].message
    assert nack.reason.code is ReasonCode.AUTHENTICATION_FAILED
    assert net.delivered(T.JOIN_ACK, "C", "D") == []


def test_host_token_in_rejoin_is_rejected(make):
    net = make(diamond())
    join_and_settle(net, "h")
    a = net.machines["A"]
    group = net.group("A")
    token = net.machines["h"].new_host_token(group, net.now)
    header = a.header(T.JOIN_REQUEST, group, origin=net.addresses["A"],
                      code=JoinCode.REJOIN)
    join = JoinRequest(header, a.new_token("D", net.now), token, Path(("A",)))

    net.inject("A", net.addresses["D"], net.sign_as("A", join))
    net.run()

    assert len(drops(net, "D", "token-mismatch")) == 1


def test_untrusted_router_rejoins_without_keys(pki_for):
    spec = diamond()
    spec.trusted_routers = ("B", "D", "C")
    net = build_network(spec, pki_for(spec))
    net.advance(2)
    join_and_settle(net, "h")
    assert not net.machines["A"].holds_keys("G")

    net.faults.cut("A", "B")
    net.advance(FAST.router_dead_interval + 1)

    assert state(net, "A").parent == "D"
    ack = net.delivered(T.JOIN_ACK, "D", "A")[-1].message
    assert ack.hop_bundle is None
    assert ack.host_bundle is None
    assert not net.machines["A"].holds_keys("G")
    assert net.machines["D"].holds_keys("G")


def test_unknown_join_code_is_malformed(make):
    net = make(diamond())
    a = net.machines["A"]
    group = net.group("A")
    token = a.new_host_token(group, net.now)
    header = ControlHeader(T.JOIN_REQUEST, group.address, code=3,
                           cores=group.core_addresses)
    join = JoinRequest(header, a.new_token("D", net.now), token, Path(("A",)))

    net.inject("A", net.addresses["D"], net.sign_as("A", join))
    net.run()

    assert len(drops(net, "D", "malformed")) == 1


# the trace the runner checks the tree invariant from

def test_tree_state_traced_on_change(make):
    net = make(diamond())
    join_and_settle(net, "h")

    net.faults.cut("A", "B")
    net.advance(FAST.router_dead_interval + 1)

    states = events(net, "A", "tree_state")
    assert states[-1]["parent"] == "D"
    assert states[-1]["members"] == ["h"]
    assert states[-1]["on_tree"] is True
    parents = [s["parent"] for s in states]
    assert parents == [None, "B", None, "D"]
    root = events(net, "C", "tree_state")[-1]
    assert root["root"] is True
