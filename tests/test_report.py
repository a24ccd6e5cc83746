"""Tests of the run report (smkd.report), over a real run of the abilene scenario."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from backend_support import require

from smkd import cli
from smkd.model import load_scenario
from smkd.report import REPORT_NAME, delivery_tree, load_run, render_report
from smkd.report_svg import HEIGHT, WIDTH, _widest_gap, layout
from smkd.runner import RunResult, print_summary, run_scenario

REPO = Path(__file__).resolve().parent.parent
ABILENE = REPO / "scenarios" / "abilene.yaml"
DENIED_HOST = "h-Washington-DC-1"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_TIMEOUT = 120

# the colours that report.py's style gives tree edges and GKDCs
TREE_BLUE = (0x1F, 0x5F, 0xBF)
GKDC_GOLD = (0xF2, 0xC1, 0x4E)

TREE_EDGE = re.compile(
    r'<line class="tree-edge"[^>]*><title>(\S+) joined through (\S+)</title>'
)
NODE = re.compile(r'<g class="node [^"]*" data-node="([^"]+)" data-marks="([^"]*)"')


@pytest.fixture(scope="module")
def abilene(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    run_dir = tmp_path_factory.mktemp("report") / "abilene"
    result = run_scenario(ABILENE, out=str(run_dir), quiet=True)
    assert result.passed, result.outcomes
    return result


@pytest.fixture(scope="module")
def page(abilene: RunResult) -> str:
    return (abilene.run_dir / REPORT_NAME).read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def status(abilene: RunResult) -> dict:
    return json.loads((abilene.run_dir / "summary.json").read_text())["nodes"]


def tree_edges(page: str) -> set[tuple[str, str]]:
    return set(TREE_EDGE.findall(page))


def node_marks(page: str) -> dict[str, set[str]]:
    return {name: set(marks.split()) for name, marks in NODE.findall(page)}


def test_report_self_contained(page):
    assert page.startswith("<!DOCTYPE html>")
    assert "http://" not in page
    assert "https://" not in page
    assert " src=" not in page
    assert '<link rel="icon" href="data:,">' in page
    assert '<svg id="topology"' in page


def test_report_tree_matches_node_status(page, status):
    expected = set()
    for name, node in status.items():
        group = node.get("groups", {}).get("G", {})
        if group.get("parent"):
            expected.add((name, group["parent"]))
        for member in group.get("members", []):
            expected.add((member, name))

    assert tree_edges(page) == expected


def test_report_marks_gkdcs(page, status):
    marks = node_marks(page)

    gkdcs = {
        name
        for name, node in status.items()
        if node.get("groups", {}).get("G", {}).get("gkdc")
    }
    assert gkdcs >= {"New-York", "Seattle", "Kansas-City"}
    assert {name for name, m in marks.items() if "gkdc-G" in m} == gkdcs


def test_report_marks_denied_host(page, status):
    marks = node_marks(page)

    assert "denied-G" in marks[DENIED_HOST]
    assert "member-G" not in marks[DENIED_HOST]
    members = {
        name
        for name, node in status.items()
        if node.get("groups", {}).get("G", {}).get("holds_key")
    }
    assert {name for name, m in marks.items() if "member-G" in m} == members


def test_report_expectations_and_counts(page, status, abilene):
    assert page.count('<tr class="pass">') == len(abilene.outcomes)
    assert '<tr class="fail">' not in page
    for name, node in status.items():
        for counter in node.get("counters", {}):
            assert f"<th>{counter}</th>" in page
        assert f"<tr><td>{name}</td>" in page


def test_report_timeline_rows(page, abilene):
    trace_lines = sum(
        len(p.read_text().splitlines())
        for p in (abilene.run_dir / "traces").glob("*.jsonl")
    )
    runner_lines = len((abilene.run_dir / "runner.jsonl").read_text().splitlines())

    rows = re.findall(r'<tr class="ev-[a-z]+" data-node=', page)

    assert len(rows) == trace_lines + runner_lines


def test_report_join_bars(page, abilene):
    scenario = abilene.scenario
    joins = [a for a in scenario.timeline if a.kind == "join"]
    denied = [e for e in scenario.expect if e.kind == "denied"]

    bars = re.findall(r'<rect class="bar (\w+)"', page)

    assert len(bars) == len(joins)
    assert bars.count("denied") == len(denied)
    assert bars.count("keyed") == len(joins) - len(denied)


def test_summary_prints_report_path(abilene, capsys):
    print_summary(abilene)

    assert f"report: {abilene.run_dir / REPORT_NAME}" in capsys.readouterr().out


def test_report_command_rewrites(abilene, page, capsys):
    path = abilene.run_dir / REPORT_NAME
    path.unlink()

    assert cli.main(["report", str(abilene.run_dir)]) == 0

    assert capsys.readouterr().out.strip() == str(path)
    assert path.read_text(encoding="utf-8") == page


def test_report_command_missing_run(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_report_of_run_that_never_started(tmp_path):
    scenario = load_scenario(ABILENE)

    page = render_report(load_run(tmp_path, scenario))

    assert "NOT CHECKED" in page
    assert "<p>No joins in this run.</p>" in page
    assert "<p>No expectations were checked.</p>" in page
    assert "<p>No node status was collected.</p>" in page
    assert tree_edges(page) == set()
    assert set(node_marks(page)) == set(scenario.topology.nodes)


def test_layout_deterministic_inside_canvas():
    topology = load_scenario(ABILENE).topology

    first = layout(topology, seed=1)
    second = layout(topology, seed=1)

    assert first == second
    assert set(first) == set(topology.nodes)
    for x, y in first.values():
        assert 0 <= x <= WIDTH
        assert 0 <= y <= HEIGHT


def test_layout_keeps_nodes_apart():
    topology = load_scenario(ABILENE).topology
    positions = list(layout(topology, seed=1).values())

    closest = min(
        ((ax - bx) ** 2 + (ay - by) ** 2) ** 0.5
        for index, (ax, ay) in enumerate(positions)
        for bx, by in positions[index + 1 :]
    )
    assert closest > 10


def test_widest_gap_between_links():
    middle, width = _widest_gap([0.0, 1.0])

    assert width == pytest.approx(2 * 3.141592653589793 - 1.0)
    assert middle == pytest.approx(0.5 + 3.141592653589793)


def test_widest_gap_no_links():
    middle, width = _widest_gap([])

    assert width == pytest.approx(2 * 3.141592653589793)
    assert middle == pytest.approx(3.141592653589793 / 2)


def test_delivery_tree_follows_events():
    events = [
        {"t": 1, "node": "A", "event": "on_tree", "group": "G", "parent": "C"},
        {"t": 2, "node": "h", "event": "key_installed", "group": "G", "peer": "A"},
        {"t": 3, "node": "C", "event": "keys_created", "group": "G"},
        {"t": 4, "node": "A", "event": "became_gkdc", "group": "G"},
        {"t": 5, "node": "A", "event": "denied", "group": "G", "host": "h9"},
        {"t": 6, "node": "h2", "event": "key_installed", "group": "G", "peer": "A"},
        {"t": 7, "node": "h2", "event": "key_erased", "group": "G"},
        {"t": 8, "node": "B", "event": "on_tree", "group": "other", "parent": "C"},
    ]

    tree = delivery_tree(events, "G")

    assert tree.parents == {"A": "C", "h": "A"}
    assert tree.gkdcs == {"A", "C"}
    assert tree.denied == {"h9"}


def test_delivery_tree_follows_maintenance():
    events = [
        {"t": 1, "node": "B", "event": "on_tree", "group": "G", "parent": "C"},
        {"t": 1, "node": "A", "event": "on_tree", "group": "G", "parent": "B"},
        {"t": 1, "node": "A", "event": "became_gkdc", "group": "G"},
        {"t": 1, "node": "h", "event": "key_installed", "group": "G", "peer": "A"},
        {"t": 1, "node": "h2", "event": "key_installed", "group": "G", "peer": "A"},
        # A loses B and re-joins through D, which C answers
        {"t": 2, "node": "A", "event": "parent_lost", "group": "G", "parent": "B"},
        {"t": 3, "node": "A", "event": "rejoined", "group": "G", "parent": "D"},
        # B's late view of A must not remove A's new edge
        {"t": 4, "node": "B", "event": "child_expired", "group": "G", "peer": "A"},
        {"t": 5, "node": "B", "event": "pruned", "group": "G", "parent": "C"},
        {"t": 5, "node": "B", "event": "key_erased", "group": "G"},
        {"t": 6, "node": "A", "event": "member_expired", "group": "G", "host": "h2"},
        {"t": 7, "node": "E", "event": "on_tree", "group": "G", "parent": "C"},
        {"t": 8, "node": "E", "event": "flush_received", "group": "G", "peer": "C"},
    ]

    tree = delivery_tree(events, "G")

    assert tree.parents == {"A": "D", "h": "A"}
    assert tree.gkdcs == {"A"}


def test_delivery_tree_router_erases_keys():
    events = [
        {"t": 1, "node": "B", "event": "became_gkdc", "group": "G"},
        {"t": 2, "node": "B", "event": "key_erased", "group": "G"},
    ]

    assert delivery_tree(events, "G").gkdcs == set()


def test_delivery_tree_denied_then_keyed():
    events = [
        {"t": 1, "node": "A", "event": "join_denied", "group": "G", "host": "h"},
        {"t": 2, "node": "h", "event": "key_installed", "group": "G", "peer": "A"},
    ]

    tree = delivery_tree(events, "G")

    assert tree.denied == set()
    assert tree.parents == {"h": "A"}


def chromium(profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    require(CHROMIUM is not None, "chromium is not installed")
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *args,
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=CHROMIUM_TIMEOUT,
        check=False,
    )


def console_messages(stderr: str) -> list[str]:
    # Chromium (156 on Debian 12) logs every console message and uncaught
    # exception to stderr as a CONSOLE line
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_report_opens_without_console_errors(abilene, tmp_path):
    url = (abilene.run_dir / REPORT_NAME).resolve().as_uri()

    result = chromium(tmp_path / "profile", "--dump-dom", url)

    assert result.returncode == 0, result.stderr
    assert console_messages(result.stderr) == []
    # the script fills in the event count, so it ran to the end
    assert re.search(r'<span id="shown">(\d+) of \1 events</span>', result.stdout)


def test_report_screenshot_shows_tree(abilene, tmp_path):
    url = (abilene.run_dir / REPORT_NAME).resolve().as_uri()
    screenshot = tmp_path / "report.png"

    result = chromium(
        tmp_path / "profile",
        f"--screenshot={screenshot}",
        "--window-size=1100,900",
        "--hide-scrollbars",
        url,
    )

    assert result.returncode == 0, result.stderr
    assert console_messages(result.stderr) == []
    pixels = png_pixels(screenshot)
    # 19 tree edges 4 px wide, and 10 gold GKDC discs of radius 11
    assert count_near(pixels, TREE_BLUE) > 2000
    assert count_near(pixels, GKDC_GOLD) > 1500


def png_pixels(path: Path) -> list[tuple[int, int, int]]:
    """Decode an 8-bit RGB or RGBA PNG, as Chromium writes, into RGB pixels."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    offset, idat, width, height, channels = 8, b"", 0, 0, 0
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset : offset + 8])
        chunk = data[offset + 8 : offset + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(
                ">IIBBBBB", chunk
            )
            assert depth == 8 and interlace == 0
            channels = {2: 3, 6: 4}[colour]
        elif kind == b"IDAT":
            idat += chunk
        offset += 12 + length

    raw = zlib.decompress(idat)
    stride = width * channels
    previous = bytearray(stride)
    pixels = []
    for row in range(height):
        start = row * (stride + 1)
        line = _unfilter(
            raw[start],
            bytearray(raw[start + 1 : start + 1 + stride]),
            previous,
            channels,
        )
        pixels.extend(tuple(line[i : i + 3]) for i in range(0, stride, channels))
        previous = line
    return pixels


def _unfilter(
    kind: int, line: bytearray, previous: bytearray, channels: int
) -> bytearray:
    for i in range(len(line)):
        left = line[i - channels] if i >= channels else 0
        up = previous[i]
        upper_left = previous[i - channels] if i >= channels else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            line[i] = (line[i] + _paeth(left, up, upper_left)) & 0xFF
    return line


def _paeth(left: int, up: int, upper_left: int) -> int:
    estimate = left + up - upper_left
    distances = (abs(estimate - left), abs(estimate - up), abs(estimate - upper_left))
    return (left, up, upper_left)[distances.index(min(distances))]


def count_near(
    pixels: list[tuple[int, int, int]],
    colour: tuple[int, int, int],
    tolerance: int = 12,
) -> int:
    return sum(
        all(
            abs(channel - target) <= tolerance for channel, target in zip(pixel, colour)
        )
        for pixel in pixels
    )
