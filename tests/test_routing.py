"""Link-state routing: the database and SPF alone, then routers that run it."""

from __future__ import annotations

import dataclasses

import pytest
from harness import Network, Spec, with_checksum
from hypothesis import given, settings
from hypothesis import strategies as st
from tree_support import FAST, build_network, restart

from node.codec import Reader, Writer
from node.errors import MalformedMessage
from node.messages import (
    NO_GROUP,
    ControlHeader,
    Hello,
    HelloBody,
    LinkStateUpdate,
    Lsa,
    MessageType,
    Signature,
    SignedLsa,
    sign_message,
)
from node.routing import LinkState, RateLimiter

T = MessageType
NOW = 1_800_000_000.0


def signed(lsa: Lsa) -> SignedLsa:
    return SignedLsa.create(lsa, b"\x01" * 64)


def link_state(name: str = "A", neighbours: dict[str, str] | None = None) -> LinkState:
    if neighbours is None:
        neighbours = {"B": "10.0.1.3", "D": "10.0.2.3"}
    return LinkState(name, "127.1.0.1", neighbours, {"D": 5}, FAST)


def install(state: LinkState, origin: str, address: str, links, sequence: int = 1):
    assert state.install(signed(Lsa(origin, address, sequence, tuple(links))), NOW)


def hear(state: LinkState, *names: str) -> None:
    for name in names:
        state.on_hello(name, HelloBody(("A",), ()), NOW)


# the database and shortest paths, without messages

def test_adjacency_needs_both_directions():
    state = link_state()

    one_way = state.on_hello("B", HelloBody(("C",), ()), NOW)
    two_way = state.on_hello("B", HelloBody(("A",), ()), NOW)

    assert one_way.first_heard
    assert not one_way.adjacency_changed
    assert two_way.adjacency_changed
    assert state.adjacent() == ["B"]


def test_routes_give_transport_next_hops():
    # identity addresses in, link addresses of the neighbours out
    state = link_state()
    hear(state, "B", "D")
    state.originated(signed(state.own_lsa(NOW)), NOW)
    install(state, "B", "127.1.0.2", [("A", 1), ("C", 1)])
    install(state, "D", "127.1.0.4", [("A", 5), ("C", 1)])
    install(state, "C", "127.1.0.3", [("B", 1), ("D", 1)])

    routes = state.compute_routes()

    # D is dearer directly (5) than through B and C (3)
    assert routes == {
        "127.1.0.2": "10.0.1.3",
        "127.1.0.3": "10.0.1.3",
        "127.1.0.4": "10.0.1.3",
    }
    assert state.next_hops["C"] == "B"


def test_one_sided_link_is_ignored():
    # C still lists B, but B no longer lists C: C is only reachable via D
    state = link_state()
    hear(state, "B", "D")
    state.originated(signed(state.own_lsa(NOW)), NOW)
    install(state, "B", "127.1.0.2", [("A", 1)])
    install(state, "D", "127.1.0.4", [("A", 5), ("C", 1)])
    install(state, "C", "127.1.0.3", [("B", 1), ("D", 1)])

    state.compute_routes()

    assert state.next_hops["C"] == "D"


def test_dead_router_drops_out():
    state = link_state()
    hear(state, "B", "D")
    state.originated(signed(state.own_lsa(NOW)), NOW)
    install(state, "B", "127.1.0.2", [("A", 1)])
    install(state, "D", "127.1.0.4", [("A", 5)])
    # C's last LSA still lists both, but neither lists C any more
    install(state, "C", "127.1.0.3", [("B", 1), ("D", 1)])

    routes = state.compute_routes()

    assert "127.1.0.3" not in routes


def test_older_lsa_is_not_installed():
    state = link_state()
    install(state, "B", "127.1.0.2", [("A", 1)], sequence=10)

    assert not state.install(signed(Lsa("B", "127.1.0.2", 9, ())), NOW)
    assert not state.install(signed(Lsa("B", "127.1.0.2", 10, ())), NOW)
    assert state.database["B"].lsa.links == (("A", 1),)


def test_own_sequence_outnumbers_copy_from_before_restart():
    state = link_state()
    ahead = int(NOW * 1000) + 5_000

    state.install(signed(Lsa("A", "127.1.0.1", ahead, ())), NOW)

    assert state.own_lsa(NOW).sequence == ahead + 1
    assert "A" not in state.database


def test_summary_selects_missing_lsas():
    state = link_state()
    hear(state, "B")
    install(state, "C", "127.1.0.3", [], sequence=5)
    install(state, "D", "127.1.0.4", [], sequence=5)

    outcome = state.on_hello("B", HelloBody(("A",), (("C", 5), ("D", 4))), NOW)

    assert [s.lsa.origin for s in outcome.lsas_to_send] == ["D"]


def test_silent_neighbour_goes_down():
    state = link_state()
    hear(state, "B", "D")

    state.on_hello("D", HelloBody(("A",), ()), NOW + 1.5)
    lost = state.expire_neighbours(NOW + FAST.router_dead_interval + 0.1)

    assert lost == ["B"]
    assert state.adjacent() == ["D"]


def test_stale_lsas_age_out():
    state = link_state()
    install(state, "C", "127.1.0.3", [])

    aged = state.age_out(NOW + 3 * FAST.lsa_refresh_interval + 1)

    assert aged == ["C"]
    assert state.database == {}


def test_rate_limiter_bounds_burst_and_rate():
    limiter = RateLimiter(burst=3, rate=2.0)

    burst = [limiter.allow("10.0.0.1", NOW) for _ in range(4)]
    later = limiter.allow("10.0.0.1", NOW + 0.5)
    other = limiter.allow("10.0.0.2", NOW)

    assert burst == [True, True, True, False]
    assert later is True
    assert other is True


# the wire format

@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_lsa_decoder_raises_only_malformed(data):
    try:
        Lsa.decode(data)
    except MalformedMessage:
        pass


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200))
def test_hello_decoder_raises_only_malformed(data):
    try:
        HelloBody.decode(Reader(data))
    except MalformedMessage:
        pass


def test_routing_message_with_group_is_malformed():
    with pytest.raises(MalformedMessage, match="belong to no group"):
        Hello(ControlHeader(T.HELLO, "239.1.1.1"), None, HelloBody((), ()))


# routers running the protocol

def diamond() -> Spec:
    return Spec(
        roles={"h": "host", "A": "router", "B": "router", "D": "router",
               "C": "core", "init": "initiator"},
        links=[("h", "A"), ("A", "B"), ("B", "C"), ("A", "D"), ("D", "C"),
               ("init", "C")],
        acl_hosts=("h",),
    )


@pytest.fixture
def net(pki_for) -> Network:
    spec = diamond()
    network = build_network(spec, pki_for(spec), costs={("A", "D"): 5})
    network.advance(2)
    return network


def drops(net: Network, node: str, reason: str) -> list[dict]:
    return [e.fields for e in net.trace(node, "drop") if e.fields["reason"] == reason]


def test_routes_converge(net):
    a = net.machines["A"]
    addresses = net.addresses

    # D is dearer directly (5) than through B and C (3)
    assert a.routes == {
        addresses["B"]: addresses["B"],
        addresses["C"]: addresses["B"],
        addresses["D"]: addresses["B"],
    }
    for name in ("A", "B", "C", "D"):
        assert net.machines[name].routing_status()["reaches_cores"], name


def test_hosts_get_no_hellos(net):
    assert net.delivered(T.HELLO, "A", "h") == []
    assert net.delivered(T.HELLO, "C", "init") == []


def test_link_failure_moves_routes(net):
    addresses = net.addresses

    net.faults.cut("A", "B")
    net.advance(FAST.router_dead_interval + 0.5)

    routes = net.machines["A"].routes
    assert routes[addresses["C"]] == addresses["D"]
    assert routes[addresses["B"]] == addresses["D"]


def test_mended_link_restores_routes(net):
    addresses = net.addresses
    net.faults.cut("A", "B")
    net.advance(FAST.router_dead_interval + 0.5)

    net.faults.mend("A", "B")
    net.advance(2 * FAST.hello_interval + 0.5)

    assert net.machines["A"].routes[addresses["C"]] == addresses["B"]


def test_lost_flood_repaired_by_hello_summary(net):
    # every LSA to D is lost for a while; D catches up from hello summaries
    addresses = net.addresses
    release = net.now + 1.0
    faults = net.intercept

    def intercept(delivery):
        if delivery.destination == "D" and net.now < release and (
            delivery.message.header.type is T.LINK_STATE
        ):
            return None
        return faults(delivery)

    net.intercept = intercept
    net.faults.cut("B", "C")
    net.advance(FAST.router_dead_interval + 2)

    assert net.machines["D"].routes[addresses["B"]] == addresses["A"]


def sign_routing(net: Network, signer: str, message) -> bytes:
    """Encode a routing message and sign it with ``signer``'s routing key."""
    unsigned = message.encode_unsigned()
    value = net.machines[signer].identity.sign("default", unsigned)
    return sign_message(unsigned, Signature(signer, 1, value))


def lsa_update(
    net: Network, sender: str, receiver: str, lsa: Lsa, key_of: str
) -> bytes:
    """A LINK_STATE from ``sender`` carrying ``lsa`` signed with ``key_of``'s key."""
    machine = net.machines[sender]
    unsigned = SignedLsa(lsa.encode(), b"", lsa)
    signature = net.machines[key_of].identity.sign("default", unsigned.signed_bytes())
    header = ControlHeader(T.LINK_STATE, NO_GROUP, origin=net.addresses[sender])
    update = LinkStateUpdate(header, machine.new_token(receiver, net.now),
                             SignedLsa(lsa.encode(), signature, lsa))
    return sign_routing(net, sender, update)


def test_forged_lsa_is_rejected(net):
    # B floods an LSA in C's name, signed with B's own key
    sequence = int(net.now * 1000) + 1
    forged = Lsa("C", net.addresses["C"], sequence, (("B", 1),))

    net.inject("B", net.addresses["A"], lsa_update(net, "B", "A", forged, "B"))
    net.run()

    assert len(drops(net, "A", "bad-signature")) == 1
    assert net.machines["A"].link_state.database["C"].lsa.sequence < sequence


def test_lsa_with_wrong_address_is_rejected(net):
    sequence = int(net.now * 1000) + 1
    lsa = Lsa("B", net.addresses["D"], sequence, (("A", 1),))

    net.inject("B", net.addresses["A"], lsa_update(net, "B", "A", lsa, "B"))
    net.run()

    assert len(drops(net, "A", "bad-lsa")) == 1


def test_lsa_from_far_future_is_rejected(net):
    sequence = int(net.now * 1000) + 3_600_000
    lsa = Lsa("B", net.addresses["B"], sequence, (("A", 1),))

    net.inject("B", net.addresses["A"], lsa_update(net, "B", "A", lsa, "B"))
    net.run()

    assert len(drops(net, "A", "future-lsa")) == 1
    assert net.machines["A"].link_state.database["B"].lsa.sequence < sequence


def test_replayed_hello_is_rejected(net):
    hello = net.delivered(T.HELLO, "B", "A")[-1].datagram

    net.inject("B", net.addresses["A"], hello)
    net.run()

    assert len(drops(net, "A", "replayed-token")) == 1


def test_tampered_hello_is_rejected(net):
    hello = bytearray(net.delivered(T.HELLO, "B", "A")[-1].datagram)
    hello[-1] ^= 1

    net.inject("B", net.addresses["A"], with_checksum(bytes(hello)))
    net.run()

    assert len(drops(net, "A", "bad-signature")) == 1


def test_hello_flood_is_rate_limited(net):
    a = net.machines["A"]
    a.rate_limiter = RateLimiter(burst=5, rate=1.0)
    b = net.machines["B"]
    header = ControlHeader(T.HELLO, NO_GROUP, origin=net.addresses["B"])
    body = b.link_state.hello_body(net.now)

    for _ in range(8):
        hello = Hello(header, b.new_token("A", net.now), body)
        net.inject("B", net.addresses["A"], sign_routing(net, "B", hello))

    assert len(drops(net, "A", "rate-limited")) == 3


def test_host_cannot_send_hello(net):
    h = net.machines["h"]
    header = ControlHeader(T.HELLO, NO_GROUP, origin=net.addresses["h"])
    hello = Hello(header, h.new_token("A", net.now), HelloBody(("A",), ()))

    net.inject("h", net.addresses["A"], sign_routing(net, "h", hello))
    net.run()

    assert len(drops(net, "A", "wrong-role")) == 1


def test_static_router_drops_routing_messages(pki_for):
    spec = diamond()
    net = build_network(spec, pki_for(spec), routing="static")
    b = net.machines["B"]
    header = ControlHeader(T.HELLO, NO_GROUP, origin=net.addresses["B"])
    hello = Hello(header, b.new_token("A", net.now), HelloBody(("A",), ()))

    net.inject("B", net.addresses["A"], sign_routing(net, "B", hello))
    net.run()

    assert len(drops(net, "A", "unexpected-message")) == 1
    assert net.delivered(T.HELLO) == [net.deliveries[-1]]


def test_restarted_router_relearns_routes(net, pki_for):
    machine = restart(net, "B", pki_for(diamond()))
    net.advance(2)

    assert machine.routes[net.addresses["C"]] == net.addresses["C"]
    assert net.machines["A"].routes[net.addresses["C"]] == net.addresses["B"]
    own = net.machines["A"].link_state.database["B"].lsa
    assert own.links == (("A", 1), ("C", 1))


def test_lsa_round_trip_keeps_body():
    lsa = Lsa("A", "127.1.0.1", 2**40, (("B", 1), ("C", 70000)))
    signed_lsa = signed(lsa)
    writer = Writer()
    signed_lsa.encode(writer)
    decoded = SignedLsa.decode(Reader(writer.getvalue()))

    assert decoded == signed_lsa
    assert decoded.lsa == lsa
    assert dataclasses.replace(lsa, sequence=1).encode() != lsa.encode()
