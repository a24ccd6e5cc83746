"""Fuzzing Machine.receive: nothing a peer sends may raise out of a node.

One fuzzer feeds routers random bytes and mutated captured datagrams. The
other signs messages with the real keys of the nodes that would send them, so
hostile field values reach the handlers behind the signature check.
"""

from __future__ import annotations

import dataclasses

import pytest
from harness import GROUP_ADDRESS, Network, build, figure1_spec, with_checksum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.bundles import seal_bundle, sign_bundle
from node.crypto import SUITES
from node.messages import (
    NO_GROUP,
    AckCode,
    AclAccept,
    AclUpload,
    ControlHeader,
    Hello,
    HelloBody,
    JoinAck,
    JoinCode,
    JoinNack,
    JoinRequest,
    KeyDelivery,
    LinkStateUpdate,
    Lsa,
    MembershipReport,
    MessageType,
    Path,
    Reason,
    ReasonCode,
    Rekey,
    ReportCode,
    SealedAcl,
    SealedBundle,
    SenderKeyGrantMessage,
    SenderKeyRequestMessage,
    SignedLsa,
    TreeMessage,
)
from node.lkh import LkhUpdate
from node.rekey import BranchWrap, BranchWraps, RekeyKind, RekeyNotice, SignedRekey
from node.senderkeys import SenderKeyGrant, SenderKeyRequest, public_bytes

T = MessageType

FUZZ_SETTINGS = settings(
    max_examples=1_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
NAMES = ("h", "h2", "h9", "A", "B", "C", "init", "mallory")


FUZZ_STATES = ("fresh", "joined", "strict")


def fuzz_network(pki_for, state: str) -> Network:
    """A new Figure 1 network in one of ``FUZZ_STATES``.

    ``fresh`` has only the ACL installed, ``joined`` has h joined and h9
    denied, and ``strict`` is strict mode after the same joins. Each example
    gets its own network, so a failure replays exactly.
    """
    spec = figure1_spec(strict=state == "strict")
    net = build(spec, pki_for(spec))
    net.run()
    if state != "fresh":
        net.join("h")
        net.join("h9")
    return net


@st.composite
def mutated(draw, datagrams: list[bytes]) -> bytes:
    """Random bytes, or a captured datagram with bytes flipped, cut or inserted."""
    if draw(st.booleans()):
        data = bytearray(draw(st.binary(max_size=300)))
    else:
        data = bytearray(draw(st.sampled_from(datagrams)))
        for _ in range(draw(st.integers(0, 3))):
            position = draw(st.integers(0, len(data)))
            action = draw(st.sampled_from(["flip", "cut", "insert"]))
            if action == "flip" and position < len(data):
                data[position] ^= draw(st.integers(1, 255))
            elif action == "cut":
                del data[position:]
            else:
                data[position:position] = draw(st.sampled_from(datagrams))
    if len(data) >= 8 and draw(st.booleans()):
        return with_checksum(bytes(data))
    return bytes(data)


@pytest.fixture(scope="module")
def shared_networks(pki_for) -> dict[str, Network]:
    """One network per fuzz state, shared by every example of the byte fuzzer.

    Garbage almost never changes a router's state, so a shared network keeps
    examples nearly replayable. The signed fuzzer builds its own networks.
    """
    return {state: fuzz_network(pki_for, state) for state in FUZZ_STATES}


@FUZZ_SETTINGS
@given(state=st.sampled_from(FUZZ_STATES), data=st.data())
def test_fuzz_router_receive_never_raises(shared_networks, state, data):
    net = shared_networks[state]
    captured = [d.datagram for d in net.deliveries]
    router = net.machines[data.draw(st.sampled_from(["A", "B", "C"]))]
    source = data.draw(st.sampled_from(sorted(net.addresses.values())))
    datagram = data.draw(mutated(captured))
    received = router.counters["received"]

    router.receive(datagram, source, net.now)

    assert router.counters["received"] == received + 1
    router.pop_outputs()


def fresh_bundle(net: Network, recipient: str) -> SealedBundle:
    """Seal the group's real key bundle to ``recipient``, as the core would."""
    core = net.machines["C"]
    group = net.group("C")
    signed = sign_bundle(net.stored_bundle("C"), core.identity, group)
    peer = core.directory.lookup(recipient, group.suite, net.now,
                                 ("host", "router", "core"))
    return seal_bundle(signed, peer, group)


# who sends what to whom in a working network, so that most fuzzed messages
# pass the signer, role and neighbour checks and reach the handlers
PLAUSIBLE = {
    "A": [("h", T.MEMBERSHIP_REPORT), ("h2", T.MEMBERSHIP_REPORT),
          ("h9", T.MEMBERSHIP_REPORT), ("B", T.JOIN_ACK), ("B", T.JOIN_NACK),
          ("B", T.JOIN_REQUEST)],
    "B": [("A", T.JOIN_REQUEST), ("C", T.JOIN_ACK), ("C", T.JOIN_NACK),
          ("A", T.JOIN_ACK)],
    "C": [("B", T.JOIN_REQUEST), ("init", T.ACL_UPLOAD), ("B", T.JOIN_NACK),
          ("h", T.SENDER_KEY_REQUEST), ("h9", T.SENDER_KEY_REQUEST)],
    "h": [("A", T.KEY_DELIVERY), ("A", T.REKEY), ("C", T.SENDER_KEY_GRANT)],
    "init": [("C", T.ACL_ACCEPT), ("C", T.SENDER_KEY_GRANT)],
}


def waiting_tokens(net: Network, receiver: str) -> list:
    """Host tokens that ``receiver`` waits on: joins it forwarded, reports it sent."""
    machine = net.machines[receiver]
    if hasattr(machine, "groups"):
        state = machine.groups[GROUP_ADDRESS]
        return [r.host_token for r in state.requests.values()]
    if hasattr(machine, "memberships"):
        return list(machine.memberships[GROUP_ADDRESS].outstanding.values())
    return []


CODES = {
    T.JOIN_REQUEST: tuple(JoinCode),
    T.JOIN_ACK: tuple(AckCode),
    T.MEMBERSHIP_REPORT: tuple(ReportCode),
}


def routing_message(net: Network, sender: str, message_type: T, token, draw):
    """A hello or link-state update, with its LSA signed by the sender."""
    header = ControlHeader(message_type, NO_GROUP)
    names = st.sampled_from(NAMES)
    if message_type is T.HELLO:
        heard = tuple(draw(st.lists(names, max_size=3)))
        summary = tuple(draw(st.lists(
            st.tuples(names, st.integers(0, 2**40)), max_size=3)))
        return Hello(header, token, HelloBody(heard, summary))

    links = tuple(draw(st.lists(st.tuples(names, st.integers(0, 100)), max_size=3)))
    lsa = Lsa(sender, net.addresses[sender], int(net.now * 1000), links)
    unsigned = SignedLsa.create(lsa, b"")
    suite = net.group(sender).suite
    signature = net.machines[sender].identity.sign(suite, unsigned.signed_bytes())
    return LinkStateUpdate(header, token, SignedLsa.create(lsa, signature))


KEYING_TYPES = (T.REKEY, T.SENDER_KEY_REQUEST, T.SENDER_KEY_GRANT)


def keying_message(net: Network, sender: str, header, token, acl, draw):
    """Return a re-key notice or a message of a sender's key exchange.

    The notice is signed by the primary core or by the sender, and every
    field mixes valid and hostile values.
    """
    if header.type is T.REKEY:
        kind = draw(st.sampled_from(list(RekeyKind)))
        scheduled = kind is RekeyKind.SCHEDULED
        sealed = draw(st.binary(min_size=1, max_size=90)) if scheduled else b""
        notice = RekeyNotice(
            GROUP_ADDRESS, draw(st.integers(0, 5)), kind, int(net.now * 1000),
            draw(st.integers(0, 3000)), draw(st.integers(0, 9000)), sealed,
            None if scheduled and draw(st.booleans()) else acl,
        )
        signer = draw(st.sampled_from(["C", "C", sender]))
        signed = SignedRekey.sign(notice, net.machines[signer].identity, "default")
        wraps = None
        if draw(st.booleans()):
            owner = draw(st.sampled_from(NAMES))
            update = LkhUpdate(draw(st.integers(0, 9)), ())
            sealed_bundle = draw(st.binary(max_size=90))
            wraps = BranchWraps((BranchWrap(owner, update, sealed_bundle),))
        return Rekey(header, token, signed, wraps)
    if header.type is T.SENDER_KEY_REQUEST:
        suite = net.machines["C"].config.groups[0].suite
        verify_key = draw(st.one_of(
            st.binary(max_size=40),
            st.just(public_bytes(SUITES[suite].generate_signing_key())),
        ))
        exchange = draw(st.binary(max_size=40))
        request = SenderKeyRequest(draw(st.integers(0, 2**32 - 1)),
                                   draw(st.binary(min_size=16, max_size=16)),
                                   verify_key, exchange)
        return SenderKeyRequestMessage(header, token, request)
    reason = Reason(draw(st.sampled_from(list(ReasonCode))))
    grant = None
    if draw(st.booleans()):
        grant = SenderKeyGrant(draw(st.integers(0, 2**32 - 1)),
                               draw(st.integers(0, 2**40)),
                               draw(st.binary(max_size=80)))
    return SenderKeyGrantMessage(header, token, reason, grant)


@st.composite
def signed_message(draw, net: Network, receiver: str):
    """A sender and a message whose fields mix valid and hostile values."""
    if draw(st.integers(0, 3)):
        sender, message_type = draw(st.sampled_from(PLAUSIBLE[receiver]))
    else:
        sender = draw(st.sampled_from(NAMES[:7]))
        message_type = draw(st.sampled_from(list(MessageType)))
    group = net.group(sender)
    addresses = sorted(net.addresses.values()) + ["0.0.0.0"]
    # mostly codes the header decoder accepts, so the handlers see them
    defined = CODES.get(message_type, (0,))
    codes = st.one_of(st.sampled_from(defined), st.integers(0, 255))
    header = ControlHeader(
        message_type,
        group.address if draw(st.integers(0, 9)) else "239.9.9.9",
        origin=draw(st.sampled_from(addresses)),
        primary_core=group.core_addresses[0],
        target_core=draw(st.sampled_from(group.core_addresses * 3 + tuple(addresses))),
        cores=group.core_addresses,
        code=draw(codes),
    )
    # the sender's own random source keeps nonces unique across examples
    skew = draw(st.sampled_from([0, 0, 0, -40, 40]))
    recipient = draw(st.sampled_from([receiver, receiver, receiver, "B"]))
    token = net.machines[sender].new_token(recipient, net.now + skew)
    if draw(st.integers(0, 5)) == 0:
        token = dataclasses.replace(token, sender="A")

    # draws never depend on the network's state, so examples replay exactly
    use_waiting = draw(st.booleans())
    index = draw(st.integers(0, 7))
    host = draw(st.sampled_from(["h", "h2", "h9"]))
    waiting = waiting_tokens(net, receiver)
    if use_waiting and waiting:
        host_token = waiting[index % len(waiting)]
    else:
        host_token = net.machines[host].new_host_token(group, net.now)
    if draw(st.integers(0, 5)) == 0:
        host_token = dataclasses.replace(host_token, signature=bytes(64))

    acl = net.machines["C"].groups[GROUP_ADDRESS].acl
    if draw(st.integers(0, 3)) == 0:
        serial = draw(st.integers(0, 3))
        acl = net.sign_acl(dataclasses.replace(acl.acl, serial=serial))
    bundles = st.one_of(
        st.sampled_from(["h", "h2", "A", "B", "C"]).map(
            lambda name: fresh_bundle(net, name)),
        st.builds(SealedBundle, st.sampled_from(NAMES),
                  st.binary(min_size=1, max_size=80)),
    )
    path = Path(tuple(draw(st.lists(st.sampled_from(NAMES[:6]), max_size=3)))
                + draw(st.sampled_from([(sender,), (sender,), ()])))
    reason = Reason(draw(st.sampled_from(list(ReasonCode))),
                    draw(st.text(max_size=20)))

    if message_type is T.JOIN_REQUEST:
        message = JoinRequest(header, token, host_token, path)
    elif message_type is T.JOIN_ACK:
        message = JoinAck(header, token, host_token, acl, draw(bundles),
                          draw(st.one_of(st.none(), bundles)))
    elif message_type is T.JOIN_NACK:
        message = JoinNack(header, token, host_token, reason)
    elif message_type is T.MEMBERSHIP_REPORT:
        message = MembershipReport(header, host_token)
    elif message_type is T.KEY_DELIVERY:
        message = KeyDelivery(header, token, host_token, acl, draw(bundles))
    elif message_type is T.ACL_UPLOAD and draw(st.booleans()):
        message = AclUpload(header, token, acl=acl)
    elif message_type is T.ACL_UPLOAD:
        sealed = draw(st.binary(min_size=1, max_size=200))
        message = AclUpload(header, token, sealed_acl=SealedAcl(sealed))
    elif message_type is T.ACL_ACCEPT:
        message = AclAccept(header, token, reason)
    elif message_type in (T.HELLO, T.LINK_STATE):
        message = routing_message(net, sender, message_type, token, draw)
    elif message_type in KEYING_TYPES:
        message = keying_message(net, sender, header, token, acl, draw)
    else:
        message = TreeMessage(header, token)
    return sender, message


@settings(FUZZ_SETTINGS, max_examples=400)
@given(state=st.sampled_from(FUZZ_STATES), data=st.data())
def test_fuzz_signed_messages_never_raise(pki_for, state, data):
    # messages carry their sender's real signature, so they reach the handlers
    # behind the signature check, and real joins are mixed in
    net = fuzz_network(pki_for, state)
    for _ in range(data.draw(st.integers(1, 6))):
        if data.draw(st.integers(0, 5)) == 0:
            net.join(data.draw(st.sampled_from(["h", "h2", "h9"])))
            continue
        receiver = data.draw(st.sampled_from(sorted(PLAUSIBLE)))
        sender, message = data.draw(signed_message(net, receiver))

        net.inject(sender, net.addresses[receiver], net.sign_as(sender, message))
        net.run()
        net.advance(data.draw(st.sampled_from([0.0, 0.0, 1.5, 12.0])))

    # the ACL never admits h9, whatever arrived
    assert not net.machines["h9"].holds_key("G")
