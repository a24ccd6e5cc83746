"""The tree invariant, checked on hand-written traces of the Figure 1 network.

Figure 1 plus a second branch: h behind DR A, then B, then the core C; D
hangs off C directly, with h3 behind it, and links to the secondary core S.
Each test writes the routers' ``tree_state`` events and the runner's
actions that one situation leaves.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from smkd.expect import (
    RunRecord,
    check_off_tree,
    check_on_tree,
    check_tree_invariant,
    check_tree_recovers,
)
from smkd.model import load_topology
from smkd.treecheck import TreeHistory

T0 = 1_800_000_000.0

TOPOLOGY = textwrap.dedent(
    """\
    name: treecheck
    timers: fast
    nodes:
      h: {role: host}
      h3: {role: host}
      A: {role: router}
      B: {role: router}
      D: {role: router}
      C: {role: core}
      S: {role: core}
      init: {role: initiator}
    links:
      - {between: [h, A]}
      - {between: [h3, D]}
      - {between: [A, B]}
      - {between: [B, C]}
      - {between: [C, D]}
      - {between: [A, D]}
      - {between: [C, S]}
      - {between: [D, S]}
      - {between: [init, C]}
    groups:
      - name: G
        address: 239.1.1.1
        cores: [C, S]
        initiator: init
        acl: {mode: include, hosts: [h, h3]}
    """
)


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    path = tmp_path_factory.mktemp("treecheck") / "topology.yaml"
    path.write_text(TOPOLOGY)
    return load_topology(path)


def tree(node: str, t: float, parent: str | None, children=(), members=(),
         on_tree: bool = True) -> dict:
    return {"t": T0 + t, "node": node, "event": "tree_state", "group": "G",
            "on_tree": on_tree, "parent": parent, "children": list(children),
            "members": list(members), "root": on_tree and parent is None,
            "acting_root": False, "epoch": 1}


def key(host: str, t: float, fingerprint: str = "k1") -> dict:
    return {"t": T0 + t, "node": host, "event": "key_installed", "group": "G",
            "epoch": 1, "group_key_fp": fingerprint}


def action(kind: str, t: float, node: str | None = None, link: str | None = None,
           sender: str | None = None) -> dict:
    return {"t": T0 + t, "action": kind, "node": node, "group": "G" if node and
            kind in ("join", "leave") else None, "link": link, "from": sender}


def sound_tree() -> list[dict]:
    """C is the root, B under it, A under B with member h."""
    return [
        {"t": T0, "node": "C", "event": "keys_created", "group": "G", "epoch": 1,
         "group_key_fp": "k1"},
        tree("C", 0.0, None),
        tree("C", 1.0, None, ["B"]),
        tree("B", 1.0, "C", ["A"]),
        tree("A", 1.0, "B", [], ["h"]),
        key("h", 1.0),
    ]


def record(topology, events: list[dict], actions: list[dict]) -> RunRecord:
    by_node: dict[str, list[dict]] = {}
    for event in sorted(events, key=lambda e: e["t"]):
        by_node.setdefault(event["node"], []).append(event)
    return RunRecord(by_node, T0, actions, Path("/nonexistent"), topology)


def problems(topology, events, actions, at: float) -> list[str]:
    history = TreeHistory(topology, "G", record(topology, events, actions).events,
                          actions)
    return history.problems(history.at(T0 + at))


JOIN_H = [action("join", 0.5, "h")]


def test_sound_tree_has_no_problems(topology):
    run = record(topology, sound_tree(), JOIN_H)

    passed, detail = check_tree_invariant({"group": "G"}, run)

    assert passed, detail
    assert "3 routers on the tree under C" in detail
    assert "1 member with" in detail


def test_loop_is_found(topology):
    events = sound_tree() + [
        tree("B", 2.0, "A", ["A"]),
        tree("A", 2.0, "B", ["B"], ["h"]),
    ]

    found = problems(topology, events, JOIN_H, 3.0)

    assert any(p.startswith("loop: ") for p in found), found


def test_stopped_parent_is_found(topology):
    found = problems(topology, sound_tree(), JOIN_H + [action("node_stop", 2.0, "B")],
                     3.0)

    assert found == ["A's branch: A's parent B is stopped"]


def test_down_link_is_found(topology):
    actions = JOIN_H + [action("link_down", 2.0, link="A-B")]

    found = problems(topology, sound_tree(), actions, 3.0)

    assert found == ["A's branch: the link between A and its parent B is down"]


def test_one_direction_down_counts(topology):
    actions = JOIN_H + [action("link_down", 2.0, link="B-C", sender="C")]

    found = problems(topology, sound_tree(), actions, 3.0)

    assert "B's branch: the link between B and its parent C is down" in found


def test_link_up_again_is_sound(topology):
    actions = JOIN_H + [action("link_down", 2.0, link="A-B"),
                        action("link_up", 2.5, link="A-B")]

    assert problems(topology, sound_tree(), actions, 3.0) == []


def test_parent_must_list_child(topology):
    events = sound_tree() + [tree("B", 2.0, "C", [])]

    found = problems(topology, events, JOIN_H, 3.0)

    assert found == ["A's branch: A's parent B does not list it as a child"]


def test_root_must_be_core(topology):
    events = sound_tree() + [tree("B", 2.0, None, ["A"])]

    found = problems(topology, events, JOIN_H, 3.0)

    assert "B is a root but not a core of G" in found


def test_member_dr_off_tree_is_found(topology):
    events = sound_tree() + [tree("A", 2.0, None, [], ["h"], on_tree=False)]

    found = problems(topology, events, JOIN_H, 3.0)

    assert found == ["member h's DR A is off the tree"]


def test_member_counts_once_keyed(topology):
    # h3 joined, but its join is still under way: no problem yet
    events = sound_tree()
    actions = JOIN_H + [action("join", 2.0, "h3")]

    assert problems(topology, events, actions, 3.0) == []
    keyed = events + [key("h3", 3.5)]
    assert problems(topology, keyed, actions, 4.0) == [
        "member h3's DR D is off the tree"]


def test_member_behind_stopped_dr_is_left_out(topology):
    events = sound_tree()
    actions = JOIN_H + [action("node_stop", 2.0, "A")]
    run = record(topology, events, actions)

    passed, detail = check_tree_invariant({"group": "G"}, run)

    assert passed, detail
    assert "members behind a stopped DR left out: h" in detail


def test_restarted_router_forgets_old_state(topology):
    events = sound_tree() + [
        {"t": T0 + 2.0, "node": "A", "event": "agent_started"},
    ]

    found = problems(topology, events, JOIN_H, 3.0)

    assert found == ["member h's DR A is off the tree"]


def test_member_without_current_key_fails(topology):
    events = sound_tree() + [
        {"t": T0 + 2.0, "node": "C", "event": "keys_created", "group": "G",
         "epoch": 2, "group_key_fp": "k2"},
    ]
    run = record(topology, events, JOIN_H)

    passed, detail = check_tree_invariant({"group": "G"}, run)

    assert not passed
    assert "h holds an old key of G" in detail


def test_acting_root_secondary_is_sound(topology):
    # the primary C and B stop; h leaves, so A prunes; S serves h3 through D
    events = sound_tree() + [
        tree("A", 2.5, None, on_tree=False),
        tree("S", 3.0, None, ["D"]),
        tree("D", 3.0, "S", [], ["h3"]),
        key("h3", 3.0),
    ]
    actions = JOIN_H + [action("node_stop", 2.0, "C"), action("node_stop", 2.1, "B"),
                        action("leave", 2.2, "h"), action("join", 2.5, "h3")]

    assert problems(topology, events, actions, 4.0) == []


def test_recovery_time_measured_from_fault(topology):
    events = sound_tree() + [
        tree("A", 4.0, None, [], ["h"], on_tree=False),
        tree("D", 4.5, "C", ["A"]),
        tree("C", 4.5, None, ["B", "D"]),
        tree("A", 4.5, "D", [], ["h"]),
    ]
    actions = JOIN_H + [action("link_down", 2.0, link="A-B")]
    run = record(topology, events, actions)

    passed, detail = check_tree_recovers({"group": "G", "within": 3}, run)
    too_slow, slow_detail = check_tree_recovers({"group": "G", "within": 2}, run)

    assert passed, detail
    assert "sound 2.50 s after link_down A-B" in detail
    assert not too_slow
    assert "limit 2 s" in slow_detail


def test_never_recovering_fails(topology):
    actions = JOIN_H + [action("node_stop", 2.0, "B")]
    run = record(topology, sound_tree(), actions)

    passed, detail = check_tree_recovers({"group": "G", "within": 5}, run)

    assert not passed
    assert "not sound at the end after node_stop B" in detail


def test_recovery_needs_a_fault(topology):
    run = record(topology, sound_tree(), JOIN_H)

    passed, detail = check_tree_recovers({"group": "G"}, run)

    assert not passed
    assert "no link_down or node_stop" in detail


def test_on_and_off_tree(topology):
    events = sound_tree() + [tree("D", 2.0, None, on_tree=False)]
    run = record(topology, events, JOIN_H)

    assert check_on_tree({"node": "A", "group": "G"}, run)[0]
    assert not check_on_tree({"node": "D", "group": "G"}, run)[0]
    assert check_off_tree({"node": "D", "group": "G"}, run)[0]
    assert not check_off_tree({"node": "B", "group": "G"}, run)[0]
