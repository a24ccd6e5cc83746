"""The run report: one self-contained HTML page per run, ``report.html``.

The page shows the topology with each group's delivery tree drawn over it and
the GKDCs marked, how long each join took, the expectation results, the
timeline of runner actions and agent trace events, and the per-node counters
of summary.json. Styles, SVG and script are inline, so the page works offline
and from a copied run directory.

The tree comes from the traces: a router's ``on_tree`` event names its parent,
a host's ``key_installed`` event names its designated router, and ``denied``
or ``join_denied`` marks a host that the group ACL rejected.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .model import Scenario, ValidationError, load_scenario
from .report_svg import Tree, escape, render_joins, render_topology

if TYPE_CHECKING:
    from .runner import RunResult

REPORT_NAME = "report.html"
EXIT_INVALID = 2

# a router's own events that attach it to a parent or detach it
ATTACH_EVENTS = ("on_tree", "rejoined")
DETACH_EVENTS = ("parent_lost", "pruned", "flush_received", "acting_root")
# a parent's events about a child router or member host that went away
GONE_EVENTS = ("child_quit", "child_expired", "member_left", "member_expired")
DENIAL_EVENTS = ("denied", "join_denied")
TREE_EVENTS = (
    *ATTACH_EVENTS,
    *DETACH_EVENTS,
    *GONE_EVENTS,
    *DENIAL_EVENTS,
    "key_installed",
    "key_erased",
)
GKDC_EVENTS = ("became_gkdc", "keys_created")
KEY_EVENTS = ("key_installed", "became_gkdc", "keys_updated", "keys_created")
PROBLEM_EVENTS = (
    "denied",
    "join_denied",
    "nack_sent",
    "nack_received",
    "drop",
    "token_rejected",
    "acl_rejected",
    "join_timeout",
    "join_expired",
    "action_failed",
)


@dataclass
class RunData:
    """The parts of a run directory that the report reads."""

    scenario: Scenario
    run_dir: Path
    summary: dict[str, Any]
    events: list[dict[str, Any]]
    ready_at: float | None


def load_run(run_dir: Path, scenario: Scenario) -> RunData:
    """Read the traces, the runner's record and summary.json of a run."""
    events = []
    for path in sorted((run_dir / "traces").glob("*.jsonl")):
        events.extend(_read_jsonl(path))
    runner_events = _read_jsonl(run_dir / "runner.jsonl")
    events.extend(runner_events)
    events.sort(key=lambda event: event.get("t", 0.0))

    ready = [e["t"] for e in runner_events if e.get("event") == "ready"]
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return RunData(scenario, run_dir, summary, events, ready[0] if ready else None)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read JSON lines, skipping a line that a killed agent left half written."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "event" in record:
            records.append(record)
    return records


def delivery_tree(events: Iterable[dict[str, Any]], group: str) -> Tree:
    """Follow the trace events of ``group`` to its tree at the end of the run."""
    tree = Tree(group)
    for event in events:
        if event.get("group") == group:
            _apply_tree_event(tree, event)
    return tree


def _apply_tree_event(tree: Tree, event: dict[str, Any]) -> None:
    name, node = event["event"], event.get("node", "")
    if name in ATTACH_EVENTS and event.get("parent"):
        tree.parents[node] = event["parent"]
    elif name in DETACH_EVENTS:
        tree.parents.pop(node, None)
    elif name in GONE_EVENTS:
        # the parent's view counts only while the child still hangs from it
        gone = event.get("peer") or event.get("host")
        if tree.parents.get(gone) == node:
            del tree.parents[gone]
    elif name == "key_installed":
        tree.parents[node] = event.get("peer", "")
        tree.denied.discard(node)
    elif name == "key_erased":
        # a host that erased its key has left; a router is no GKDC any more
        tree.parents.pop(node, None)
        tree.gkdcs.discard(node)
    elif name in DENIAL_EVENTS and "host" in event:
        if event["host"] not in tree.parents:
            tree.denied.add(event["host"])
    elif name in GKDC_EVENTS:
        tree.gkdcs.add(node)


def _cells(*values: Any) -> str:
    return "".join(f"<td>{escape(value)}</td>" for value in values)


def _join_rows(run: RunData) -> list[tuple[str, str, float, float, str]]:
    """Return (host, group, start, finish, outcome) per join, times after ready."""
    origin = run.ready_at or (run.events[0]["t"] if run.events else 0.0)
    rows = []
    for action in (e for e in run.events if e.get("event") == "action"):
        if action.get("action") != "join":
            continue
        host, group = action.get("node"), action.get("group")
        outcome, finish = _join_outcome(run.events, host, group, action["t"])
        rows.append((host, group, action["t"] - origin, finish - origin, outcome))
    return rows


def _join_outcome(
    events: list[dict[str, Any]], host: str, group: str, start: float
) -> tuple[str, float]:
    for event in events:
        if event["t"] < start or event.get("group") != group:
            continue
        if event.get("node") == host and event["event"] == "key_installed":
            return "keyed", event["t"]
        if event.get("host") == host and event["event"] in ("denied", "join_denied"):
            return "denied", event["t"]
    last = events[-1]["t"] if events else start
    return "pending", last


def render_expectations(run: RunData) -> str:
    summary = run.summary
    rows = []
    if summary.get("ready_error"):
        rows.append(("FAIL", "topology becomes ready", "", summary["ready_error"]))
    for error in summary.get("action_errors", []):
        rows.append(("FAIL", "timeline action", "", error))
    for outcome in summary.get("expectations", []):
        mark = "ok" if outcome["passed"] else "FAIL"
        rows.append(
            (mark, outcome["name"], outcome.get("line") or "", outcome["detail"])
        )
    if not rows:
        return "<p>No expectations were checked.</p>"
    body = "\n".join(
        f'<tr class="{"pass" if row[0] == "ok" else "fail"}">{_cells(*row)}</tr>'
        for row in rows
    )
    return (
        "<table><thead><tr><th></th><th>expectation</th><th>line</th>"
        f"<th>detail</th></tr></thead><tbody>{body}</tbody></table>"
    )


def render_timeline(run: RunData) -> str:
    origin = run.ready_at or (run.events[0]["t"] if run.events else 0.0)
    rows = []
    for event in run.events:
        name = event["event"]
        details = " ".join(
            f"{key}={value}"
            for key, value in event.items()
            if key not in ("t", "node", "event") and value is not None
        )
        node = event.get("node", "")
        rows.append(
            f'<tr class="{_event_class(name)}" data-node="{escape(node)}">'
            f'<td class="num">{event["t"] - origin:.3f}</td>'
            f"{_cells(node, name, details)}</tr>"
        )
    return (
        '<p><input id="filter" type="search" placeholder="filter: node, event or '
        'detail (click a node in the topology)"> <span id="shown"></span></p>'
        '<div class="scroll"><table id="timeline"><thead><tr><th>s after ready</th>'
        "<th>node</th><th>event</th><th>details</th></tr></thead><tbody>"
        + "\n".join(rows)
        + "</tbody></table></div>"
    )


def _event_class(name: str) -> str:
    if name in ("action", "ready", "started", "stopped"):
        return "ev-runner"
    if name in PROBLEM_EVENTS or name in DETACH_EVENTS:
        return "ev-problem"
    if name in KEY_EVENTS or name == "keys_delivered":
        return "ev-key"
    if name in TREE_EVENTS or name.startswith(("join", "ack")):
        return "ev-tree"
    return "ev-other"


def render_counts(run: RunData) -> str:
    nodes = run.summary.get("nodes", {})
    if not nodes:
        return "<p>No node status was collected.</p>"
    counters = sorted(
        {c for status in nodes.values() for c in status.get("counters", {})}
    )
    head = "".join(f"<th>{escape(c)}</th>" for c in counters)
    rows = []
    for name, status in nodes.items():
        node = run.scenario.topology.nodes.get(name)
        role = status.get("role") or (node.role if node is not None else "")
        cells = "".join(
            f'<td class="num">{escape(status.get("counters", {}).get(c, ""))}</td>'
            for c in counters
        )
        note = escape(status.get("error", ""))
        rows.append(
            f"<tr><td>{escape(name)}</td><td>{escape(role)}</td>"
            f"{cells}<td>{note}</td></tr>"
        )
    return (
        '<div class="scroll"><table id="counts"><thead><tr><th>node</th>'
        f"<th>role</th>{head}<th>status</th></tr></thead><tbody>"
        + "\n".join(rows)
        + "</tbody></table></div>"
    )


def render_report(run: RunData) -> str:
    """Build the whole HTML page of one run."""
    scenario, summary = run.scenario, run.summary
    groups = list(scenario.topology.groups)
    trees = [delivery_tree(run.events, group) for group in groups]
    passed = summary.get("passed")
    verdict = {True: "PASSED", False: "FAILED"}.get(passed, "NOT CHECKED")
    options = "".join(
        f'<option value="{escape(g)}">{escape(g)}</option>' for g in groups
    )
    tree_notes = "".join(_tree_note(tree) for tree in trees)
    return _PAGE.format(
        title=escape(f"smkd run: {scenario.name}"),
        style=_STYLE,
        script=_SCRIPT,
        name=escape(scenario.name),
        description=escape(scenario.description),
        verdict=verdict,
        verdict_class="pass" if passed else "fail",
        seconds=summary.get("seconds", 0.0),
        backend=escape(summary.get("backend", "")),
        run_dir=escape(run.run_dir),
        topology_source=escape(scenario.topology.source),
        options=options,
        topology=render_topology(
            scenario.topology, scenario.seed, trees, summary.get("nodes", {})
        ),
        tree_notes=tree_notes,
        joins=render_joins(_join_rows(run)),
        expectations=render_expectations(run),
        timeline=render_timeline(run),
        counts=render_counts(run),
    )


def _tree_note(tree: Tree) -> str:
    members = sorted(child for child in tree.parents)
    return (
        f'<p class="tree-note" data-group="{escape(tree.group)}">Group '
        f"{escape(tree.group)}: {len(tree.parents)} tree edges; GKDCs "
        f"{escape(', '.join(sorted(tree.gkdcs)) or 'none')}; denied "
        f"{escape(', '.join(sorted(tree.denied)) or 'none')}; on the tree "
        f"{escape(', '.join(members) or 'nobody')}.</p>"
    )


def write_report(result: RunResult) -> Path:
    """Write report.html into the run directory, after summary.json, and return it."""
    run = load_run(result.run_dir, result.scenario)
    path = result.run_dir / REPORT_NAME
    path.write_text(render_report(run), encoding="utf-8")
    return path


def add_report_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write the HTML report of an earlier run again",
        description="Write report.html into a run directory from its traces and "
        "summary.json, as smkd run does at the end of every run.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory")
    parser.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    summary_path = run_dir / "summary.json"
    try:
        summary = json.loads(summary_path.read_text())
        scenario = load_scenario(summary["source"])
    except (OSError, ValueError, KeyError) as error:
        print(
            f"smkd report: cannot read {summary_path}: {error}; "
            "pass a run directory written by smkd run",
            file=sys.stderr,
        )
        return EXIT_INVALID
    except ValidationError as error:
        print(
            f"smkd report: scenario of {run_dir} is invalid: {error.problems[0]}",
            file=sys.stderr,
        )
        return EXIT_INVALID
    path = run_dir / REPORT_NAME
    path.write_text(render_report(load_run(run_dir, scenario)), encoding="utf-8")
    print(path)
    return 0


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1000px;
  color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.verdict { padding: 2px 8px; border-radius: 4px; color: #fff; font-weight: bold; }
.verdict.pass { background: #2a7d3b; } .verdict.fail { background: #b3261e; }
.meta { color: #555; }
svg { width: 100%; height: auto; background: #fafafa; border: 1px solid #ddd; }
.link { stroke: #b8b8b8; stroke-width: 2; }
.lan { stroke: #c8c8c8; stroke-width: 1.2; stroke-dasharray: 4 3; }
.tree-edge { stroke: #1f5fbf; stroke-width: 4; marker-end: url(#arrow); }
.arrowhead { fill: #1f5fbf; }
.node circle, .node rect, .node polygon { fill: #fff; stroke: #444;
  stroke-width: 1.5; }
.node.role-core circle { stroke-width: 3; }
.node .ring { fill: #444 !important; }
.node.gkdc circle, .node.gkdc polygon { fill: #f2c14e; }
.node.member rect { fill: #7cc47f; }
.node.denied rect { fill: #e57368; }
.node text { font-size: 10px; text-anchor: middle; fill: #333; paint-order: stroke;
  stroke: #fafafa; stroke-width: 3px; }
.node { cursor: pointer; }
.legend span { display: inline-block; margin-right: 1.2em; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
  border: 1px solid #444; vertical-align: -2px; }
#joins .bar.keyed { fill: #7cc47f; } #joins .bar.denied { fill: #e57368; }
#joins .bar.pending { fill: #bbb; }
#joins .label { font-size: 11px; text-anchor: end; }
#joins .value, #joins .axis { font-size: 10px; fill: #555; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #eee; padding: 3px 6px; text-align: left;
  vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.pass td:first-child { color: #2a7d3b; font-weight: bold; }
tr.fail td:first-child { color: #b3261e; font-weight: bold; }
.scroll { max-height: 420px; overflow: auto; border: 1px solid #eee; }
tr.ev-runner { background: #eef3fb; } tr.ev-problem { background: #fdecea; }
tr.ev-key { background: #edf7ee; } tr.ev-tree { background: #f5f0fa; }
#filter { width: 60%; padding: 3px; }
"""

_SCRIPT = """
(function () {
  var select = document.getElementById('group');
  var filter = document.getElementById('filter');
  var shown = document.getElementById('shown');
  var rows = Array.prototype.slice.call(
    document.querySelectorAll('#timeline tbody tr'));

  function showGroup(group) {
    document.querySelectorAll('[data-group]').forEach(function (element) {
      element.style.display = element.dataset.group === group ? '' : 'none';
    });
    document.querySelectorAll('.node').forEach(function (node) {
      var marks = node.dataset.marks.split(' ');
      ['gkdc', 'member', 'denied'].forEach(function (mark) {
        node.classList.toggle(mark, marks.indexOf(mark + '-' + group) >= 0);
      });
    });
  }

  function applyFilter() {
    var text = filter.value.toLowerCase();
    var count = 0;
    rows.forEach(function (row) {
      var match = !text || row.textContent.toLowerCase().indexOf(text) >= 0;
      row.style.display = match ? '' : 'none';
      if (match) { count += 1; }
    });
    shown.textContent = count + ' of ' + rows.length + ' events';
  }

  document.querySelectorAll('.node').forEach(function (node) {
    node.addEventListener('click', function () {
      filter.value = node.dataset.node;
      applyFilter();
    });
  });
  select.addEventListener('change', function () { showGroup(select.value); });
  filter.addEventListener('input', applyFilter);
  showGroup(select.value);
  applyFilter();
})();
"""

_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{title}</title>
<style>{style}</style></head>
<body>
<h1>{name} <span class="verdict {verdict_class}">{verdict}</span></h1>
<p class="meta">{description}<br>{seconds} s on the {backend} backend; topology
{topology_source}; run directory {run_dir}</p>

<h2>Delivery tree</h2>
<p>Group <select id="group">{options}</select></p>
{tree_notes}
<p class="legend"><span><span class="swatch" style="background:#fff"></span>router
(circle), core (thick circle), initiator (diamond), host (square)</span>
<span><span class="swatch" style="background:#f2c14e"></span>GKDC</span>
<span><span class="swatch" style="background:#7cc47f"></span>host holding the key</span>
<span><span class="swatch" style="background:#e57368"></span>host denied</span>
<span style="color:#1f5fbf">&#8594; tree edge, child to parent</span></p>
{topology}

<h2>Joins</h2>
{joins}

<h2>Expectations</h2>
{expectations}

<h2>Timeline</h2>
{timeline}

<h2>Per-node counts</h2>
{counts}

<script>{script}</script>
</body></html>
"""
