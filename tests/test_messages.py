"""Control messages: the header, the TLV block, signing and decoding.

The fuzz tests feed random bytes and mutated valid datagrams of every type to
the decoder, and assert that nothing but ``MalformedMessage`` escapes.
"""

from __future__ import annotations

import dataclasses

import pytest
from harness import with_checksum
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.codec import Writer, internet_checksum
from node.documents import AclMode, GroupAcl, HostToken, SignedAcl, Token
from node.errors import MalformedMessage
from node.messages import (
    FIXED_HEADER_SIZE,
    MESSAGE_CLASSES,
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
    Message,
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
    Signature,
    SignedLsa,
    TlvType,
    TreeMessage,
    decode_message,
    sign_message,
)
from node.lkh import KeyRef, LkhUpdate, WrappedKey
from node.rekey import BranchWrap, BranchWraps, RekeyKind, RekeyNotice, SignedRekey
from node.senderkeys import SenderKeyGrant, SenderKeyRequest

GROUP = "239.1.1.1"
CORES = ("127.1.0.3", "127.1.0.9")
NONCE = bytes(range(16))
SIGNATURE = Signature("A", 1, b"\x5a" * 64)


def header(message_type: MessageType, **changes) -> ControlHeader:
    header = ControlHeader(message_type, GROUP, origin="127.1.0.1",
                           primary_core=CORES[0], target_core=CORES[0], cores=CORES)
    return dataclasses.replace(header, **changes)


def token(sender: str = "A", recipient: str = "B") -> Token:
    return Token(sender, recipient, 1_800_000_000_000, NONCE)


def host_token() -> HostToken:
    return HostToken("h", GROUP, 1_800_000_000_000, NONCE[::-1], 1, b"\x11" * 64)


def signed_acl() -> SignedAcl:
    acl = GroupAcl(GROUP, 1, AclMode.INCLUDE, ("h", "h2"), 0, 2**40, "init", 1,
                   3600, trusted_routers=("A", "C"))
    return SignedAcl.create(acl, b"\x22" * 64)


def sealed(recipient: str) -> SealedBundle:
    return SealedBundle(recipient, b"\x33" * 120)


def signed_rekey(kind: RekeyKind) -> SignedRekey:
    scheduled = kind is RekeyKind.SCHEDULED
    notice = RekeyNotice(
        GROUP, 2, kind, 1_800_000_000_000, 1000, 5000,
        sealed_bundle=b"\x70" * 90 if scheduled else b"",
        acl=None if scheduled else signed_acl(),
    )
    return SignedRekey(notice.encode(), "C", b"\x71" * 64, notice)


def branch_wraps() -> BranchWraps:
    entry = WrappedKey(KeyRef(3, 1), KeyRef(1, 2), b"\x72" * 44)
    return BranchWraps((BranchWrap("C", LkhUpdate(1, (entry,)), b"\x73" * 90),))


def keying_samples() -> dict[str, Message]:
    """Messages of re-keying and sender keys, and the keying TLVs of the join."""
    request = SenderKeyRequest(7, NONCE, b"\x74" * 32, b"\x75" * 32)
    grant = SenderKeyGrant(7, 1_800_003_600, b"\x76" * 64)
    return {
        "join-ack-keying": JoinAck(
            header(MessageType.JOIN_ACK), token("C", "B"), host_token(), signed_acl(),
            sealed("h"), sealed("B"), sealed("B"), sealed("h"), sealed("B")),
        "key-delivery-keying": KeyDelivery(
            header(MessageType.KEY_DELIVERY), token("A", "h"), host_token(),
            signed_acl(), sealed("h"), sealed("h"), sealed("h")),
        "rekey-scheduled": Rekey(header(MessageType.REKEY), token("B", "A"),
                                 signed_rekey(RekeyKind.SCHEDULED)),
        "rekey-eviction": Rekey(header(MessageType.REKEY), token("B", "A"),
                                signed_rekey(RekeyKind.EVICTION), branch_wraps()),
        "sender-key-request": SenderKeyRequestMessage(
            header(MessageType.SENDER_KEY_REQUEST), token("h", "C"), request),
        "sender-key-grant": SenderKeyGrantMessage(
            header(MessageType.SENDER_KEY_GRANT), token("C", "h"),
            Reason(ReasonCode.ACCEPTED), grant),
        "sender-key-refused": SenderKeyGrantMessage(
            header(MessageType.SENDER_KEY_GRANT), token("C", "h"),
            Reason(ReasonCode.NOT_ON_ACL, "h9")),
    }


def sample_messages() -> dict[str, Message]:
    """One message of every type, with every optional TLV variant."""
    samples: dict[str, Message] = {
        "join-request": JoinRequest(header(MessageType.JOIN_REQUEST), token(),
                                    host_token(), Path(("A", "B"))),
        "join-ack": JoinAck(header(MessageType.JOIN_ACK), token("C", "B"),
                            host_token(), signed_acl(), sealed("h"), sealed("B")),
        "join-ack-no-hop": JoinAck(header(MessageType.JOIN_ACK), token("C", "B"),
                                   host_token(), signed_acl(), sealed("h")),
        "join-nack": JoinNack(header(MessageType.JOIN_NACK), token("C", "B"),
                              host_token(), Reason(ReasonCode.NOT_ON_ACL, "no")),
        "report": MembershipReport(
            header(MessageType.MEMBERSHIP_REPORT, code=ReportCode.LEAVE, cores=()),
            host_token()),
        "key-delivery": KeyDelivery(header(MessageType.KEY_DELIVERY), token("A", "h"),
                                    host_token(), signed_acl(), sealed("h")),
        "acl-upload": AclUpload(header(MessageType.ACL_UPLOAD), token("init", "C"),
                                acl=signed_acl()),
        "acl-upload-sealed": AclUpload(header(MessageType.ACL_UPLOAD),
                                       token("init", "C"),
                                       sealed_acl=SealedAcl(b"\x44" * 90)),
        "acl-accept": AclAccept(header(MessageType.ACL_ACCEPT), token("C", "init"),
                                Reason(ReasonCode.OLDER_ACL, "serial 1 <= 2")),
    }
    routing_header = ControlHeader(MessageType.HELLO, NO_GROUP)
    samples["hello"] = Hello(routing_header, token(),
                             HelloBody(("B", "C"), (("B", 17), ("C", 2**40))))
    lsa = Lsa("A", "127.1.0.1", 1_800_000_000_000, (("B", 1), ("C", 10)))
    samples["link-state"] = LinkStateUpdate(
        dataclasses.replace(routing_header, type=MessageType.LINK_STATE), token(),
        SignedLsa.create(lsa, b"\x66" * 64))
    for tree_type in (
        MessageType.QUIT_REQUEST, MessageType.QUIT_ACK, MessageType.FLUSH_TREE,
        MessageType.ECHO_REQUEST, MessageType.ECHO_REPLY,
    ):
        samples[tree_type.name.lower()] = TreeMessage(header(tree_type), token())
    samples.update(keying_samples())
    return samples


SAMPLES = sample_messages()
DATAGRAMS = {
    name: sign_message(message.encode_unsigned(), SIGNATURE)
    for name, message in SAMPLES.items()
}


def test_samples_cover_every_message_type():
    covered = {message.header.type for message in SAMPLES.values()}

    assert covered == set(MessageType)
    assert set(MESSAGE_CLASSES) == set(MessageType)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_message_round_trip(name):
    message = SAMPLES[name]
    datagram = DATAGRAMS[name]

    decoded = decode_message(datagram)

    assert type(decoded) is type(message)
    assert decoded == message
    assert decoded.signature == SIGNATURE
    assert decoded.encode_unsigned() == message.encode_unsigned()


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_signed_part_is_unsigned_encoding(name):
    datagram = DATAGRAMS[name]
    unsigned = SAMPLES[name].encode_unsigned()

    decoded = decode_message(datagram)

    assert decoded.signed_part == unsigned
    assert unsigned[6:8] == b"\0\0"
    assert datagram[6:8] != b"\0\0"


def test_signed_datagram_checksum_verifies():
    for datagram in DATAGRAMS.values():
        assert internet_checksum(datagram) == 0


def test_header_layout_matches_cbt():
    datagram = DATAGRAMS["join-request"]

    assert datagram[0] == 0x10  # version 1 in the high nibble
    assert datagram[1] == MessageType.JOIN_REQUEST
    assert datagram[3] == len(CORES)
    assert int.from_bytes(datagram[4:6], "big") == FIXED_HEADER_SIZE + 4 * len(CORES)
    assert datagram[8:12] == bytes([239, 1, 1, 1])


def test_bad_checksum_is_malformed():
    datagram = bytearray(DATAGRAMS["join-request"])
    datagram[-1] ^= 1

    with pytest.raises(MalformedMessage, match="bad checksum"):
        decode_message(bytes(datagram))


def test_checksum_can_be_skipped():
    datagram = bytearray(DATAGRAMS["join-request"])
    datagram[6:8] = b"\0\0"

    assert decode_message(bytes(datagram), check_checksum=False) == SAMPLES[
        "join-request"
    ]


def test_header_length_mismatch_is_malformed():
    datagram = bytearray(DATAGRAMS["join-request"])
    datagram[4:6] = (FIXED_HEADER_SIZE + 4).to_bytes(2, "big")

    with pytest.raises(MalformedMessage, match="does not match 2 cores"):
        decode_message(with_checksum(bytes(datagram)))


def test_core_count_mismatch_is_malformed():
    datagram = bytearray(DATAGRAMS["join-request"])
    datagram[3] = 3

    with pytest.raises(MalformedMessage, match="does not match 3 cores"):
        decode_message(with_checksum(bytes(datagram)))


def test_too_many_cores_is_malformed():
    datagram = bytearray(DATAGRAMS["join-request"])
    datagram[3] = 17

    with pytest.raises(MalformedMessage, match="17 cores"):
        decode_message(with_checksum(bytes(datagram)))


@pytest.mark.parametrize("version", [0, 2, 15])
def test_bad_version_is_malformed(version):
    datagram = bytearray(DATAGRAMS["join-request"])
    datagram[0] = version << 4

    with pytest.raises(MalformedMessage, match=f"unsupported version {version}"):
        decode_message(with_checksum(bytes(datagram)))


@pytest.mark.parametrize("name, code", [
    ("join-request", JoinCode.REJOIN_LOOP_PROBE),
    ("join-ack", AckCode.PRIMARY_LOOP_PROBE),
    ("report", ReportCode.REFRESH),
])
def test_defined_codes_decode(name, code):
    message = SAMPLES[name]
    coded = dataclasses.replace(message, header=dataclasses.replace(
        message.header, code=code))

    decoded = decode_message(sign_message(coded.encode_unsigned(), SIGNATURE))

    assert decoded.header.code == code


@pytest.mark.parametrize("name, code", [
    ("join-request", 3),
    ("join-ack", 9),
    ("report", 7),
    ("key-delivery", 1),
    ("echo_request", 0xFF),
])
def test_undefined_code_is_malformed(name, code):
    datagram = bytearray(DATAGRAMS[name])
    datagram[2] = code

    with pytest.raises(MalformedMessage, match=f"code {code}"):
        decode_message(with_checksum(bytes(datagram)))


def test_routing_message_with_group_is_malformed():
    hello = SAMPLES["hello"]
    grouped = dataclasses.replace(hello.header, group=GROUP)
    w = Writer()
    grouped.encode(w)
    datagram = w.getvalue() + hello.encode_unsigned()[FIXED_HEADER_SIZE:]

    with pytest.raises(MalformedMessage, match="belong to no group"):
        decode_message(sign_message(datagram, SIGNATURE))


def test_unknown_message_type_is_malformed():
    datagram = bytearray(DATAGRAMS["join-request"])
    datagram[1] = 0x42

    with pytest.raises(MalformedMessage, match="unknown message type 66"):
        decode_message(with_checksum(bytes(datagram)))


def tlv(tlv_type: int, value: bytes) -> bytes:
    w = Writer()
    w.push_u8(tlv_type)
    w.push_blob16(value)
    return w.getvalue()


def encoded(value) -> bytes:
    w = Writer()
    value.encode(w)
    return w.getvalue()


def assemble(message_type: MessageType, *tlvs: bytes) -> bytes:
    """Build a checksummed datagram from a header and raw TLVs."""
    w = Writer()
    header(message_type).encode(w)
    for part in tlvs:
        w.push_bytes(part)
    return with_checksum(w.getvalue())


def report_tlvs() -> tuple[bytes, bytes]:
    return (tlv(TlvType.HOST_TOKEN, encoded(host_token())),
            tlv(TlvType.SIGNATURE, encoded(SIGNATURE)))


def test_assembled_report_decodes():
    # the hand-built layout that the next tests break is itself valid
    message = decode_message(assemble(MessageType.MEMBERSHIP_REPORT, *report_tlvs()))

    assert isinstance(message, MembershipReport)


def test_tlvs_out_of_order_are_malformed():
    join = SAMPLES["join-request"]
    datagram = assemble(
        MessageType.JOIN_REQUEST,
        tlv(TlvType.HOST_TOKEN, encoded(join.host_token)),
        tlv(TlvType.TOKEN, encoded(join.token)),
        tlv(TlvType.PATH, encoded(join.path)),
        tlv(TlvType.SIGNATURE, encoded(SIGNATURE)),
    )

    with pytest.raises(MalformedMessage, match="out of order"):
        decode_message(datagram)


def test_repeated_tlv_is_malformed():
    host, signature = report_tlvs()
    datagram = assemble(MessageType.MEMBERSHIP_REPORT, host, host, signature)

    with pytest.raises(MalformedMessage, match="out of order or repeated"):
        decode_message(datagram)


def test_unknown_tlv_type_is_malformed():
    host, signature = report_tlvs()
    datagram = assemble(MessageType.MEMBERSHIP_REPORT, host, tlv(0x30, b"x"),
                        signature)

    with pytest.raises(MalformedMessage, match="unknown TLV type 48"):
        decode_message(datagram)


def test_missing_signature_is_malformed():
    host, _ = report_tlvs()

    with pytest.raises(MalformedMessage, match="missing signature"):
        decode_message(assemble(MessageType.MEMBERSHIP_REPORT, host))


def test_bytes_after_signature_are_malformed():
    host, signature = report_tlvs()
    datagram = assemble(MessageType.MEMBERSHIP_REPORT, host, signature + b"\0")

    with pytest.raises(MalformedMessage, match="trailing bytes after the signature"):
        decode_message(datagram)


def test_trailing_bytes_inside_tlv_are_malformed():
    _, signature = report_tlvs()
    padded = tlv(TlvType.HOST_TOKEN, encoded(host_token()) + b"\0")
    datagram = assemble(MessageType.MEMBERSHIP_REPORT, padded, signature)

    with pytest.raises(MalformedMessage, match="TLV HOST_TOKEN"):
        decode_message(datagram)


def test_missing_required_tlv_is_malformed():
    _, signature = report_tlvs()

    with pytest.raises(MalformedMessage, match="lacks its HOST_TOKEN"):
        decode_message(assemble(MessageType.MEMBERSHIP_REPORT, signature))


def test_tlv_foreign_to_type_is_malformed():
    host, signature = report_tlvs()
    datagram = assemble(MessageType.MEMBERSHIP_REPORT, host,
                        tlv(TlvType.PATH, encoded(Path(("A",)))), signature)

    with pytest.raises(MalformedMessage, match="cannot carry PATH"):
        decode_message(datagram)


def test_upload_with_both_acls_malformed():
    upload = SAMPLES["acl-upload"]
    datagram = assemble(
        MessageType.ACL_UPLOAD,
        tlv(TlvType.TOKEN, encoded(upload.token)),
        tlv(TlvType.ACL, encoded(upload.acl)),
        tlv(TlvType.SEALED_ACL, b"\x44" * 10),
        tlv(TlvType.SIGNATURE, encoded(SIGNATURE)),
    )

    with pytest.raises(MalformedMessage, match="exactly one ACL"):
        decode_message(datagram)


def test_upload_without_acl_malformed():
    upload = SAMPLES["acl-upload"]
    datagram = assemble(
        MessageType.ACL_UPLOAD,
        tlv(TlvType.TOKEN, encoded(upload.token)),
        tlv(TlvType.SIGNATURE, encoded(SIGNATURE)),
    )

    with pytest.raises(MalformedMessage, match="exactly one ACL"):
        decode_message(datagram)


def test_empty_sealed_bundle_is_malformed():
    ack = SAMPLES["join-ack-no-hop"]
    datagram = assemble(
        MessageType.JOIN_ACK,
        tlv(TlvType.TOKEN, encoded(ack.token)),
        tlv(TlvType.HOST_TOKEN, encoded(ack.host_token)),
        tlv(TlvType.ACL, encoded(ack.acl)),
        tlv(TlvType.HOST_BUNDLE, b"\x01h"),
        tlv(TlvType.SIGNATURE, encoded(SIGNATURE)),
    )

    with pytest.raises(MalformedMessage, match="empty sealed bundle"):
        decode_message(datagram)


def test_unknown_reason_code_is_malformed():
    accept = SAMPLES["acl-accept"]
    datagram = assemble(
        MessageType.ACL_ACCEPT,
        tlv(TlvType.TOKEN, encoded(accept.token)),
        tlv(TlvType.REASON, b"\x63\x00"),
        tlv(TlvType.SIGNATURE, encoded(SIGNATURE)),
    )

    with pytest.raises(MalformedMessage, match="unknown reason code 99"):
        decode_message(datagram)


def test_header_type_must_match_class():
    wrong = JoinNack(header(MessageType.JOIN_ACK), token(), host_token(),
                     Reason(ReasonCode.NO_ACL))

    with pytest.raises(ValueError):
        wrong.encode_unsigned()


def test_tree_message_rejects_other_types():
    wrong = TreeMessage(header(MessageType.JOIN_REQUEST), token())

    with pytest.raises(ValueError):
        wrong.encode_unsigned()


def test_reason_text_is_truncated():
    reason = Reason(ReasonCode.NO_ROUTE, "x" * 400)

    assert len(encoded(reason)) == 2 + 255


# fuzzing: random bytes and mutations of valid datagrams of every type

VALID = [DATAGRAMS[name] for name in sorted(DATAGRAMS)]
FUZZ_SETTINGS = settings(
    max_examples=5_000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def mutated_datagrams(draw) -> bytes:
    """A valid datagram with bytes flipped, cut, or other datagrams inserted."""
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "insert-datagram"]))
        if action == "flip" and position < len(data):
            data[position] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[position:]
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[position:position] = draw(st.sampled_from(VALID))
    return bytes(data)


def decode_or_malformed(datagram: bytes, check_checksum: bool) -> None:
    try:
        message = decode_message(datagram, check_checksum=check_checksum)
    except MalformedMessage:
        return
    # whatever decodes is signed over its own leading bytes, checksum zeroed
    assert message.signature is not None
    end = len(message.signed_part)
    assert message.signed_part == datagram[:6] + b"\0\0" + datagram[8:end]


@FUZZ_SETTINGS
@given(data=st.binary(max_size=600), check_checksum=st.booleans())
def test_fuzz_random_bytes(data, check_checksum):
    decode_or_malformed(data, check_checksum)
    if len(data) >= 8:
        # a correct checksum lets garbage reach the header and TLV decoders
        decode_or_malformed(with_checksum(data), True)


@FUZZ_SETTINGS
@given(data=mutated_datagrams())
def test_fuzz_mutated_datagrams(data):
    decode_or_malformed(data, check_checksum=True)
    decode_or_malformed(data, check_checksum=False)
    if len(data) >= 8:
        decode_or_malformed(with_checksum(data), True)
