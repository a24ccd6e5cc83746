"""SVG drawings of the run report: the topology with its trees, and the joins.

Node positions come from a seeded networkx spring layout, so one scenario is
drawn the same way in every run, given the same networkx and numpy versions.
"""

from __future__ import annotations

import html
import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy

from .model import Topology

# SVG canvas and node sizes, in SVG user units (pixels at 100 % zoom)
WIDTH = 960
HEIGHT = 620
PADDING = 70
NODE_RADIUS = 11

# hosts sit beyond their router at this fraction of the median link length,
# spread over at most this angle (radians)
HOST_DISTANCE = 0.45
HOST_SPREAD = 1.6


@dataclass
class Tree:
    """One group's delivery tree at the end of a run."""

    group: str
    parents: dict[str, str] = field(default_factory=dict)
    gkdcs: set[str] = field(default_factory=set)
    denied: set[str] = field(default_factory=set)


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def layout(topology: Topology, seed: int) -> dict[str, tuple[float, float]]:
    """Place every node on the SVG canvas, deterministically for one seed.

    Routers, cores and initiators get a spring layout. Each host goes just
    beyond the router it is attached to, in the widest gap between that
    router's links, so that hosts stay clear of the backbone.
    """
    graph = topology.graph()
    attachments = _host_attachments(topology, graph)
    backbone = graph.subgraph(n for n in graph if n not in attachments)
    positions = _backbone_positions(backbone, seed)
    positions.update(_place_hosts(attachments, positions, backbone))
    return _fit_to_canvas(positions)


def _backbone_positions(
    backbone: nx.Graph, seed: int
) -> dict[str, tuple[float, float]]:
    if not len(backbone):
        return {}
    placed = nx.spring_layout(backbone, seed=seed, iterations=500)
    names = list(placed)
    points = numpy.array([placed[name] for name in names], dtype=float)
    points -= points.mean(axis=0)

    # turn the longest extent horizontal, since the canvas is wider than tall
    if len(names) > 1:
        _, _, axes = numpy.linalg.svd(points, full_matrices=False)
        points = points @ axes.T
    return {name: (float(x), float(y)) for name, (x, y) in zip(names, points)}


def _host_attachments(topology: Topology, graph: nx.Graph) -> dict[str, str]:
    """Map each host that has a router neighbour to the router it hangs from."""
    attachments = {}
    for lan in topology.lans:
        for host in lan.hosts:
            attachments[host] = lan.dr
    for name, node in topology.nodes.items():
        if node.role != "host" or name in attachments:
            continue
        routers = [n for n in graph.neighbors(name) if topology.nodes[n].role != "host"]
        if routers:
            attachments[name] = routers[0]
    return attachments


def _place_hosts(
    attachments: dict[str, str],
    positions: dict[str, tuple[float, float]],
    backbone: nx.Graph,
) -> dict[str, tuple[float, float]]:
    distance = HOST_DISTANCE * _median_edge_length(backbone, positions)
    by_router: dict[str, list[str]] = defaultdict(list)
    for host, router in attachments.items():
        by_router[router].append(host)

    placed = {}
    for router, hosts in by_router.items():
        x, y = positions.get(router, (0.0, 0.0))
        neighbours = backbone.neighbors(router) if router in backbone else ()
        angles = [
            math.atan2(positions[n][1] - y, positions[n][0] - x) for n in neighbours
        ]
        middle, gap = _widest_gap(angles)
        spread = min(gap * 0.6, HOST_SPREAD) if len(hosts) > 1 else 0.0
        for index, host in enumerate(hosts):
            share = index / (len(hosts) - 1) - 0.5 if len(hosts) > 1 else 0.0
            angle = middle + share * spread
            placed[host] = (
                x + distance * math.cos(angle),
                y + distance * math.sin(angle),
            )
    return placed


def _median_edge_length(
    graph: nx.Graph, positions: dict[str, tuple[float, float]]
) -> float:
    lengths = sorted(
        math.dist(positions[a], positions[b])
        for a, b in graph.edges
        if a in positions and b in positions
    )
    return lengths[len(lengths) // 2] if lengths else 1.0


def _widest_gap(angles: list[float]) -> tuple[float, float]:
    """Return the middle and the width of the widest gap between angles (rad)."""
    if not angles:
        # straight down in SVG coordinates, where y grows downwards
        return math.pi / 2, 2 * math.pi
    ordered = sorted(angle % (2 * math.pi) for angle in angles)
    best_start, best_width = ordered[-1], ordered[0] + 2 * math.pi - ordered[-1]
    for low, high in itertools.pairwise(ordered):
        if high - low > best_width:
            best_start, best_width = low, high - low
    return best_start + best_width / 2, best_width


def _fit_to_canvas(
    positions: dict[str, tuple[float, float]],
) -> dict[str, tuple[float, float]]:
    """Scale positions uniformly into the canvas, keeping the layout's shape."""
    if not positions:
        return {}
    xs = [x for x, _ in positions.values()]
    ys = [y for _, y in positions.values()]
    span_x, span_y = max(xs) - min(xs), max(ys) - min(ys)
    scale = min(
        (WIDTH - 2 * PADDING) / max(span_x, 1e-9),
        (HEIGHT - 2 * PADDING) / max(span_y, 1e-9),
    )
    middle_x, middle_y = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    return {
        name: (WIDTH / 2 + (x - middle_x) * scale, HEIGHT / 2 + (y - middle_y) * scale)
        for name, (x, y) in positions.items()
    }


def render_topology(
    topology: Topology, seed: int, trees: list[Tree], nodes: dict[str, Any]
) -> str:
    """Draw links, LANs, nodes and one switchable tree layer per group as SVG.

    ``nodes`` maps node names to their status in summary.json, whose counters
    become each node's tooltip.
    """
    positions = layout(topology, seed)
    parts = [
        _svg_open("topology", HEIGHT, "topology and delivery tree"),
        _SVG_DEFS,
    ]
    parts.extend(_segment_lines(topology, positions))
    for index, tree in enumerate(trees):
        hidden = "" if index == 0 else ' style="display:none"'
        parts.append(f'<g class="tree" data-group="{escape(tree.group)}"{hidden}>')
        parts.extend(_tree_edges(tree, positions))
        parts.append("</g>")
    for name, node in topology.nodes.items():
        parts.append(
            _node_shape(name, node.role, positions[name], trees, nodes.get(name, {}))
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _svg_open(element_id: str, height: int, label: str) -> str:
    return (
        f'<svg id="{element_id}" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(label)}">'
    )


_SVG_DEFS = """<defs>
<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="3.2"
 markerHeight="3.2" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"
 class="arrowhead"/></marker>
</defs>"""


def _segment_lines(
    topology: Topology, positions: dict[str, tuple[float, float]]
) -> list[str]:
    lines = []
    for link in topology.links:
        lines.append(
            _line(
                positions[link.a],
                positions[link.b],
                "link",
                f"{link.name}: {link.impairment.delay * 1000:g} ms",
            )
        )
    for lan in topology.lans:
        for member in lan.hosts + lan.routers:
            if member != lan.dr:
                lines.append(
                    _line(
                        positions[member],
                        positions[lan.dr],
                        "lan",
                        f"{lan.name} (DR {lan.dr})",
                    )
                )
    return lines


def _line(
    a: tuple[float, float],
    b: tuple[float, float],
    css: str,
    title: str,
    trim: float = 0.0,
) -> str:
    (x1, y1), (x2, y2) = a, b
    length = math.hypot(x2 - x1, y2 - y1)
    if trim and length > 2 * trim:
        # stop short of both nodes so that the arrowhead stays visible
        dx, dy = (x2 - x1) / length * trim, (y2 - y1) / length * trim
        x1, y1, x2, y2 = x1 + dx, y1 + dy, x2 - dx, y2 - dy
    return (
        f'<line class="{css}" x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" '
        f'y2="{y2:.1f}"><title>{escape(title)}</title></line>'
    )


def _tree_edges(tree: Tree, positions: dict[str, tuple[float, float]]) -> list[str]:
    edges = []
    for child, parent in sorted(tree.parents.items()):
        if child in positions and parent in positions:
            edges.append(
                _line(
                    positions[child],
                    positions[parent],
                    "tree-edge",
                    f"{child} joined through {parent}",
                    trim=NODE_RADIUS + 3,
                )
            )
    return edges


def _node_shape(
    name: str,
    role: str,
    position: tuple[float, float],
    trees: list[Tree],
    status: dict[str, Any],
) -> str:
    x, y = position
    classes = ["node", f"role-{role}"]
    marks = []
    for tree in trees:
        if name in tree.gkdcs:
            marks.append(f"gkdc-{tree.group}")
        if name in tree.denied:
            marks.append(f"denied-{tree.group}")
        if role == "host" and name in tree.parents:
            marks.append(f"member-{tree.group}")
    data_marks = " ".join(marks)
    shape = _SHAPES.get(role, _SHAPES["router"]).format(r=NODE_RADIUS)
    title = _node_title(name, role, status)
    return (
        f'<g class="{" ".join(classes)}" data-node="{escape(name)}" '
        f'data-marks="{escape(data_marks)}" transform="translate({x:.1f},{y:.1f})">'
        f'{shape}<text y="{NODE_RADIUS + 13}">{escape(name)}</text>'
        f"<title>{escape(title)}</title></g>"
    )


_SHAPES = {
    "router": '<circle r="{r}"/>',
    "core": '<circle r="{r}"/><circle class="ring" r="5"/>',
    "host": '<rect x="-8" y="-8" width="16" height="16" rx="3"/>',
    "initiator": '<polygon points="0,-12 12,0 0,12 -12,0"/>',
}


def _node_title(name: str, role: str, status: dict[str, Any]) -> str:
    lines = [f"{name} ({role})"]
    for counter, value in sorted(status.get("counters", {}).items()):
        lines.append(f"{counter}: {value}")
    if "error" in status:
        lines.append(f"status: {status['error']}")
    return "\n".join(lines)


def render_joins(rows: list[tuple[str, str, float, float, str]]) -> str:
    """Chart joins as bars from the join action to the key or the denial.

    Each row is (host, group, start, finish, outcome) with times in seconds
    after the topology became ready, and outcome keyed, denied or pending.
    """
    if not rows:
        return "<p>No joins in this run.</p>"
    end = max(finish for _, _, _, finish, _ in rows) or 1.0
    scale = (WIDTH - 260) / max(end, 1e-3)
    height = 22 * len(rows) + 30
    parts = [_svg_open("joins", height, "join latency per host")]
    for index, (host, group, start, finish, outcome) in enumerate(rows):
        y = 10 + 22 * index
        width = max((finish - start) * scale, 2.0)
        label = f"{host} {group}: {outcome} after {(finish - start) * 1000:.0f} ms"
        parts.append(
            f'<text class="label" x="170" y="{y + 13}">{escape(host)}</text>'
            f'<rect class="bar {outcome}" x="{180 + start * scale:.1f}" y="{y}" '
            f'width="{width:.1f}" height="16"><title>{escape(label)}</title></rect>'
            f'<text class="value" x="{186 + start * scale + width:.1f}" y="{y + 13}">'
            f"{(finish - start) * 1000:.0f} ms</text>"
        )
    parts.append(
        f'<text class="axis" x="180" y="{height - 4}">0 s = topology ready; '
        f"right edge = {end:.2f} s</text></svg>"
    )
    return "\n".join(parts)
