"""The tree invariant, rebuilt from the routers' ``tree_state`` trace events.

A group's tree is sound at a moment when:

- every live router on the tree reaches a root through parents that are
  live, on the tree, list it as a child and share a working link with it,
  without visiting any router twice (no loops);
- every root (a router on the tree without a parent) is a core of the group:
  the primary, or a secondary acting as root while the primary is gone;
- every member's designated router is on the tree and lists it as a member.

A member is a host whose last join was not followed by a leave, that no
router denied, that is running and that has installed the key at least
once. A join still under way therefore does not count as a broken tree. A
member whose DR is stopped cannot be served, so it is left out (and
named). Which nodes run and which links work comes from the runner's own
record of its actions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .model import Lan, Link, Topology

TREE_EVENT = "tree_state"
# faults after which a tree has to repair itself
FAULT_ACTIONS = ("link_down", "node_stop")


@dataclass
class Moment:
    """The record's view of one moment: router states, stopped nodes, down links."""

    states: dict[str, dict[str, Any]]
    stopped: set[str]
    down_links: set[str]
    members: set[str]


class TreeHistory:
    """The tree of one group over a run, from traces and the runner's actions."""

    def __init__(
        self,
        topology: Topology,
        group: str,
        events: dict[str, list[dict[str, Any]]],
        actions: list[dict[str, Any]],
    ):
        self.topology = topology
        self.group = topology.groups[group]
        self.actions = sorted(actions, key=lambda a: a["t"])
        # only these events matter, so each moment scans only them
        self.events = {
            node: [e for e in node_events if self._relevant(e)]
            for node, node_events in events.items()
        }

    def _relevant(self, event: dict[str, Any]) -> bool:
        if event["event"] == "agent_started":
            return True
        if event["event"] in (TREE_EVENT, "join_denied", "key_installed"):
            return event.get("group") == self.group.name
        return False

    # the state at one time

    def at(self, time: float) -> Moment:
        stopped = self._stopped(time)
        states = {}
        for node in self.topology.nodes:
            state = self._state(node, time)
            if state is not None and node not in stopped:
                states[node] = state
        return Moment(states, stopped, self._down_links(time),
                      self._members(time, stopped))

    def _state(self, node: str, time: float) -> dict[str, Any] | None:
        """Return ``node``'s last tree state at ``time`` in its current run."""
        last = None
        for event in self.events.get(node, []):
            if event["t"] > time:
                break
            if event["event"] == "agent_started":
                last = None
            elif event["event"] == TREE_EVENT:
                last = event
        return last

    def _stopped(self, time: float) -> set[str]:
        stopped: set[str] = set()
        for action in self.actions:
            if action["t"] > time:
                break
            if action["action"] == "node_stop":
                stopped.add(action["node"])
            elif action["action"] == "node_start":
                stopped.discard(action["node"])
        return stopped

    def _down_links(self, time: float) -> set[str]:
        # a link down in either direction breaks the tree's keepalives
        down: dict[tuple[str, str | None], bool] = {}
        for action in self.actions:
            if action["t"] > time:
                break
            if action["action"] in ("link_down", "link_up"):
                key = (action["link"], action.get("from"))
                down[key] = action["action"] == "link_down"
        return {link for (link, _), is_down in down.items() if is_down}

    def _members(self, time: float, stopped: set[str]) -> set[str]:
        last: dict[str, str] = {}
        for action in self.actions:
            if action["t"] > time:
                break
            if action["action"] in ("join", "leave") and (
                action.get("group") == self.group.name
            ):
                last[action["node"]] = action["action"]
        denied = set()
        keyed = set()
        for node, events in self.events.items():
            for event in events:
                if event["t"] > time:
                    break
                if event["event"] == "join_denied":
                    denied.add(event.get("host"))
                elif event["event"] == "key_installed":
                    keyed.add(node)
        return {
            host for host, kind in last.items()
            if kind == "join" and host in keyed and host not in denied | stopped
        }

    # checking one moment

    def problems(self, moment: Moment) -> list[str]:
        """Return what makes the tree unsound at ``moment``; empty if it is sound."""
        problems = []
        for router, state in sorted(moment.states.items()):
            if state["on_tree"]:
                problem = self._branch_problem(router, moment)
                if problem:
                    problems.append(problem)
        for host in sorted(moment.members):
            problem = self._member_problem(host, moment)
            if problem:
                problems.append(problem)
        return problems

    def _branch_problem(self, router: str, moment: Moment) -> str | None:
        seen = [router]
        node = router
        while True:
            state = moment.states[node]
            parent = state["parent"]
            if parent is None:
                if node not in self.group.cores:
                    return f"{node} is a root but not a core of {self.group.name}"
                return None
            problem = self._edge_problem(node, parent, moment)
            if problem:
                return f"{router}'s branch: {problem}"
            if parent in seen:
                return f"loop: {' -> '.join(seen + [parent])}"
            seen.append(parent)
            node = parent

    def _edge_problem(self, child: str, parent: str, moment: Moment) -> str | None:
        if parent in moment.stopped:
            return f"{child}'s parent {parent} is stopped"
        state = moment.states.get(parent)
        if state is None or not state["on_tree"]:
            return f"{child}'s parent {parent} is off the tree"
        if child not in state["children"]:
            return f"{child}'s parent {parent} does not list it as a child"
        if not self._linked(child, parent, moment.down_links):
            return f"the link between {child} and its parent {parent} is down"
        return None

    def _member_problem(self, host: str, moment: Moment) -> str | None:
        dr = self.designated_router(host)
        if dr is None or dr in moment.stopped:
            return None
        state = moment.states.get(dr)
        if state is None or not state["on_tree"]:
            return f"member {host}'s DR {dr} is off the tree"
        if host not in state["members"]:
            return f"member {host}'s DR {dr} does not list it"
        return None

    def _linked(self, a: str, b: str, down: set[str]) -> bool:
        return any(
            segment.name not in down
            for segment in self._segments()
            if a in _members(segment) and b in _members(segment)
        )

    def _segments(self) -> list[Link | Lan]:
        return [*self.topology.links, *self.topology.lans]

    def designated_router(self, host: str) -> str | None:
        for lan in self.topology.lans:
            if host in lan.hosts:
                return lan.dr
        for link in self.topology.links:
            if host in (link.a, link.b):
                return link.b if link.a == host else link.a
        return None

    def unserved(self, moment: Moment) -> list[str]:
        """Return the members whose DR is stopped, which no tree can serve."""
        return sorted(
            host for host in moment.members
            if self.designated_router(host) in moment.stopped
        )

    # over time

    def last_fault(self) -> dict[str, Any] | None:
        faults = [a for a in self.actions if a["action"] in FAULT_ACTIONS]
        return faults[-1] if faults else None

    def sound_since(self, start: float, end: float) -> float | None:
        """Return when the tree last became sound in [start, end], or None.

        The tree is checked at ``start`` and after every tree event and
        action up to ``end``; None means it is not sound at ``end``.
        """
        times = {start}
        for events in self.events.values():
            times.update(e["t"] for e in events
                         if start < e["t"] <= end and e["event"] == TREE_EVENT)
        times.update(a["t"] for a in self.actions if start < a["t"] <= end)
        since = None
        for time in sorted(times):
            if self.problems(self.at(time)):
                since = None
            elif since is None:
                since = time
        return since


def _members(segment: Link | Lan) -> tuple[str, ...]:
    if isinstance(segment, Link):
        return (segment.a, segment.b)
    return segment.routers + segment.hosts
