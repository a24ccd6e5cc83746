"""Tests of the Wireshark dissector (smkd/wireshark/smkd.lua), run through tshark.

Every field that tshark shows is compared with what node.messages decodes from
the same datagram, over the captures of a real figure1 run and over samples
of the message types that figure1 does not send.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from backend_support import require
from capture_samples import (
    addressed,
    sample_messages,
    write_datagrams,
    write_garbage,
    write_prefixes,
    write_snapped,
)

from node.capture import read_pcap
from node.messages import Message, MessageType, decode_message
from smkd.decode import dissector_path
from smkd.runner import run_scenario

REPO = Path(__file__).resolve().parent.parent
FIGURE1 = REPO / "scenarios" / "figure1.yaml"
TSHARK = shutil.which("tshark")
TSHARK_TIMEOUT = 120

HEADER_FIELDS = [
    "smkd.version",
    "smkd.type",
    "smkd.code",
    "smkd.core_count",
    "smkd.header_length",
    "smkd.checksum",
    "smkd.checksum.good",
    "smkd.group",
    "smkd.group_mask",
    "smkd.origin",
    "smkd.primary_core",
    "smkd.target_core",
    "smkd.core",
    "smkd.tlv.type",
    "smkd.tlv.length",
]
TLV_FIELDS = [
    "smkd.token.timestamp",
    "smkd.token.nonce",
    "smkd.token.sender",
    "smkd.token.recipient",
    "smkd.host_token.timestamp",
    "smkd.host_token.nonce",
    "smkd.host_token.host",
    "smkd.host_token.group",
    "smkd.host_token.suite",
    "smkd.host_token.signature_length",
    "smkd.acl.body_length",
    "smkd.acl.group",
    "smkd.acl.serial",
    "smkd.acl.mode",
    "smkd.acl.not_before",
    "smkd.acl.not_after",
    "smkd.acl.initiator",
    "smkd.acl.suite",
    "smkd.acl.key_lifetime",
    "smkd.acl.strict",
    "smkd.acl.host_count",
    "smkd.acl.host",
    "smkd.acl.has_trusted_routers",
    "smkd.acl.trusted_router",
    "smkd.acl.central",
    "smkd.acl.signature_length",
    "smkd.sealed_acl.length",
    "smkd.host_bundle.recipient",
    "smkd.host_bundle.sealed_length",
    "smkd.hop_bundle.recipient",
    "smkd.hop_bundle.sealed_length",
    "smkd.path.router",
    "smkd.reason.code",
    "smkd.reason.text",
    "smkd.hello.heard",
    "smkd.hello.summary_origin",
    "smkd.hello.summary_sequence",
    "smkd.lsa.body_length",
    "smkd.lsa.origin",
    "smkd.lsa.address",
    "smkd.lsa.sequence",
    "smkd.lsa.neighbour",
    "smkd.lsa.cost",
    "smkd.lsa.signature_length",
    "smkd.handle.recipient",
    "smkd.handle.sealed_length",
    "smkd.host_path.recipient",
    "smkd.host_path.sealed_length",
    "smkd.hop_path.recipient",
    "smkd.hop_path.sealed_length",
    "smkd.rekey.body_length",
    "smkd.rekey.group",
    "smkd.rekey.epoch",
    "smkd.rekey.kind",
    "smkd.rekey.issued",
    "smkd.rekey.activation_ms",
    "smkd.rekey.grace_ms",
    "smkd.rekey.sealed_length",
    "smkd.rekey.has_acl",
    "smkd.rekey.signer",
    "smkd.rekey.signature_length",
    "smkd.sender_request.spi",
    "smkd.sender_request.nonce",
    "smkd.sender_request.verify_key_length",
    "smkd.sender_request.exchange_key_length",
    "smkd.sender_grant.spi",
    "smkd.sender_grant.not_after",
    "smkd.sender_grant.sealed_length",
    "smkd.wraps.count",
    "smkd.wraps.owner",
    "smkd.wraps.root",
    "smkd.wraps.entry_count",
    "smkd.wraps.sealed_length",
    "smkd.signature.signer",
    "smkd.signature.suite",
    "smkd.signature.length",
]
FIELDS = HEADER_FIELDS + TLV_FIELDS

FIGURE1_TYPES = {
    MessageType.MEMBERSHIP_REPORT,
    MessageType.JOIN_REQUEST,
    MessageType.JOIN_ACK,
    MessageType.KEY_DELIVERY,
    MessageType.ACL_UPLOAD,
    MessageType.ACL_ACCEPT,
}


def run_tshark(*args: str) -> subprocess.CompletedProcess[str]:
    require(TSHARK is not None, "tshark is not installed")
    assert TSHARK is not None
    command = [TSHARK, "-X", f"lua_script:{dissector_path()}", *args]
    # garbage may show up as invalid UTF-8, which must not fail the test
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=TSHARK_TIMEOUT,
        check=False,
    )


def dissect(pcap: Path, *options: str) -> list[dict[str, str]]:
    """Return one mapping of field name to shown value per frame."""
    field_options = [argument for name in FIELDS for argument in ("-e", name)]
    result = run_tshark(
        *options,
        "-r",
        str(pcap),
        "-T",
        "fields",
        "-E",
        "separator=|",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
        *field_options,
    )
    assert result.returncode == 0, result.stderr
    assert "Lua Error" not in result.stdout + result.stderr
    return [
        dict(zip(FIELDS, line.split("|"), strict=True))
        for line in result.stdout.splitlines()
    ]


def flagged_frames(pcap: Path, display_filter: str) -> set[int]:
    """Return the numbers of the frames that match a display filter."""
    result = run_tshark(
        "-r", str(pcap), "-Y", display_filter, "-T", "fields", "-e", "frame.number"
    )
    assert result.returncode == 0, result.stderr
    return {int(line) for line in result.stdout.split()}


def expected_fields(datagram: bytes) -> dict[str, str]:
    """Return what tshark must show for a datagram, from node.messages."""
    message = decode_message(datagram)
    fields = dict.fromkeys(FIELDS, "")
    fields.update(_header_fields(message, datagram))
    for attribute, _, _ in message.LAYOUT:
        value = getattr(message, attribute)
        if value is not None:
            fields.update(_TLV_EXPECTATIONS[attribute](value))
    signature = message.signature
    assert signature is not None
    fields.update(
        {
            "smkd.signature.signer": signature.signer,
            "smkd.signature.suite": str(signature.suite),
            "smkd.signature.length": str(len(signature.value)),
        }
    )
    return fields


def _header_fields(message: Message, datagram: bytes) -> dict[str, str]:
    header = message.header
    present = [
        tlv
        for attribute, tlv, _ in message.LAYOUT
        if getattr(message, attribute) is not None
    ]
    types = [f"0x{int(tlv):02x}" for tlv in present] + ["0xff"]
    return {
        "smkd.version": "1",
        "smkd.type": str(int(header.type)),
        "smkd.code": str(header.code),
        "smkd.core_count": str(len(header.cores)),
        "smkd.header_length": str(header.length),
        "smkd.checksum": f"0x{int.from_bytes(datagram[6:8], 'big'):04x}",
        "smkd.checksum.good": "1",
        "smkd.group": header.group,
        "smkd.group_mask": header.group_mask,
        "smkd.origin": header.origin,
        "smkd.primary_core": header.primary_core,
        "smkd.target_core": header.target_core,
        "smkd.core": ",".join(header.cores),
        "smkd.tlv.type": ",".join(types),
        "smkd.tlv.length": _tlv_lengths(datagram, header.length),
    }


def _tlv_lengths(datagram: bytes, offset: int) -> str:
    lengths = []
    while offset < len(datagram):
        length = int.from_bytes(datagram[offset + 1 : offset + 3], "big")
        lengths.append(str(length))
        offset += 3 + length
    return ",".join(lengths)


def _token(token: Any) -> dict[str, str]:
    return {
        "smkd.token.timestamp": str(token.timestamp_ms),
        "smkd.token.nonce": token.nonce.hex(),
        "smkd.token.sender": token.sender,
        "smkd.token.recipient": token.recipient,
    }


def _host_token(token: Any) -> dict[str, str]:
    return {
        "smkd.host_token.timestamp": str(token.timestamp_ms),
        "smkd.host_token.nonce": token.nonce.hex(),
        "smkd.host_token.host": token.host,
        "smkd.host_token.group": token.group,
        "smkd.host_token.suite": str(token.suite),
        "smkd.host_token.signature_length": str(len(token.signature)),
    }


def _acl(signed: Any) -> dict[str, str]:
    acl = signed.acl
    trusted = acl.trusted_routers
    return {
        "smkd.acl.body_length": str(len(signed.body)),
        "smkd.acl.group": acl.group,
        "smkd.acl.serial": str(acl.serial),
        "smkd.acl.mode": str(int(acl.mode)),
        "smkd.acl.not_before": str(acl.not_before),
        "smkd.acl.not_after": str(acl.not_after),
        "smkd.acl.initiator": acl.initiator,
        "smkd.acl.suite": str(acl.suite),
        "smkd.acl.key_lifetime": str(acl.key_lifetime),
        "smkd.acl.strict": str(int(acl.strict)),
        "smkd.acl.host_count": str(len(acl.hosts)),
        "smkd.acl.host": ",".join(acl.hosts),
        "smkd.acl.has_trusted_routers": "0" if trusted is None else "1",
        "smkd.acl.trusted_router": ",".join(trusted or ()),
        "smkd.acl.central": str(int(getattr(acl, "central", False))),
        "smkd.acl.signature_length": str(len(signed.signature)),
    }


def _bundle(prefix: str) -> Any:
    def expect(bundle: Any) -> dict[str, str]:
        return {
            f"smkd.{prefix}.recipient": bundle.recipient,
            f"smkd.{prefix}.sealed_length": str(len(bundle.sealed)),
        }

    return expect


def _reason(reason: Any) -> dict[str, str]:
    return {"smkd.reason.code": str(int(reason.code)), "smkd.reason.text": reason.text}


def _hello(hello: Any) -> dict[str, str]:
    return {
        "smkd.hello.heard": ",".join(hello.heard),
        "smkd.hello.summary_origin": ",".join(origin for origin, _ in hello.summary),
        "smkd.hello.summary_sequence": ",".join(str(seq) for _, seq in hello.summary),
    }


def _lsa(signed: Any) -> dict[str, str]:
    lsa = signed.lsa
    return {
        "smkd.lsa.body_length": str(len(signed.body)),
        "smkd.lsa.origin": lsa.origin,
        "smkd.lsa.address": lsa.address,
        "smkd.lsa.sequence": str(lsa.sequence),
        "smkd.lsa.neighbour": ",".join(neighbour for neighbour, _ in lsa.links),
        "smkd.lsa.cost": ",".join(str(cost) for _, cost in lsa.links),
        "smkd.lsa.signature_length": str(len(signed.signature)),
    }


def _rekey(signed: Any) -> dict[str, str]:
    notice = signed.notice
    fields = {
        "smkd.rekey.body_length": str(len(signed.body)),
        "smkd.rekey.group": notice.group,
        "smkd.rekey.epoch": str(notice.epoch),
        "smkd.rekey.kind": str(int(notice.kind)),
        "smkd.rekey.issued": str(notice.issued_ms),
        "smkd.rekey.activation_ms": str(notice.activation_ms),
        "smkd.rekey.grace_ms": str(notice.grace_ms),
        "smkd.rekey.sealed_length": str(len(notice.sealed_bundle)),
        "smkd.rekey.has_acl": "0" if notice.acl is None else "1",
        "smkd.rekey.signer": signed.signer,
        "smkd.rekey.signature_length": str(len(signed.signature)),
    }
    if notice.acl is not None:
        fields.update(_acl(notice.acl))
    return fields


def _wraps(wraps: Any) -> dict[str, str]:
    items = wraps.wraps
    return {
        "smkd.wraps.count": str(len(items)),
        "smkd.wraps.owner": ",".join(wrap.owner for wrap in items),
        "smkd.wraps.root": ",".join(str(wrap.update.root_id) for wrap in items),
        "smkd.wraps.entry_count": ",".join(str(len(w.update.entries)) for w in items),
        "smkd.wraps.sealed_length": ",".join(str(len(w.sealed_bundle)) for w in items),
    }


def _sender_request(request: Any) -> dict[str, str]:
    return {
        "smkd.sender_request.spi": f"0x{request.sender_spi:08x}",
        "smkd.sender_request.nonce": request.nonce.hex(),
        "smkd.sender_request.verify_key_length": str(len(request.verify_key)),
        "smkd.sender_request.exchange_key_length": str(len(request.exchange_key)),
    }


def _sender_grant(grant: Any) -> dict[str, str]:
    return {
        "smkd.sender_grant.spi": f"0x{grant.sender_spi:08x}",
        "smkd.sender_grant.not_after": str(grant.not_after),
        "smkd.sender_grant.sealed_length": str(len(grant.sealed)),
    }


_TLV_EXPECTATIONS = {
    "token": _token,
    "host_token": _host_token,
    "acl": _acl,
    "sealed_acl": lambda sealed: {"smkd.sealed_acl.length": str(len(sealed.sealed))},
    "host_bundle": _bundle("host_bundle"),
    "hop_bundle": _bundle("hop_bundle"),
    "path": lambda path: {"smkd.path.router": ",".join(path.routers)},
    "reason": _reason,
    "hello": _hello,
    "lsa": _lsa,
    "handle": _bundle("handle"),
    "host_path": _bundle("host_path"),
    "hop_path": _bundle("hop_path"),
    "rekey": _rekey,
    "wraps": _wraps,
    "request": _sender_request,
    "grant": _sender_grant,
}


@pytest.fixture(scope="module")
def figure1_captures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    require(TSHARK is not None, "tshark is not installed")
    run_dir = tmp_path_factory.mktemp("dissector") / "figure1"
    result = run_scenario(FIGURE1, out=str(run_dir), quiet=True)
    assert result.passed, result.outcomes
    return sorted((run_dir / "captures").glob("*.pcap"))


@pytest.fixture(scope="module")
def samples_pcap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dissector") / "samples.pcap"
    write_datagrams(path, addressed(sample_messages()))
    return path


def compare_capture(pcap: Path) -> set[MessageType]:
    """Assert that tshark shows every field of every datagram; return the types."""
    datagrams = read_pcap(pcap)
    shown = dissect(pcap)
    assert len(shown) == len(datagrams)

    types = set()
    for number, (datagram, fields) in enumerate(zip(datagrams, shown, strict=True)):
        expected = expected_fields(datagram.payload)
        for name, value in expected.items():
            assert fields[name] == value, f"{pcap.name} frame {number + 1}: {name}"
        types.add(MessageType(int(fields["smkd.type"])))
    return types


def test_dissector_figure1_fields(figure1_captures):
    types = set()
    for pcap in figure1_captures:
        types |= compare_capture(pcap)

    # echo and other tree maintenance messages may come too, depending on timing
    assert types >= FIGURE1_TYPES


def test_dissector_figure1_not_flagged(figure1_captures):
    for pcap in figure1_captures:
        problems = flagged_frames(pcap, "smkd.malformed || smkd.bad_checksum")
        assert problems == set(), pcap.name


def test_dissector_every_message_type(samples_pcap):
    types = compare_capture(samples_pcap)

    missing = sorted(t.name for t in set(MessageType) - types)
    assert not missing, (
        f"no sample of {', '.join(missing)}: add one to tests/capture_samples.py "
        "and teach smkd/wireshark/smkd.lua and smkd/decode.py to show it"
    )


def test_dissector_samples_not_flagged(samples_pcap):
    assert flagged_frames(samples_pcap, "smkd.malformed || smkd.bad_checksum") == set()


def test_dissector_info_column(samples_pcap):
    result = run_tshark("-r", str(samples_pcap))

    lines = result.stdout.splitlines()
    assert "MEMBERSHIP-REPORT LEAVE: host h, signed by h" in lines[0]
    assert "JOIN-REQUEST REJOIN: token_A for B, host h, signed by A" in lines[1]
    assert "JOIN-NACK: token_C for B, host h, signed by C" in lines[3]


def test_dissector_truncated_prefixes(figure1_captures, samples_pcap, tmp_path):
    datagrams = [
        (d.src, d.dst, d.payload) for pcap in figure1_captures for d in read_pcap(pcap)
    ]
    datagrams += [(d.src, d.dst, d.payload) for d in read_pcap(samples_pcap)]
    prefixes = tmp_path / "prefixes.pcap"
    count = write_prefixes(prefixes, datagrams)

    verbose = run_tshark("-r", str(prefixes), "-V")
    assert verbose.returncode == 0, verbose.stderr
    assert "Lua Error" not in verbose.stdout + verbose.stderr
    assert "dissector fault" not in verbose.stdout

    # every strict prefix lacks at least the end of its signature
    assert flagged_frames(prefixes, "smkd.malformed") == set(range(1, count + 1))


def test_dissector_snaplen_truncated(figure1_captures, tmp_path):
    # Ethernet, IPv4 and UDP headers take 42 bytes, so every cut below lands
    # inside the smkd datagram
    for keep in (44, 60, 100, 150):
        snapped = tmp_path / f"snapped-{keep}.pcap"
        frames = set(range(1, write_snapped(snapped, figure1_captures[0], keep) + 1))

        verbose = run_tshark("-r", str(snapped), "-V")

        assert verbose.returncode == 0, verbose.stderr
        assert "Lua Error" not in verbose.stdout + verbose.stderr
        assert flagged_frames(snapped, "smkd") == frames
        assert flagged_frames(snapped, "smkd.truncated") == frames
        assert flagged_frames(snapped, "smkd.malformed") == frames


def test_dissector_garbage_no_lua_error(figure1_captures, samples_pcap, tmp_path):
    datagrams = [
        (d.src, d.dst, d.payload) for pcap in figure1_captures for d in read_pcap(pcap)
    ]
    datagrams += [(d.src, d.dst, d.payload) for d in read_pcap(samples_pcap)]
    garbage = tmp_path / "garbage.pcap"
    write_garbage(garbage, datagrams)

    verbose = run_tshark("-r", str(garbage), "-V")

    assert verbose.returncode == 0, verbose.stderr
    assert "Lua Error" not in verbose.stdout + verbose.stderr
    assert "dissector fault" not in verbose.stdout
    # run_tshark replaces invalid UTF-8 with U+FFFD, which must not happen
    assert "\ufffd" not in verbose.stdout


def test_dissector_port_preference(tmp_path):
    other_port = tmp_path / "port-9999.pcap"
    write_datagrams(other_port, addressed(sample_messages()), port=9999)

    default = dissect(other_port)
    moved = dissect(other_port, "-o", "smkd.port:9999")

    assert all(fields["smkd.type"] == "" for fields in default)
    assert [fields["smkd.type"] for fields in moved] == [
        str(int(decode_message(datagram).header.type))
        for _, _, datagram in sample_messages()
    ]
