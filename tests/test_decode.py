"""Tests of ``smkd decode`` and ``smkd wireshark`` (smkd.decode)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from capture_samples import (
    ADDRESSES,
    addressed,
    sample_messages,
    signed_lsa,
    write_datagrams,
)

from node.capture import PcapWriter, read_pcap
from node.messages import decode_message
from smkd import cli
from smkd.decode import (
    address_names,
    capture_files,
    dissector_path,
    notation,
    read_captures,
    transcript,
)
from smkd.runner import run_scenario

REPO = Path(__file__).resolve().parent.parent
FIGURE1 = REPO / "scenarios" / "figure1.yaml"

# RFC 1949 section 6.2, Figure 1: h joins through A and B to the core C
FIGURE1_STEPS = [
    "h --> A: [[token_h]^SK_h, IGMP group membership report]",
    "A --> B: [[token_A], [token_h]^SK_h, JOIN-REQUEST]^SK_A",
    "B --> C: [[token_B], [token_h]^SK_h, JOIN-REQUEST]^SK_B",
    "C --> B: [[token_h]^SK_h, grpAP, JOIN-ACK]^SK_C",
    "B --> A: [[token_h]^SK_h, grpAP, JOIN-ACK]^SK_B",
    "A --> h: [[token_h]^SK_h, {grpKey, KEK, Sparams}^PK_h]",
]

LINE = re.compile(r"^\s*(?P<time>\d+\.\d{6})  (?P<text>.*)$")


@pytest.fixture(scope="module")
def figure1_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("decode") / "figure1"
    result = run_scenario(FIGURE1, out=str(run_dir), quiet=True)
    assert result.passed, result.outcomes
    return run_dir


def decode_output(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert cli.main(["decode", *args]) == 0
    return capsys.readouterr().out.splitlines()


def transcript_lines(output: list[str]) -> list[tuple[float, str]]:
    """Return (time, text) of each message line, skipping headers and fields."""
    lines = []
    for line in output:
        match = LINE.match(line)
        if match:
            lines.append((float(match["time"]), match["text"]))
    return lines


def test_decode_figure1_steps_in_order(figure1_run, capsys):
    captures = sorted(str(p) for p in (figure1_run / "captures").glob("*.pcap"))

    lines = transcript_lines(decode_output(capsys, *captures))

    texts = [text for _, text in lines]
    positions = [texts.index(step) for step in FIGURE1_STEPS]
    assert positions == sorted(positions), texts
    # routing and tree keepalives may come in between, but nothing about h
    between = texts[positions[0] : positions[-1] + 1]
    others = [text for text in between if text not in FIGURE1_STEPS]
    assert not [text for text in others if "[token_h]" in text], between


def test_decode_times_increase(figure1_run, capsys):
    lines = transcript_lines(decode_output(capsys, str(figure1_run)))

    times = [time for time, _ in lines]
    assert times == sorted(times)
    assert times[0] == 0.0


def test_decode_run_dir_reads_captures(figure1_run, capsys):
    captures = sorted(str(p) for p in (figure1_run / "captures").glob("*.pcap"))

    from_files = decode_output(capsys, *captures)
    from_dir = decode_output(capsys, str(figure1_run))

    assert from_dir == from_files


def test_decode_figure1_other_messages(figure1_run, capsys):
    texts = [
        text for _, text in transcript_lines(decode_output(capsys, str(figure1_run)))
    ]

    assert "init --> C: [[token_init], [ACL]^SK_init, ACL-UPLOAD]^SK_init" in texts
    assert "C --> init: [[token_C], ACL-ACCEPT]^SK_C" in texts
    assert "h2 --> A: [[token_h2]^SK_h2, IGMP group membership report]" in texts
    assert "A --> h2: [[token_h2]^SK_h2, {grpKey, KEK, Sparams}^PK_h2]" in texts


def test_decode_fields_option(figure1_run, capsys):
    output = decode_output(capsys, "--fields", str(figure1_run))

    join = output.index(
        next(line for line in output if line.endswith(FIGURE1_STEPS[1]))
    )
    fields = []
    for line in output[join + 1 :]:
        if LINE.match(line):
            break
        fields.append(line.strip())
    assert fields[0].startswith("datagram: ")
    assert fields[0].endswith("in A-B.pcap")
    assert fields[1].startswith("header: JOIN_REQUEST code 0, group 239.1.1.1")
    assert fields[2].startswith("token_A: [t ")
    assert fields[2].endswith(", B]")
    assert fields[3].startswith("token_h: [t ")
    assert "signature 64 bytes" in fields[3]
    assert fields[4] == "path: A"
    assert fields[5] == "signature: SK_A, suite 1, 64 bytes"


def test_decode_fields_keep_ciphertext_opaque(figure1_run, capsys):
    output = decode_output(capsys, "--fields", str(figure1_run))

    sealed = [line.strip() for line in output if "^PK_" in line and "sealed" in line]
    assert sealed
    secrets = r"grpKey, KEK, Sparams|packet handle secret|key tree path"
    for line in sealed:
        assert re.fullmatch(rf"\{{({secrets})\}}\^PK_\S+: \d+ bytes sealed", line)


def test_notation_every_sample():
    expected = [
        "[[token_h]^SK_h, IGMP leave report]",
        "[[token_A], [token_h]^SK_h, JOIN-REQUEST (rejoin)]^SK_A",
        "[[token_h]^SK_h, grpAP, JOIN-ACK]^SK_C",
        "[[token_C], [token_h]^SK_h, JOIN-NACK (NOT_ON_ACL)]^SK_C",
        "[[token_h]^SK_h, {grpKey, KEK, Sparams}^PK_h]",
        "[[token_init], {[ACL]^SK_init}^PK_C, ACL-UPLOAD]^SK_init",
        "[[token_C], ACL-ACCEPT (OLDER_ACL)]^SK_C",
        "[[token_A], QUIT-REQUEST]^SK_A",
        "[[token_A], QUIT-ACK]^SK_A",
        "[[token_A], FLUSH-TREE]^SK_A",
        "[[token_A], ECHO-REQUEST]^SK_A",
        "[[token_A], ECHO-REPLY]^SK_A",
        (
            "[[token_C], [token_h]^SK_h, [ACL]^SK_init, {grpKey, KEK, Sparams}^PK_B, "
            "JOIN-ACK (primary-rejoin)]^SK_C"
        ),
        "[[token_A], HELLO]^SK_A",
        "[[token_A], [LSA]^SK_C, LINK-STATE]^SK_A",
        (
            "[[token_B], [epoch 3, [ACL]^SK_init]^SK_C, "
            "{[grpKey, KEK, Sparams]^SK_C}^LKH_C, {[grpKey, KEK, Sparams]^SK_C}^LKH_B, "
            "REKEY]^SK_B"
        ),
        "[[token_s], [SPI 0x00000051, sender key, exchange key], SENDER-KEY-REQUEST]^SK_s",
        "[[token_C], {session key}^PK_exchange, SENDER-KEY-GRANT]^SK_C",
    ]

    written = [
        notation(decode_message(datagram)) for _, _, datagram in sample_messages()
    ]

    assert written == expected


def test_decode_names_from_messages(tmp_path):
    pcap = tmp_path / "samples.pcap"
    write_datagrams(pcap, addressed(sample_messages()))

    names = address_names(read_captures([pcap]))

    assert names == {address: name for name, address in ADDRESSES.items()}


def test_decode_malformed_datagram(tmp_path, capsys):
    _, _, good = sample_messages()[1]
    pcap = tmp_path / "broken.pcap"
    broken = [
        (ADDRESSES["A"], ADDRESSES["B"], good),
        (ADDRESSES["A"], ADDRESSES["B"], good[:50]),
        (ADDRESSES["B"], "127.9.0.99", b"\x10" * 30),
    ]
    write_datagrams(pcap, broken)

    texts = [text for _, text in transcript_lines(decode_output(capsys, str(pcap)))]

    assert texts[0].startswith("A --> B: [[token_A]")
    assert texts[1].startswith("A --> B: malformed datagram of 50 bytes: ")
    # no message names 127.9.0.99, so the transcript prints the address
    assert texts[2].startswith("B --> 127.9.0.99: malformed datagram of 30 bytes: ")


def test_decode_merges_files_by_time(tmp_path):
    samples = addressed(sample_messages())
    first, second = tmp_path / "first.pcap", tmp_path / "second.pcap"
    with PcapWriter(first) as writer:
        for index in (0, 2, 4):
            writer.write_udp(100.0 + index, *samples[index])
    with PcapWriter(second) as writer:
        for index in (1, 3):
            writer.write_udp(100.0 + index, *samples[index])

    messages = read_captures([second, first])

    assert [m.datagram.payload for m in messages] == [s[2] for s in samples[:5]]


def test_decode_drops_copy_from_other_file(tmp_path):
    source, destination, payload = addressed(sample_messages())[1]
    near, far = tmp_path / "near.pcap", tmp_path / "far.pcap"
    with PcapWriter(near) as writer:
        writer.write_udp(100.0, source, destination, payload)
        # a second copy in the same file is a retransmission and stays
        writer.write_udp(100.5, source, destination, payload)
    with PcapWriter(far) as writer:
        writer.write_udp(100.005, source, destination, payload)

    messages = read_captures([near, far])

    assert [m.datagram.timestamp for m in messages] == [100.0, 100.5]
    assert [m.source.name for m in messages] == ["near.pcap", "near.pcap"]


def test_decode_port_option(tmp_path, capsys):
    pcap = tmp_path / "port.pcap"
    write_datagrams(pcap, addressed(sample_messages())[:2], port=9999)

    assert decode_output(capsys, str(pcap)) == []
    assert (
        len(transcript_lines(decode_output(capsys, "--port", "9999", str(pcap)))) == 2
    )


def test_decode_missing_capture(tmp_path, capsys):
    missing = tmp_path / "missing.pcap"

    assert cli.main(["decode", str(missing)]) == 2
    assert f"capture {missing} not found" in capsys.readouterr().err


def test_decode_not_a_pcap(tmp_path, capsys):
    text = tmp_path / "notes.pcap"
    text.write_text("not a capture\n" * 3)

    assert cli.main(["decode", str(text)]) == 2
    assert "not a pcap file" in capsys.readouterr().err


def test_capture_files_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .pcap files"):
        capture_files([tmp_path])


def test_transcript_empty():
    assert transcript([]) == []


def test_wireshark_prints_install_steps(capsys):
    assert cli.main(["wireshark"]) == 0
    output = capsys.readouterr().out

    assert str(dissector_path()) in output
    assert "~/.local/lib/wireshark/plugins" in output
    assert f"tshark -X lua_script:{dissector_path()}" in output
    assert "smkd.port" in output


def test_wireshark_path_only(capsys):
    assert cli.main(["wireshark", "--path"]) == 0
    printed = capsys.readouterr().out.strip()

    assert printed == str(dissector_path())
    assert Path(printed).is_file()
    assert Path(printed).read_text().startswith("-- Wireshark dissector for smkd")


def test_read_captures_matches_read_pcap(figure1_run):
    captures = sorted((figure1_run / "captures").glob("*.pcap"))

    messages = read_captures(captures)

    assert len(messages) == sum(len(read_pcap(p)) for p in captures)
    assert all(m.message is not None for m in messages)


def test_fields_of_routing_messages(tmp_path, capsys):
    pcap = tmp_path / "samples.pcap"
    write_datagrams(pcap, addressed(sample_messages()))

    output = [line.strip() for line in decode_output(capsys, "--fields", str(pcap))]

    assert "hello: heard B, C; LSA summary B 1800000000124, C 1800000000125" in output
    body = len(signed_lsa().body)
    assert (
        "[LSA]^SK_C: address 127.9.0.4, sequence 1800000000126, links A cost 5, "
        f"B cost 12; body {body} bytes, signature 64 bytes"
    ) in output
