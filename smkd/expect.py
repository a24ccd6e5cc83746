"""Evaluate a scenario's expectations against the run's traces and captures.

Pass or fail comes from the agents' JSON-lines traces and the runner's own
record of when it acted, never from human-readable logs.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.capture import read_pcap
from node.crypto import fingerprint
from node.errors import MalformedMessage

from .model import Expectation, Scenario, Topology
from .treecheck import TreeHistory

KEY_SIZE = 16
HOST_KEY_EVENTS = ("key_installed",)
ROUTER_KEY_EVENTS = ("became_gkdc", "keys_updated")


@dataclass
class RunRecord:
    """What a run left behind: trace events per node and the runner's timeline."""

    events: dict[str, list[dict[str, Any]]]
    ready_at: float | None
    actions: list[dict[str, Any]]
    run_dir: Path
    topology: Topology | None = None

    @classmethod
    def load(
        cls, run_dir: Path, ready_at: float | None, actions: list[dict[str, Any]]
    ) -> RunRecord:
        events: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for path in sorted((run_dir / "traces").glob("*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    events[record["node"]].append(record)
        return cls(dict(events), ready_at, actions, run_dir)

    def of(
        self, node: str, *names: str, group: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events.get(node, [])
            if e["event"] in names and (group is None or e.get("group") == group)
        ]

    def everywhere(self, *names: str) -> list[dict[str, Any]]:
        return [
            e for events in self.events.values() for e in events if e["event"] in names
        ]

    def last_action(
        self, kind: str, node: str | None, group: str | None
    ) -> float | None:
        times = [
            a["t"]
            for a in self.actions
            if a["action"] == kind
            and a.get("node") == node
            and (group is None or a.get("group") == group)
        ]
        return max(times, default=None)


@dataclass
class Outcome:
    expectation: Expectation
    passed: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


def evaluate(scenario: Scenario, record: RunRecord) -> list[Outcome]:
    """Check every expectation, then the tree invariant of every group."""
    if record.topology is None:
        record.topology = scenario.topology
    outcomes = []
    for expectation in [*scenario.expect, *tree_invariants(scenario)]:
        check = CHECKS[expectation.kind]
        try:
            passed, detail = check(expectation.params, record)
        except (OSError, ValueError, MalformedMessage) as error:
            passed, detail = False, f"could not be checked: {error}"
        outcomes.append(Outcome(expectation, passed, detail))
    return outcomes


def tree_invariants(scenario: Scenario) -> list[Expectation]:
    """Return the tree invariant of each group, checked after every scenario."""
    return [
        Expectation("tree_invariant", f"the tree of {group} is sound at the end",
                    {"group": group}, None)
        for group in scenario.topology.groups
    ]


def _reference_time(
    record: RunRecord, node: str, group: str | None, kind: str
) -> float:
    start = record.last_action(kind, node, group)
    if start is not None:
        return start
    return record.ready_at or 0.0


def _current_key(record: RunRecord, group: str) -> str | None:
    created = [e for e in record.everywhere("keys_created") if e.get("group") == group]
    if not created:
        return None
    return max(created, key=lambda e: (e["epoch"], e["t"]))["group_key_fp"]


def _key_events(record: RunRecord, node: str, group: str) -> list[dict[str, Any]]:
    names = HOST_KEY_EVENTS + ROUTER_KEY_EVENTS + ("keys_created", "key_erased")
    return record.of(node, *names, group=group)


def check_holds_key(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    node, group, within = params["node"], params["group"], params.get("within")
    events = _key_events(record, node, group)
    installs = [e for e in events if e["event"] != "key_erased"]
    if not installs:
        return False, f"{node} never installed a key of {group}"
    if events[-1]["event"] == "key_erased":
        return False, f"{node} erased its key of {group} at the end"

    first = installs[0]
    reference = _reference_time(record, node, group, "join")
    delay = first["t"] - reference
    if within is not None and delay > within:
        return (
            False,
            f"{node} installed the key {delay:.2f} s after joining, limit {within:g} s",
        )
    current = _current_key(record, group)
    if current is not None and installs[-1].get("group_key_fp") != current:
        return False, f"{node} holds an old key of {group}"
    return True, f"{node} installed epoch {installs[-1]['epoch']} after {delay:.2f} s"


def check_lacks_key(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    node, group = params["node"], params["group"]
    events = _key_events(record, node, group)
    if events and events[-1]["event"] != "key_erased":
        return False, f"{node} holds a key of {group} (event {events[-1]['event']})"
    return True, f"{node} holds no key of {group}"


def check_denied(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    node, group, within = params["node"], params["group"], params.get("within")
    denials = [
        e
        for e in record.everywhere("join_denied")
        if e.get("host") == node and e.get("group") == group
    ]
    if not denials:
        return False, f"no router reported {node}'s join to {group} as denied"
    reference = _reference_time(record, node, group, "join")
    delay = denials[0]["t"] - reference
    if within is not None and delay > within:
        return False, f"denial came {delay:.2f} s after the join, limit {within:g} s"
    first = denials[0]
    detail = f"{first['node']} denied {node} after {delay:.2f} s ({first['reason']})"
    return True, detail


def check_gkdc(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    node, group = params["node"], params["group"]
    events = record.of(node, "became_gkdc", group=group)
    if not events:
        return False, f"{node} never became a GKDC of {group}"
    return True, f"{node} became a GKDC at epoch {events[0]['epoch']}"


def check_not_gkdc(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    passed, detail = check_gkdc(params, record)
    if passed:
        return False, detail
    return True, f"{params['node']} never held the keys of {params['group']}"


def check_all_members(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    group = params["group"]
    joined = {
        a["node"]
        for a in record.actions
        if a["action"] == "join" and a.get("group") == group
    }
    left = {
        a["node"]
        for a in record.actions
        if a["action"] == "leave" and a.get("group") == group
    }
    denied = {
        e.get("host")
        for e in record.everywhere("join_denied")
        if e.get("group") == group
    }
    members = sorted(joined - left - denied)
    missing = []
    for member in members:
        passed, detail = check_holds_key(
            {"node": member, "group": group, "within": params.get("within")}, record
        )
        if not passed:
            missing.append(detail)
    if missing:
        shown = "; ".join(missing[:5])
        return False, f"{len(missing)} of {len(members)} members lack the key: {shown}"
    return True, f"all {plural(len(members), 'member')} hold the current key"


def check_event(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    name, reason = params["event"], params.get("reason")
    node = params.get("node")
    pool = record.of(node, name) if node else record.everywhere(name)
    matches = [e for e in pool if reason is None or e.get("reason") == reason]
    low, high = params.get("min", 1), params.get("max")
    where = node or "any node"
    if len(matches) < low or (high is not None and len(matches) > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        count = plural(len(matches), "time")
        return False, f"{where} traced {name} {count}, expected {bound}"
    return True, f"{where} traced {name} {plural(len(matches), 'time')}"


def check_received(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    node, group, sender = params["node"], params["group"], params.get("from")
    events = record.of(node, "data_received", group=group)
    if sender:
        events = [e for e in events if e.get("sender") == sender]
    low, high = params.get("min", 1), params.get("max")
    where = f" from {sender}" if sender else ""
    detail = f"{node} received {len(events)} data packets of {group}{where}"
    if len(events) < low or (high is not None and len(events) > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        return False, f"{detail}, expected {bound}"
    return True, detail


def check_no_key_in_clear(
    params: dict[str, Any], record: RunRecord
) -> tuple[bool, str]:
    secrets = _secret_fingerprints(record)
    if not secrets:
        return False, "no key fingerprints in the traces, so nothing could be checked"
    findings = []
    captures = sorted((record.run_dir / "captures").glob("*.pcap"))
    for path in captures:
        for datagram in read_pcap(path):
            if _contains_secret(datagram.payload, secrets):
                findings.append(f"{path.name} at {datagram.timestamp:.6f}")
    texts = [
        *sorted((record.run_dir / "traces").glob("*.jsonl")),
        *sorted((record.run_dir / "logs").glob("*")),
    ]
    for path in texts:
        if path.is_file() and _text_contains_secret(path.read_bytes(), secrets):
            findings.append(path.name)
    if findings:
        return False, f"key material in clear in: {', '.join(findings[:5])}"
    return True, (
        f"{len(secrets)} keys absent from {len(captures)} captures "
        f"and {len(texts)} traces and logs"
    )


def _secret_fingerprints(record: RunRecord) -> set[str]:
    """Collect every fingerprint the traces carry: each field ending in ``_fp``."""
    secrets = set()
    for events in record.events.values():
        for event in events:
            for name, value in event.items():
                if name.endswith("_fp") and isinstance(value, str):
                    secrets.add(value)
    return secrets


def _contains_secret(data: bytes, secrets: set[str]) -> bool:
    # a key in clear is any 16-byte window whose fingerprint is a known key's
    return any(
        fingerprint(data[i : i + KEY_SIZE]) in secrets
        for i in range(len(data) - KEY_SIZE + 1)
    )


_HEX_KEY = re.compile(rb"(?i)(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")


def _text_contains_secret(data: bytes, secrets: set[str]) -> bool:
    if _contains_secret(data, secrets):
        return True
    return any(
        fingerprint(bytes.fromhex(m.group().decode())) in secrets
        for m in _HEX_KEY.finditer(data)
    )


def _history(record: RunRecord, group: str) -> TreeHistory:
    if record.topology is None:
        raise ValueError("the run record has no topology")
    return TreeHistory(record.topology, group, record.events, record.actions)


def _end_time(record: RunRecord) -> float:
    times = [e["t"] for events in record.events.values() for e in events]
    times += [a["t"] for a in record.actions]
    return max(times, default=record.ready_at or 0.0)


def check_tree_invariant(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    group = params["group"]
    history = _history(record, group)
    moment = history.at(_end_time(record))
    problems = history.problems(moment)
    members = sorted(moment.members)
    for member in members:
        held, detail = check_holds_key({"node": member, "group": group}, record)
        if not held:
            problems.append(detail)
    if problems:
        shown = "; ".join(problems[:5])
        return False, f"{len(problems)} problems: {shown}"
    on_tree = sorted(n for n, s in moment.states.items() if s["on_tree"])
    roots = sorted(n for n, s in moment.states.items()
                   if s["on_tree"] and s["parent"] is None)
    detail = (f"{len(on_tree)} routers on the tree under {', '.join(roots)}, "
              f"{plural(len(members), 'member')} with the current key")
    unserved = history.unserved(moment)
    if unserved:
        detail += f"; members behind a stopped DR left out: {', '.join(unserved)}"
    return True, detail


def check_tree_recovers(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    group, within = params["group"], params.get("within")
    history = _history(record, group)
    fault = history.last_fault()
    if fault is None:
        return False, "the timeline has no link_down or node_stop to recover from"
    what = f"{fault['action']} {fault.get('link') or fault.get('node')}"
    end = _end_time(record)
    since = history.sound_since(fault["t"], end)
    if since is None:
        problems = history.problems(history.at(end))
        return False, f"not sound at the end after {what}: {'; '.join(problems[:3])}"
    delay = since - fault["t"]
    if within is not None and delay > within:
        return False, f"sound {delay:.2f} s after {what}, limit {within:g} s"
    return True, f"sound {delay:.2f} s after {what}"


def _final_state(record: RunRecord, node: str, group: str) -> dict[str, Any] | None:
    history = _history(record, group)
    return history.at(_end_time(record)).states.get(node)


def check_on_tree(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    node, group = params["node"], params["group"]
    state = _final_state(record, node, group)
    if state is None or not state["on_tree"]:
        return False, f"{node} is not on the tree of {group} at the end"
    parent = state["parent"] or "none, it is a root"
    return True, f"{node} is on the tree of {group}, parent {parent}"


def check_off_tree(params: dict[str, Any], record: RunRecord) -> tuple[bool, str]:
    node, group = params["node"], params["group"]
    state = _final_state(record, node, group)
    if state is not None and state["on_tree"]:
        parent = state["parent"]
        return False, f"{node} is still on the tree of {group}, parent {parent}"
    return True, f"{node} is off the tree of {group}"


CHECKS: dict[str, Callable[[dict[str, Any], RunRecord], tuple[bool, str]]] = {
    "holds_key": check_holds_key,
    "lacks_key": check_lacks_key,
    "denied": check_denied,
    "gkdc": check_gkdc,
    "not_gkdc": check_not_gkdc,
    "all_members_hold_key": check_all_members,
    "event": check_event,
    "received": check_received,
    "no_key_in_clear": check_no_key_in_clear,
    "tree_invariant": check_tree_invariant,
    "tree_recovers": check_tree_recovers,
    "on_tree": check_on_tree,
    "off_tree": check_off_tree,
}


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
