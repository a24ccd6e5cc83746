"""Sender keys: announcements, their checks, the receiver's table and the grant."""

from __future__ import annotations

import dataclasses

import pytest
from harness import START, figure1_spec, make_acl

from node.crypto import SUITES
from node.errors import AuthenticationFailed, MalformedMessage
from node.senderkeys import (
    SenderKey,
    SenderKeyRequest,
    SenderKeyTable,
    SignedSenderKey,
    load_verifying_key,
    make_grant,
    open_grant,
    public_bytes,
    verify_announcement,
    verify_origin,
)

NOW = START
SESSION_KEY = bytes(range(16))


@pytest.fixture(scope="module", params=["default", "pq"])
def net(request, pki_for):
    from harness import build

    spec = figure1_spec(suite=request.param)
    network = build(spec, pki_for(spec))
    network.run()
    return network


def sender_key(net, sender="h", session_key=b"", **changes) -> tuple[SenderKey, object]:
    suite = SUITES[net.group("h").suite]
    signing = suite.generate_signing_key()
    key = SenderKey(
        group=net.group("h").address, sender=sender, sender_spi=0x51,
        suite=suite.code, issued_ms=int(NOW * 1000), not_after=int(NOW) + 600,
        verify_key=public_bytes(signing), session_key=session_key,
    )
    return dataclasses.replace(key, **changes), signing


def announce(net, key: SenderKey, signer: str) -> SignedSenderKey:
    machine = net.machines[signer]
    return SignedSenderKey.sign(key, machine.identity, net.group(signer).suite)


def check(net, signed: SignedSenderKey, packet_sender: str, now: float = NOW):
    machine = net.machines["h2"]
    acl = make_acl(figure1_spec(suite=net.group("h2").suite))
    return verify_announcement(
        signed, packet_sender, machine.directory, net.group("h2"), acl, now
    )


def reason_of(call, *args) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        call(*args)
    return caught.value.reason


# documents


def test_sender_key_round_trip(net):
    key, _ = sender_key(net, session_key=SESSION_KEY)

    assert SenderKey.decode(key.encode()) == key


def test_signed_sender_key_round_trip(net):
    key, _ = sender_key(net)
    signed = announce(net, key, "h")

    assert SignedSenderKey.decode(signed.encode()) == signed


def test_session_key_of_wrong_size_is_malformed(net):
    key, _ = sender_key(net, session_key=b"short")

    with pytest.raises(MalformedMessage):
        SenderKey.decode(key.encode())


# announcements


def test_member_announcement_verifies(net):
    key, _ = sender_key(net)

    assert check(net, announce(net, key, "h"), "h") == key


def test_primary_announcement_verifies(net):
    key, _ = sender_key(net, session_key=SESSION_KEY)

    assert check(net, announce(net, key, "C"), "C") == key


def test_announcement_by_another_member_is_rejected(net):
    key, _ = sender_key(net)

    assert reason_of(check, net, announce(net, key, "h2"), "h2") == "bad-sender-key"


def test_announcement_relayed_by_another_is_rejected(net):
    key, _ = sender_key(net)

    assert reason_of(check, net, announce(net, key, "h"), "h2") == "bad-sender-key"


def test_member_announcement_with_session_key_is_rejected(net):
    key, _ = sender_key(net, session_key=SESSION_KEY)

    assert reason_of(check, net, announce(net, key, "h"), "h") == "bad-sender-key"


def test_primary_announcement_without_session_key_is_rejected(net):
    key, _ = sender_key(net)

    assert reason_of(check, net, announce(net, key, "C"), "C") == "bad-sender-key"


def test_announcement_signed_by_router_is_rejected(net):
    key, _ = sender_key(net, session_key=SESSION_KEY)

    assert reason_of(check, net, announce(net, key, "B"), "B") == "bad-sender-key"


def test_sender_outside_acl_is_rejected(net):
    key, _ = sender_key(net, sender="h9")

    assert reason_of(check, net, announce(net, key, "h9"), "h9") == "sender-not-on-acl"


def test_initiator_may_send(net):
    key, _ = sender_key(net, sender="init", session_key=SESSION_KEY)

    assert check(net, announce(net, key, "C"), "C").sender == "init"


def test_altered_announcement_is_rejected(net):
    key, _ = sender_key(net)
    signed = announce(net, key, "h")
    other, _ = sender_key(net)
    forged = dataclasses.replace(signed, body=other.encode())

    assert reason_of(check, net, forged, "h") == "bad-signature"


def test_expired_announcement_is_rejected(net):
    key, _ = sender_key(net)

    assert reason_of(check, net, announce(net, key, "h"), "h", NOW + 601) == (
        "expired-sender-key"
    )


def test_announcement_for_other_group_is_rejected(net):
    key, _ = sender_key(net, group="239.9.9.9")

    assert reason_of(check, net, announce(net, key, "h"), "h") == "bad-sender-key"


# origin checks and the receiver's table


def test_origin_verifies_under_sender_key(net):
    key, signing = sender_key(net)
    table = SenderKeyTable()
    suite = SUITES[net.group("h").suite]
    table.learn(key, "h", suite)
    known = table.lookup("h", 0x51, NOW)

    verify_origin(known, suite.sign(signing, b"packet"), b"packet")


def test_forged_origin_is_rejected(net):
    key, _ = sender_key(net)
    _, forger = sender_key(net, sender="h2")
    table = SenderKeyTable()
    suite = SUITES[net.group("h").suite]
    table.learn(key, "h", suite)
    known = table.lookup("h", 0x51, NOW)

    assert reason_of(verify_origin, known, suite.sign(forger, b"packet"), b"packet") == (
        "forged-origin"
    )


def test_table_keeps_newest_announcement(net):
    suite = SUITES[net.group("h").suite]
    table = SenderKeyTable()
    old, _ = sender_key(net)
    new, _ = sender_key(net, sender_spi=0x52, issued_ms=old.issued_ms + 1)

    assert table.learn(old, "h", suite)
    assert table.learn(new, "h", suite)
    assert not table.learn(old, "h", suite)
    assert table.lookup("h", 0x52, NOW).key == new
    assert reason_of(table.lookup, "h", 0x51, NOW) == "unknown-sender-key"


def test_table_rejects_expired_key(net):
    suite = SUITES[net.group("h").suite]
    table = SenderKeyTable()
    key, _ = sender_key(net)
    table.learn(key, "h", suite)

    assert reason_of(table.lookup, "h", 0x51, NOW + 601) == "expired-sender-key"


def test_table_session_key_and_revocation(net):
    suite = SUITES[net.group("h").suite]
    table = SenderKeyTable()
    key, _ = sender_key(net, sender="init", session_key=SESSION_KEY)
    table.learn(key, "C", suite)
    session = table.lookup("init", 0x51, NOW).session
    assert session is not None

    revoked = table.retain(lambda name: name != "init")

    assert revoked == ["init"]
    assert session.erased
    assert "init" not in table


def test_table_is_bounded(net):
    suite = SUITES[net.group("h").suite]
    table = SenderKeyTable(max_senders=2)
    for name in ("h", "h2", "h9"):
        key, _ = sender_key(net, sender=name)
        table.learn(key, name, suite)

    assert table.senders() == ["h2", "h9"]


def test_bad_verify_key_is_malformed(net):
    suite = SUITES[net.group("h").suite]

    with pytest.raises(MalformedMessage):
        load_verifying_key(suite, b"\x01" * 5)


# the key exchange


def exchange(net):
    suite = SUITES[net.group("h").suite]
    private = suite.generate_kem_key()
    request = SenderKeyRequest(0x51, b"\x07" * 16, b"\x01" * 32, private.public_key.raw)
    return suite, private, request


def test_grant_opens_for_its_request(net):
    suite, private, request = exchange(net)
    grant = make_grant(suite, "239.1.1.1", "init", request, SESSION_KEY, 99)

    assert open_grant(suite, private, "239.1.1.1", "init", request, grant) == (
        SESSION_KEY
    )


def test_grant_for_another_request_does_not_open(net):
    suite, private, request = exchange(net)
    grant = make_grant(suite, "239.1.1.1", "init", request, SESSION_KEY, 99)
    other = dataclasses.replace(request, nonce=b"\x08" * 16)

    assert reason_of(
        open_grant, suite, private, "239.1.1.1", "init", other, grant
    ) == "bad-seal"


def test_grant_for_another_sender_does_not_open(net):
    suite, private, request = exchange(net)
    grant = make_grant(suite, "239.1.1.1", "init", request, SESSION_KEY, 99)

    assert reason_of(
        open_grant, suite, private, "239.1.1.1", "h", request, grant
    ) == "bad-seal"


def test_grant_with_other_spi_does_not_open(net):
    suite, private, request = exchange(net)
    grant = dataclasses.replace(
        make_grant(suite, "239.1.1.1", "init", request, SESSION_KEY, 99),
        sender_spi=0x99,
    )

    assert reason_of(
        open_grant, suite, private, "239.1.1.1", "init", request, grant
    ) == "bad-seal"


def test_grant_to_bad_exchange_key_fails(net):
    suite, _, request = exchange(net)
    bad = dataclasses.replace(request, exchange_key=b"\x01" * 3)

    assert reason_of(
        make_grant, suite, "239.1.1.1", "init", bad, SESSION_KEY, 99
    ) == "malformed"
