"""CBT tree maintenance: keepalives, parent loss, re-joins, loop probes, quits.

CBT keeps hard state: once a join-ack fixes a branch, it stays until a
member leaves or a failure breaks it (RFC 1949 section 3). This module
keeps that state true, with CBTv1's mechanisms (draft-ietf-idmr-cbt-spec,
1996):

- an on-tree router sends its parent an ECHO-REQUEST every
  ``echo_interval`` and takes the parent as lost after ``echo_timeout``
  without an ECHO-REPLY; with link-state routing, losing the adjacency to
  the parent counts as losing it too. A parent drops a child it has not
  heard for ``child_assert_expire``.
- a router that loses its parent re-joins toward the primary core if it
  still has children (code 1, re-join) or members (code 0). When a router
  other than a root acks a code-1 re-join, the re-joiner sends a loop probe
  (code 2) up its new parent chain. A root acks the probe. The probe coming
  back to the re-joiner from one of its children means a loop, which the
  re-joiner breaks with a QUIT to its new parent and a FLUSH-TREE to its
  children.
- a join unanswered for ``pending_join_timeout`` moves to the next core in
  the core list, and is dropped after ``expire_pending_join``.
- QUIT-REQUEST is repeated every ``pending_quit_interval`` until a
  QUIT-ACK, at most ``pending_quit_retries`` times.
- a designated router left with no members and no children, which is not a
  core, quits its branch, and its parent prunes itself the same way.

Security of a re-join. RFC 1949 asks that the re-join be as secure as the
first join, but a re-join has no fresh host token. The re-joining router
therefore signs a token of the host-token form with its own key
(``host`` names the router, which must be the join's first router), and
the GKDC that answers authenticates it against a certificate of role
router or core, with the same freshness window as a host token. The ACL's
host list does not apply to routers; the trusted-router ACL decides, as for
any router on a join's path, whether the re-joiner receives a key bundle.
The join itself is signed hop by hop with a fresh router token, so a forged
or replayed re-join is rejected exactly like a forged or replayed join.

Core loss. Only the primary core creates and signs key bundles. A secondary
core that holds the keys and finds the primary unreachable (no route to it,
or with static routes its own join toward it timed out) becomes the acting
root: it answers joins and re-joins itself, handing out the current bundle,
which the primary signed. While the primary is gone the group is not
re-keyed: the current group key and KEK stay in use until the primary is
reachable again, when the acting root re-joins it with its children and
the primary's next re-key reaches every member under the KEK.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .documents import HostToken, SignedAcl
from .errors import ProtocolError
from .machine import GroupConfig, Received
from .messages import (
    AckCode,
    JoinCode,
    MessageType,
    ReasonCode,
    TreeMessage,
)
from .routing import RoutingMixin


@dataclass
class Request:
    """A join this router has taken on: for one host, or its own re-join.

    ``child`` is the router the join came from, or ``None`` when this router
    originated it (for a host on one of its LANs, or as a re-join).
    ``path`` lists the routers the join passed before reaching this one, the
    originating router first. ``router_token`` marks a re-join or loop
    probe, whose token the originating router signed in place of a host's.
    """

    host_token: HostToken
    child: str | None
    path: tuple[str, ...]
    origin: str
    target_core: str
    host_verified: bool = False
    upstream: str | None = None
    first_sent: float = 0.0
    last_sent: float = 0.0
    attempts: int = 0
    code: JoinCode = JoinCode.ACTIVE_JOIN
    router_token: bool = False
    target_since: float = 0.0

    @property
    def host(self) -> str:
        return self.host_token.host

    @property
    def own(self) -> bool:
        """Whether this is this router's own re-join or loop probe."""
        return self.child is None and self.router_token


@dataclass
class PendingQuit:
    """A QUIT-REQUEST sent to a former parent and not yet acknowledged."""

    parent: str
    attempts: int = 0
    next_at: float = 0.0


@dataclass
class GroupState:
    """One router's state in one group.

    ``child_heard`` and ``member_heard`` map each child and member to when it
    was last heard from. ``acting_root`` marks a secondary core serving as
    the root while the primary is unreachable. ``primary_lost`` records, for
    static routes, that this router's own join toward the primary timed out.
    """

    config: GroupConfig
    on_tree: bool = False
    parent: str | None = None
    children: set[str] = field(default_factory=set)
    members: set[str] = field(default_factory=set)
    requests: dict[bytes, Request] = field(default_factory=dict)
    queued: list[Request] = field(default_factory=list)
    acl: SignedAcl | None = None
    vaulted_bundle: bytes | None = field(default=None, repr=False)
    key_info: dict[str, Any] | None = None
    acting_root: bool = False
    primary_lost: bool = False
    parent_heard: float = 0.0
    next_echo: float | None = None
    child_heard: dict[str, float] = field(default_factory=dict)
    member_heard: dict[str, float] = field(default_factory=dict)
    quits: dict[str, PendingQuit] = field(default_factory=dict)
    traced: tuple[Any, ...] | None = None

    @property
    def is_root(self) -> bool:
        """Whether this router is the root: the primary, or an acting root."""
        return self.on_tree and self.parent is None


class TreeMaintenance(RoutingMixin):
    """The tree-maintenance half of the router machine (see the module doc)."""

    groups: dict[str, GroupState]

    # implemented by the router: join handling and keys

    def _handle_join(self, state: GroupState, request: Request, now: float) -> None:
        raise NotImplementedError

    def _forward(
        self, state: GroupState, request: Request, upstream: str | None, now: float
    ) -> None:
        raise NotImplementedError

    def _next_hop(self, state: GroupState, request: Request) -> str | None:
        raise NotImplementedError

    def _nack(
        self, state: GroupState, request: Request, code: ReasonCode, text: str,
        now: float,
    ) -> None:
        raise NotImplementedError

    def _drain_queue(self, state: GroupState, now: float) -> None:
        raise NotImplementedError

    def is_primary(self, state: GroupState) -> bool:
        raise NotImplementedError

    def may_hold_keys(self, state: GroupState) -> bool:
        raise NotImplementedError

    # attaching and detaching

    def _attach(self, state: GroupState, parent: str, now: float) -> None:
        state.on_tree = True
        state.parent = parent
        state.acting_root = False
        state.primary_lost = False
        state.parent_heard = now
        state.next_echo = now + self.config.timers.echo_interval
        self.trace(now, "on_tree", group=state.config.name, parent=parent)

    def _detach(self, state: GroupState) -> None:
        state.on_tree = False
        state.parent = None
        state.acting_root = False
        state.next_echo = None

    def _lose_parent(self, state: GroupState, now: float, reason: str) -> None:
        self.trace(now, "parent_lost", group=state.config.name, parent=state.parent,
                   reason=reason)
        self._detach(state)
        if state.children or state.members:
            self._start_rejoin(state, now, reason)
        else:
            self._erase_keys(state, now)

    def _leave_tree(self, state: GroupState, now: float, reason: str) -> None:
        self.trace(now, "pruned", group=state.config.name, parent=state.parent,
                   reason=reason)
        self._quit_parent(state, now)
        self._erase_keys(state, now)

    def _erase_keys(self, state: GroupState, now: float) -> None:
        # a router off the tree misses re-keys, so it must not hand keys out
        if state.vaulted_bundle is None:
            return
        state.vaulted_bundle = None
        state.key_info = None
        self.trace(now, "key_erased", group=state.config.name)

    # re-joining

    def _start_rejoin(self, state: GroupState, now: float, reason: str) -> None:
        if any(r.own and r.code != JoinCode.REJOIN_LOOP_PROBE
               for r in state.requests.values()):
            return
        group = state.config
        code = JoinCode.REJOIN if state.children else JoinCode.ACTIVE_JOIN
        request = Request(
            self.new_host_token(group, now), None, (), self.config.address,
            group.core_addresses[0], host_verified=True, code=code,
            router_token=True, target_since=now,
        )
        self.trace(now, "rejoin_started", group=group.name, reason=reason,
                   code=code.name.lower())
        self._originate_join(state, request, now)

    def _originate_join(self, state: GroupState, request: Request, now: float) -> None:
        """Send a join this router originated toward its target core.

        A core without a route, or this router itself when it may not act as
        the root, is skipped for the next one in the core list. With no core
        reachable the join stays pending, and the timer or the next route
        change tries again.
        """
        group = state.config
        for _ in group.core_addresses:
            if request.target_core == self.config.address:
                if self._can_act_as_root(state):
                    state.requests.pop(request.host_token.nonce, None)
                    self._become_acting_root(state, now)
                    if not request.own:
                        self._handle_join(state, request, now)
                    return
            else:
                upstream = self._next_hop(state, request)
                if upstream is not None:
                    self._forward(state, request, upstream, now)
                    return
            self._advance_core(state, request, now, "no-route")
        self._park(state, request, now)

    def _park(self, state: GroupState, request: Request, now: float) -> None:
        if request.attempts == 0 and request.first_sent == 0.0:
            request.first_sent = now
        request.upstream = None
        request.last_sent = now
        state.requests[request.host_token.nonce] = request
        self.trace(now, "join_parked", group=state.config.name, host=request.host)

    def _advance_core(
        self, state: GroupState, request: Request, now: float, reason: str
    ) -> None:
        cores = state.config.core_addresses
        if request.target_core == cores[0]:
            state.primary_lost = True
        index = cores.index(request.target_core) if request.target_core in cores else -1
        target = cores[(index + 1) % len(cores)]
        if target != request.target_core:
            self.trace(now, "core_fallback", group=state.config.name, host=request.host,
                       core=target, reason=reason)
        request.target_core = target
        request.target_since = now

    def _primary_unreachable(self, state: GroupState) -> bool:
        if self.link_state is not None:
            return state.config.core_addresses[0] not in self.routes
        return state.primary_lost

    def _can_act_as_root(self, state: GroupState) -> bool:
        return (
            self.config.role == "core"
            and not self.is_primary(state)
            and state.vaulted_bundle is not None
            and self.may_hold_keys(state)
            and self._primary_unreachable(state)
        )

    def _become_acting_root(self, state: GroupState, now: float) -> None:
        self._detach(state)
        state.on_tree = True
        state.acting_root = True
        self.trace(now, "acting_root", group=state.config.name)
        self._drain_queue(state, now)

    def _rejoined(
        self, state: GroupState, request: Request, code: AckCode, parent: str,
        now: float,
    ) -> None:
        """Finish this router's own re-join, probing for a loop when needed."""
        self.trace(now, "rejoined", group=state.config.name, parent=parent,
                   code=request.code.name.lower())
        probe = request.code == JoinCode.REJOIN and code != AckCode.PRIMARY_REJOIN
        if probe and state.children:
            self._send_probe(state, now)

    def _rejoin_failed(self, state: GroupState, now: float, reason: str) -> None:
        self.trace(now, "rejoin_failed", group=state.config.name, reason=reason)
        if state.is_root:
            return
        self._flush_children(state, now)
        if not state.members:
            self._erase_keys(state, now)
        self._drain_queue(state, now)

    # the loop probe

    def _send_probe(self, state: GroupState, now: float) -> None:
        group = state.config
        request = Request(
            self.new_host_token(group, now), None, (), self.config.address,
            group.core_addresses[0], host_verified=True,
            code=JoinCode.REJOIN_LOOP_PROBE, router_token=True, target_since=now,
        )
        self.trace(now, "loop_probe_sent", group=group.name, parent=state.parent)
        self._forward(state, request, state.parent, now)

    def _on_loop(self, state: GroupState, now: float, reason: str) -> None:
        """Break a loop: quit the new parent, flush the subtree, start again."""
        self.trace(now, "loop_detected", group=state.config.name, parent=state.parent,
                   reason=reason)
        for nonce, request in list(state.requests.items()):
            if request.own:
                del state.requests[nonce]
        self._quit_parent(state, now)
        self._flush_children(state, now)
        if state.members:
            self._start_rejoin(state, now, reason)
        else:
            self._erase_keys(state, now)

    # echo keepalives

    def _echo(self, state: GroupState, now: float) -> None:
        if not state.on_tree or state.parent is None:
            return
        timers = self.config.timers
        if now - state.parent_heard >= timers.echo_timeout:
            self._lose_parent(state, now, "echo-timeout")
            return
        if state.next_echo is not None and now >= state.next_echo:
            self._send_tree_message(state, MessageType.ECHO_REQUEST, state.parent, now)
            state.next_echo = now + timers.echo_interval

    def _on_echo_request(
        self, received: Received, state: GroupState, now: float
    ) -> None:
        peer = received.peer.name
        if peer not in state.children:
            raise ProtocolError(f"echo request from {peer}, which is not a child",
                                reason="not-child")
        state.child_heard[peer] = now
        self._send_tree_message(state, MessageType.ECHO_REPLY, peer, now)

    def _on_echo_reply(self, received: Received, state: GroupState, now: float) -> None:
        if received.peer.name != state.parent:
            raise ProtocolError(
                f"echo reply from {received.peer.name}, which is not the parent",
                reason="not-parent",
            )
        state.parent_heard = now

    def _send_tree_message(
        self, state: GroupState, message_type: MessageType, peer_name: str, now: float
    ) -> None:
        group = state.config
        peer = self.directory.lookup(peer_name, group.suite, now, ("router", "core"))
        header = self.header(message_type, group, origin=self.config.address)
        self.send(TreeMessage(header, self.new_token(peer_name, now)), group, peer)

    # quits

    def _quit_parent(self, state: GroupState, now: float) -> None:
        parent = state.parent
        self._detach(state)
        if parent is None:
            return
        pending = PendingQuit(parent)
        state.quits[parent] = pending
        self._send_quit(state, pending, now)

    def _quit_stray_parent(self, state: GroupState, peer: str, now: float) -> None:
        """Quit a router whose ack matches no join pending here.

        The ack made ``peer`` take this router as a child (a join this router
        gave up on, or passed on elsewhere, was answered late), so without a
        quit the peer would keep a child that never echoes until it expires.
        A duplicate ack from the parent needs nothing, and neither does one
        from a router that another pending join waits on: its ack will make
        the router the parent anyway.
        """
        if peer == state.parent or peer in state.quits:
            return
        if any(r.upstream == peer for r in state.requests.values()):
            return
        pending = PendingQuit(peer)
        state.quits[peer] = pending
        self._send_quit(state, pending, now)

    def _send_quit(self, state: GroupState, pending: PendingQuit, now: float) -> None:
        pending.attempts += 1
        pending.next_at = now + self.config.timers.pending_quit_interval
        self._send_tree_message(state, MessageType.QUIT_REQUEST, pending.parent, now)
        self.trace(now, "quit_sent", group=state.config.name, peer=pending.parent,
                   attempt=pending.attempts)

    def _retransmit_quits(self, state: GroupState, now: float) -> None:
        for parent, pending in list(state.quits.items()):
            if now < pending.next_at:
                continue
            if pending.attempts >= self.config.timers.pending_quit_retries:
                del state.quits[parent]
                self.trace(now, "quit_abandoned", group=state.config.name, peer=parent)
                continue
            self._send_quit(state, pending, now)

    def _on_quit_request(
        self, received: Received, state: GroupState, now: float
    ) -> None:
        peer = received.peer.name
        # a repeated quit is acknowledged again, since the first ack may be lost
        if peer in state.children:
            state.children.discard(peer)
            state.child_heard.pop(peer, None)
            self.trace(now, "child_quit", group=state.config.name, peer=peer)
        self._send_tree_message(state, MessageType.QUIT_ACK, peer, now)
        self._prune_if_idle(state, now)

    def _on_quit_ack(self, received: Received, state: GroupState, now: float) -> None:
        peer = received.peer.name
        if state.quits.pop(peer, None) is None:
            raise ProtocolError(f"quit ack from {peer}, which was sent no quit",
                                reason="unexpected-answer")
        self.trace(now, "quit_acked", group=state.config.name, peer=peer)

    def _prune_if_idle(self, state: GroupState, now: float) -> None:
        """Quit the branch once nothing below this router needs it.

        Cores stay on the tree: the primary is its root, and a secondary
        that joined keeps the ACL and keys ready to serve if the primary
        fails.
        """
        if not state.on_tree or self.config.role == "core":
            return
        if state.children or state.members or state.requests or state.queued:
            return
        self._leave_tree(state, now, "no-members")

    # flushes

    def _flush_children(self, state: GroupState, now: float) -> None:
        for child in sorted(state.children):
            self._send_tree_message(state, MessageType.FLUSH_TREE, child, now)
            self.trace(now, "flush_sent", group=state.config.name, peer=child)
        state.children.clear()
        state.child_heard.clear()

    def _on_flush(self, received: Received, state: GroupState, now: float) -> None:
        peer = received.peer.name
        if not state.on_tree or peer != state.parent:
            raise ProtocolError(f"flush from {peer}, which is not the parent",
                                reason="not-parent")
        self.trace(now, "flush_received", group=state.config.name, peer=peer)
        self._detach(state)
        self._flush_children(state, now)
        if state.members:
            self._start_rejoin(state, now, "flushed")
        else:
            self._erase_keys(state, now)

    # expiry of silent children and members

    def _expire_children(self, state: GroupState, now: float) -> None:
        limit = self.config.timers.child_assert_expire
        for child, heard in list(state.child_heard.items()):
            if now - heard >= limit:
                state.children.discard(child)
                del state.child_heard[child]
                self.trace(now, "child_expired", group=state.config.name, peer=child)
                self._prune_if_idle(state, now)

    def _expire_members(self, state: GroupState, now: float) -> None:
        limit = self.config.timers.membership_timeout
        if limit is None:
            return
        for host, heard in list(state.member_heard.items()):
            if now - heard >= limit:
                state.members.discard(host)
                del state.member_heard[host]
                self.trace(now, "member_expired", group=state.config.name, host=host)
                self._prune_if_idle(state, now)

    # reacting to new routes

    def on_adjacency_lost(self, name: str, now: float) -> None:
        # the routing table no longer reaches the parent: the branch is broken
        for state in self.groups.values():
            if state.on_tree and state.parent == name:
                self._lose_parent(state, now, "route-change")

    def on_routes_changed(self, now: float) -> None:
        assert self.link_state is not None
        for state in self.groups.values():
            parent = state.parent
            lost = parent is not None and not self.link_state.is_adjacent(parent)
            if state.on_tree and lost:
                self._lose_parent(state, now, "route-change")
            if state.acting_root and not self._primary_unreachable(state):
                self._start_rejoin(state, now, "primary-reachable")
            self._resend_moved(state, now)

    def _resend_moved(self, state: GroupState, now: float) -> None:
        """Send again at once the joins whose next hop is gone or changed."""
        for request in list(state.requests.values()):
            if state.on_tree and not request.own:
                continue
            if request.code == JoinCode.REJOIN_LOOP_PROBE:
                continue
            if request.upstream is not None and request.upstream == self._next_hop(
                state, request
            ):
                continue
            self._resend(state, request, now)

    # timers

    def tree_timer(self) -> float | None:
        timers = self.config.timers
        times: list[float] = []
        for state in self.groups.values():
            times += [r.last_sent + timers.pending_join_interval
                      for r in state.requests.values()]
            if state.on_tree and state.parent is not None:
                times.append(state.parent_heard + timers.echo_timeout)
                if state.next_echo is not None:
                    times.append(state.next_echo)
            times += [
                t + timers.child_assert_expire for t in state.child_heard.values()
            ]
            if timers.membership_timeout is not None:
                times += [t + timers.membership_timeout
                          for t in state.member_heard.values()]
            times += [q.next_at for q in state.quits.values()]
        return min(times, default=None)

    def handle_tree_timer(self, now: float) -> None:
        for state in self.groups.values():
            self._retransmit_joins(state, now)
            self._echo(state, now)
            self._expire_children(state, now)
            self._expire_members(state, now)
            self._retransmit_quits(state, now)

    def _retransmit_joins(self, state: GroupState, now: float) -> None:
        timers = self.config.timers
        for request in list(state.requests.values()):
            if now < request.last_sent + timers.pending_join_interval:
                continue
            if state.requests.get(request.host_token.nonce) is not request:
                continue  # an earlier step of this loop answered or replaced it
            if now - request.first_sent >= timers.expire_pending_join:
                self._expire_request(state, request, now)
                continue
            probe = request.code == JoinCode.REJOIN_LOOP_PROBE
            waited = now - request.target_since >= timers.pending_join_timeout
            if request.child is None and not probe and waited:
                self._advance_core(state, request, now, "timeout")
            self._resend(state, request, now)
        if not state.on_tree and not state.requests and state.queued:
            self._drain_queue(state, now)

    def _resend(self, state: GroupState, request: Request, now: float) -> None:
        if request.own:
            self._refresh_token(state, request, now)
        if request.code == JoinCode.REJOIN_LOOP_PROBE or (
            state.on_tree and not request.own
        ):
            # probes and joins from on-tree routers go up the tree
            if state.on_tree and state.parent is not None:
                self._forward(state, request, state.parent, now)
                return
            state.requests.pop(request.host_token.nonce, None)
            return
        if request.child is None:
            self._originate_join(state, request, now)
            return
        upstream = self._next_hop(state, request)
        if upstream is None:
            del state.requests[request.host_token.nonce]
            self._nack(state, request, ReasonCode.NO_ROUTE,
                       f"{self.name} has no route toward the core", now)
            return
        self._forward(state, request, upstream, now)

    def _refresh_token(self, state: GroupState, request: Request, now: float) -> None:
        """Sign a fresh token for an own join older than half the token window."""
        age_ms = int(now * 1000) - request.host_token.timestamp_ms
        if age_ms * 2 < self.replay.window_ms:
            return
        state.requests.pop(request.host_token.nonce, None)
        request.host_token = self.new_host_token(state.config, now)
        state.requests[request.host_token.nonce] = request

    def _expire_request(self, state: GroupState, request: Request, now: float) -> None:
        del state.requests[request.host_token.nonce]
        group = state.config.name
        if request.code == JoinCode.REJOIN_LOOP_PROBE and request.own:
            self.trace(now, "loop_probe_expired", group=group)
            self._on_loop(state, now, "probe-unanswered")
        elif request.own:
            self.trace(now, "join_expired", group=group, host=request.host)
            self._rejoin_failed(state, now, "expired")
        else:
            self.trace(now, "join_expired", group=group, host=request.host)

    # the trace of tree state, read by the runner's tree invariant

    def trace_tree_changes(self, now: float) -> None:
        for state in self.groups.values():
            snapshot = (
                state.on_tree, state.parent, tuple(sorted(state.children)),
                tuple(sorted(state.members)), state.acting_root,
                (state.key_info or {}).get("epoch"),
            )
            if snapshot == state.traced:
                continue
            state.traced = snapshot
            self.trace(
                now, "tree_state", group=state.config.name, on_tree=state.on_tree,
                parent=state.parent, children=list(snapshot[2]),
                members=list(snapshot[3]), root=state.is_root,
                acting_root=state.acting_root, epoch=snapshot[5],
            )
