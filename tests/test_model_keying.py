"""Scenario validation of the keying actions: send options, acl_update, received."""

from __future__ import annotations

import pytest
from test_model import BASE_TOPOLOGY, only_problem, write

from smkd.model import load_scenario


def scenario(tmp_path, key: str, *entries: str):
    """Write a scenario whose ``key`` (timeline or expect) lists ``entries``."""
    write(tmp_path, "topology.yaml", BASE_TOPOLOGY)
    body = "".join(f"  - {entry}\n" for entry in entries)
    text = f"name: keying\ntopology: topology.yaml\n{key}:\n{body}"
    return write(tmp_path, "scenario.yaml", text)


def test_send_forge_as_is_a_node(tmp_path):
    path = scenario(
        tmp_path, "timeline",
        "{at: 0, action: send, node: h2, group: G, forge_as: h}",
    )

    action = load_scenario(path).timeline[0]

    assert action.params["forge_as"] == "h"


def test_send_without_forge_as_leaves_it_out(tmp_path):
    path = scenario(tmp_path, "timeline", "{at: 0, action: send, node: h, group: G}")

    assert "forge_as" not in load_scenario(path).timeline[0].params


def test_send_forge_as_unknown_node(tmp_path):
    path = scenario(
        tmp_path, "timeline",
        "{at: 0, action: send, node: h2, group: G, forge_as: hh}",
    )

    problem = only_problem(path)

    assert "unknown node 'hh'" in problem.message


def test_acl_update_lists_hosts(tmp_path):
    path = scenario(
        tmp_path, "timeline",
        "{at: 3, action: acl_update, group: G, remove: [h2], add: [h]}",
    )

    action = load_scenario(path).timeline[0]

    assert action.kind == "acl_update"
    assert action.group == "G"
    assert action.params == {"remove": ("h2",), "add": ("h",)}


def test_acl_update_needs_remove_or_add(tmp_path):
    path = scenario(tmp_path, "timeline", "{at: 3, action: acl_update, group: G}")

    problem = only_problem(path)

    assert "at least one of remove, add" in problem.message


@pytest.mark.parametrize(
    "value, fragment",
    [
        ("h2", "non-empty list"),
        ("[]", "non-empty list"),
        ("[B]", "must have role host"),
        ("[nobody]", "unknown node 'nobody'"),
    ],
)
def test_acl_update_rejects_bad_lists(tmp_path, value, fragment):
    path = scenario(
        tmp_path, "timeline",
        f"{{at: 3, action: acl_update, group: G, remove: {value}}}",
    )

    problem = only_problem(path)

    assert fragment in problem.message


def test_received_takes_max(tmp_path):
    path = scenario(
        tmp_path, "expect",
        "{type: received, node: h2, group: G, from: h, min: 0, max: 0}",
        "{type: received, node: h, group: G, min: 2, max: 5}",
    )

    expect = load_scenario(path).expect

    assert expect[0].params["max"] == 0
    assert expect[0].name == "h2 receives exactly 0 datagrams of G from h"
    assert expect[1].name == "h receives 2 to 5 datagrams of G"


def test_received_max_below_min(tmp_path):
    path = scenario(
        tmp_path, "expect", "{type: received, node: h, group: G, min: 3, max: 1}"
    )

    assert "max 1 is below min 3" in only_problem(path).message
