"""The router and core state machine: secure joins and distributed GKDCs.

This follows RFC 1949 section 6.2 and its Figure 1. A designated router (DR)
authenticates a host's signed token before it forms a join; joins are signed
hop by hop and unicast toward the target core; the first GKDC on the way (the
primary core, or an on-tree router that already holds the keys) checks the
host against the ACL and answers with a join-ack that carries the group
access package; each router on the way back verifies it, keeps its own key
bundle enciphered under a local key, and seals a fresh one to the next hop.

Keeping the tree alive after it is built (keepalives, re-joins, quits and
pruning) is in node/tree.py, and finding routes in node/routing.py. Group
data and packet handles are in node/dataplane.py, and re-keying, key trees
and sender keys in node/keyserver.py.
"""

from __future__ import annotations

import socket
from typing import Any

from .bundles import key_fields, open_bundle, seal_bundle, sign_bundle
from .codec import Reader
from .crypto import LocalVault
from .documents import GroupAcl, HostToken, KeyBundle, SignedAcl, SignedBundle
from .errors import AuthenticationFailed, MalformedMessage, ProtocolError
from .keyserver import KeyServer
from .machine import ROUTER_ROLES, GroupConfig, Received
from .messages import (
    ROUTING_TYPES, AckCode, AclAccept, AclUpload, JoinAck, JoinCode, JoinNack,
    JoinRequest, KeyDelivery, MembershipReport, MessageType, Path, Reason,
    ReasonCode, ReportCode, SealedBundle,
)
from .tree import GroupState, Request, TreeMaintenance

ACL_SEAL_LABEL = b"smkd acl seal\0"


def acl_seal_info(group_address: str) -> bytes:
    return ACL_SEAL_LABEL + socket.inet_aton(group_address)


class Router(KeyServer, TreeMaintenance):
    """A CBT router (role ``router``) or core (role ``core``)."""

    def __init__(self, config, identity, directory, randbytes):
        super().__init__(config, identity, directory, randbytes)
        self.vault = LocalVault(randbytes(LocalVault.KEY_SIZE), randbytes)
        self.groups = {group.address: GroupState(group) for group in config.groups}
        for state in self.groups.values():
            # the primary core is the root of the tree from the start
            state.on_tree = self.is_primary(state)
        self.init_routing()
        self.init_keying()

    def start(self, now: float) -> None:
        super().start(now)
        self.start_routing(now)
        self.trace_tree_changes(now)

    def receive(self, datagram: bytes, source: str, now: float) -> None:
        super().receive(datagram, source, now)
        self.trace_tree_changes(now)

    # roles and GKDC status

    def is_primary(self, state: GroupState) -> bool:
        return state.config.primary_core == self.name

    def may_hold_keys(self, state: GroupState) -> bool:
        if state.acl is None:
            return False
        if self.is_primary(state):
            # the primary core creates the keys, so it serves joins under
            # every policy, the central KDC's included
            return True
        return state.acl.acl.may_hold_keys(self.name, self.config.role)

    def is_gkdc(self, state: GroupState) -> bool:
        """Whether this router answers joins itself: on the tree, with the keys.

        A router off the tree would miss re-keys, so it never answers.
        """
        return (
            state.on_tree and state.vaulted_bundle is not None
            and self.may_hold_keys(state)
        )

    def holds_keys(self, group_name: str) -> bool:
        state = self._state_by_name(group_name)
        return state is not None and state.vaulted_bundle is not None

    def _state_by_name(self, group_name: str) -> GroupState | None:
        for state in self.groups.values():
            if state.config.name == group_name:
                return state
        return None

    def status(self) -> dict[str, Any]:
        groups = {}
        for state in self.groups.values():
            groups[state.config.name] = {
                "on_tree": state.on_tree,
                "parent": state.parent,
                "root": state.is_root,
                "acting_root": state.acting_root,
                "children": sorted(state.children),
                "members": sorted(state.members),
                "gkdc": self.is_gkdc(state),
                "acl_serial": state.acl.acl.serial if state.acl else None,
                "pending": len(state.requests),
                "queued": len(state.queued),
                "key": state.key_info,
            }
        return {
            "name": self.name, "role": self.config.role, "groups": groups,
            "routing": self.routing_status(),
        }

    # dispatch

    def dispatch(self, received: Received, now: float) -> None:
        message_type = received.message.header.type
        if message_type in ROUTING_TYPES:
            self.on_routing_message(received, now)
            return
        handlers = {
            MessageType.MEMBERSHIP_REPORT: self._on_report,
            MessageType.JOIN_REQUEST: self._on_join_request,
            MessageType.JOIN_ACK: self._on_join_ack,
            MessageType.JOIN_NACK: self._on_join_nack,
            MessageType.ACL_UPLOAD: self._on_acl_upload,
            MessageType.ECHO_REQUEST: self._on_echo_request,
            MessageType.ECHO_REPLY: self._on_echo_reply,
            MessageType.QUIT_REQUEST: self._on_quit_request,
            MessageType.QUIT_ACK: self._on_quit_ack,
            MessageType.FLUSH_TREE: self._on_flush,
            MessageType.REKEY: self._on_rekey,
            MessageType.SENDER_KEY_REQUEST: self._on_sender_request,
        }
        handler = handlers.get(message_type)
        if handler is None or received.group is None:
            super().dispatch(received, now)
            return
        handler(received, self.groups[received.group.address], now)

    # a host's secure membership report (appendix B)

    def _on_report(self, received: Received, state: GroupState, now: float) -> None:
        report = received.message
        assert isinstance(report, MembershipReport)
        token = report.host_token
        if token.host != received.peer.name:
            raise AuthenticationFailed(
                f"report from {received.peer.name} carries {token.host}'s token",
                reason="token-mismatch",
            )
        try:
            self.verify_host_token(token, state.config, now, replay=True)
        except AuthenticationFailed as error:
            self.trace(now, "token_rejected", peer=token.host, kind="host",
                       reason=error.reason, detail=error.detail)
            raise
        code = ReportCode(report.header.code)
        if code is ReportCode.REFRESH and self._refresh_member(state, token.host, now):
            return
        self.trace(now, "report_received", group=state.config.name, host=token.host,
                   code=code.name.lower())
        self.trace(now, "token_verified", kind="host", host=token.host)

        if code is ReportCode.LEAVE:
            state.members.discard(token.host)
            state.member_heard.pop(token.host, None)
            self.trace(now, "member_left", group=state.config.name, host=token.host)
            self._prune_if_idle(state, now)
            return
        pending = self._pending_local(state, token.host)
        if pending is not None:
            age_ms = token.timestamp_ms - pending.host_token.timestamp_ms
            if age_ms < self.replay.window_ms // 2:
                # the host repeats its report until keys arrive; one join suffices
                self.trace(now, "report_duplicate", group=state.config.name,
                           host=token.host)
                return
            # the pending join's host token will soon be too old for a GKDC
            # to accept, so start over with the fresh one
            self._forget(state, pending)
            self.trace(now, "join_renewed", group=state.config.name, host=token.host)
        request = Request(
            token, None, (), self.config.address,
            state.config.core_addresses[0], host_verified=True, target_since=now,
        )
        self._handle_join(state, request, now)

    def _pending_local(self, state: GroupState, host: str) -> Request | None:
        """Return the join in progress for ``host`` on this router's own LAN."""
        for request in [*state.requests.values(), *state.queued]:
            if request.child is None and request.host == host:
                return request
        return None

    def _forget(self, state: GroupState, request: Request) -> None:
        if state.requests.get(request.host_token.nonce) is request:
            del state.requests[request.host_token.nonce]
        elif request in state.queued:
            state.queued.remove(request)

    def _refresh_member(self, state: GroupState, host: str, now: float) -> bool:
        """Note a known member's refresh; return False if it needs a join instead.

        A refresh from a host this router does not know (it restarted, or the
        member expired) or arriving while the router is off the tree with
        no join under way is handled as a join, so the member is served again.
        """
        if host not in state.members:
            return False
        if not state.on_tree and not state.requests:
            return False
        state.member_heard[host] = now
        return True

    # join requests

    def _on_join_request(self, received: Received, state: GroupState, now: float) -> None:
        join = received.message
        assert isinstance(join, JoinRequest)
        path = join.path.routers
        if not path or path[-1] != received.peer.name:
            raise MalformedMessage("join path does not end with its sender")
        code = JoinCode(join.header.code)
        router_token = join.host_token.host == path[0]
        if code is not JoinCode.ACTIVE_JOIN and not router_token:
            raise AuthenticationFailed(
                f"{code.name} carries {join.host_token.host}'s token, not that of "
                f"its first router {path[0]}",
                reason="token-mismatch",
            )
        if code is JoinCode.REJOIN_LOOP_PROBE and path[0] == self.name:
            self._on_returned_probe(state, join.host_token, now)
            return
        if self.name in path:
            raise ProtocolError("join path already contains this router", reason="loop")
        self.trace(now, "join_received", group=state.config.name,
                   peer=received.peer.name, host=join.host_token.host,
                   code=code.name.lower())
        request = Request(
            join.host_token, received.peer.name, path,
            join.header.origin, join.header.target_core, code=code,
            router_token=router_token, target_since=now,
        )
        if code is JoinCode.REJOIN_LOOP_PROBE:
            self._on_probe(state, request, now)
        else:
            self._handle_join(state, request, now)

    def _on_probe(self, state: GroupState, request: Request, now: float) -> None:
        """Pass a loop probe up the tree; a root answers it (CBTv1 join code 2)."""
        if state.is_root:
            self._verify_router_token(state, request, now)
            self._send_probe_ack(state, request, state.acl, now)
        elif state.on_tree:
            self._forward(state, request, state.parent, now)
        else:
            raise ProtocolError("loop probe reached a router off the tree",
                                reason="off-tree")

    def _on_returned_probe(
        self, state: GroupState, token: HostToken, now: float
    ) -> None:
        request = state.requests.get(token.nonce)
        if request is None or not request.own or request.host_token != token:
            raise ProtocolError("a loop probe of ours that is no longer pending",
                                reason="unexpected-answer")
        # CBTv1: the probe came back on a child interface, so the new parent
        # lies in this router's own subtree
        self._on_loop(state, now, "probe-returned")

    def _verify_router_token(
        self, state: GroupState, request: Request, now: float
    ) -> None:
        """Authenticate the token a re-joining router signed in place of a host's."""
        try:
            self.verify_host_token(request.host_token, state.config, now,
                                   replay=False, roles=ROUTER_ROLES)
        except AuthenticationFailed as error:
            self.trace(now, "token_rejected", peer=request.host, kind="router",
                       reason=error.reason, detail=error.detail)
            raise
        self.trace(now, "token_verified", kind="router", host=request.host)

    def _handle_join(self, state: GroupState, request: Request, now: float) -> None:
        if self.is_gkdc(state):
            self._answer(state, request, now)
        elif self.is_primary(state):
            self._nack(state, request, ReasonCode.NO_ACL,
                       "the primary core has no ACL for the group yet", now)
        elif state.on_tree:
            # an on-tree router that may not hold keys passes the join upward
            # (strict mode, an untrusted router, a core without keys yet)
            self._forward(state, request, state.parent, now)
        elif self._can_act_as_root(state):
            self._become_acting_root(state, now)
            self._answer(state, request, now)
        elif state.requests and request.host_token.nonce not in state.requests:
            # CBT: joins that arrive while this router waits for its own ack
            # are answered once that ack arrives
            state.queued.append(request)
            self.trace(now, "join_queued", group=state.config.name, host=request.host)
        elif request.child is None:
            self._originate_join(state, request, now)
        else:
            self._forward(state, request, self._next_hop(state, request), now)

    def _next_hop(self, state: GroupState, request: Request) -> str | None:
        target = request.target_core
        primary = state.config.core_addresses[0]
        secondary = self.config.role == "core" and not self.is_primary(state)
        if secondary and primary in self.routes:
            # RFC 1949 changes CBT here: a secondary core forwards the join
            # to the primary instead of acking it and re-joining, while the
            # primary is reachable
            target = primary
        hop_address = self.routes.get(target)
        if hop_address is None:
            return None
        return self.config.neighbours.get(hop_address)

    def _forward(
        self, state: GroupState, request: Request, upstream: str | None, now: float
    ) -> None:
        group = state.config
        if upstream is None:
            state.requests.pop(request.host_token.nonce, None)
            self._nack(state, request, ReasonCode.NO_ROUTE,
                       f"{self.name} has no route toward the core", now)
            return
        peer = self.lookup(upstream, group, now, ROUTER_ROLES)
        if request.attempts == 0 and request.first_sent == 0.0:
            request.first_sent = now
        request.upstream = upstream
        request.last_sent = now
        request.attempts += 1
        state.requests[request.host_token.nonce] = request

        header = self.header(MessageType.JOIN_REQUEST, group, origin=request.origin,
                             target_core=request.target_core, code=request.code)
        join = JoinRequest(header, self.new_token(upstream, now), request.host_token,
                           Path(request.path + (self.name,)))
        self.send(join, group, peer)
        self.trace(now, "join_sent", group=group.name, peer=upstream,
                   host=request.host, attempt=request.attempts)

    # answering as a GKDC

    def _answer(self, state: GroupState, request: Request, now: float) -> None:
        group = state.config
        if request.router_token:
            self._answer_rejoin(state, request, now)
            return
        if not request.host_verified:
            # NOTE 2 of section 6.2: a GKDC that is also the host's DR has
            # already authenticated the token, so it does so only once
            try:
                self.verify_host_token(request.host_token, group, now, replay=False)
            except AuthenticationFailed as error:
                self.trace(now, "token_rejected", peer=request.host, kind="host",
                           reason=error.reason, detail=error.detail)
                self._nack(state, request, ReasonCode.AUTHENTICATION_FAILED,
                           error.reason, now)
                return
            self.trace(now, "token_verified", kind="host", host=request.host)

        assert state.acl is not None
        acl = state.acl.acl
        if not acl.not_before <= now <= acl.not_after:
            self.trace(now, "denied", group=group.name, host=request.host,
                       reason="expired-acl")
            self._nack(state, request, ReasonCode.NO_ACL,
                       f"ACL serial {acl.serial} is outside its validity", now)
            return
        if not acl.admits(request.host):
            self.trace(now, "denied", group=group.name, host=request.host,
                       reason="excluded" if acl.mode.name == "EXCLUDE" else "not-on-acl")
            self._nack(state, request, ReasonCode.NOT_ON_ACL,
                       f"{request.host} is not admitted by ACL serial {acl.serial}", now)
            return

        signed = self._unvault(state)
        host = self.lookup(request.host, group, now, ("host",))
        host_bundle = seal_bundle(signed, host, group)
        host_path = self.branch_path(state, host)
        if request.child is None:
            self._deliver(state, request, host_bundle, now, host_path)
            return
        hop_bundle = self._seal_for_next_hop(state, signed, request, now)
        self._send_ack(state, request, host_bundle, hop_bundle, now,
                       host_path=host_path,
                       hop_path=self.path_for_bundle(state, hop_bundle, now))
        self.trace(now, "served", group=group.name, host=request.host,
                   peer=request.child)

    def _answer_rejoin(self, state: GroupState, request: Request, now: float) -> None:
        """Answer a router's re-join: no host bundle, keys only in the hop bundle.

        The ACL's host list does not apply to a router; the trusted-router
        ACL, through the hop bundle, decides whether it gets keys.
        """
        assert request.child is not None
        try:
            self._verify_router_token(state, request, now)
        except AuthenticationFailed as error:
            self._nack(state, request, ReasonCode.AUTHENTICATION_FAILED,
                       error.reason, now)
            return
        code = AckCode.NORMAL
        if state.is_root and request.code is JoinCode.REJOIN:
            code = AckCode.PRIMARY_REJOIN
        hop_bundle = self._seal_for_next_hop(state, self._unvault(state), request, now)
        self._send_ack(state, request, None, hop_bundle, now, code,
                       hop_path=self.path_for_bundle(state, hop_bundle, now))
        self.trace(now, "served", group=state.config.name, host=request.host,
                   peer=request.child, kind="rejoin")

    def _send_probe_ack(
        self, state: GroupState, request: Request, acl: SignedAcl | None, now: float
    ) -> None:
        group = state.config
        assert request.child is not None
        if acl is None:
            raise ProtocolError("a root without an ACL cannot answer a loop probe",
                                reason="no-acl")
        child = self.lookup(request.child, group, now, ROUTER_ROLES)
        header = self.header(MessageType.JOIN_ACK, group, origin=request.origin,
                             target_core=request.target_core,
                             code=AckCode.PRIMARY_LOOP_PROBE)
        ack = JoinAck(header, self.new_token(child.name, now), request.host_token, acl)
        self.send(ack, group, child)
        self.trace(now, "loop_probe_answered", group=group.name, peer=child.name,
                   host=request.host)

    def _seal_for_next_hop(
        self, state: GroupState, signed: SignedBundle, request: Request, now: float
    ) -> SealedBundle | None:
        """Seal keys to the nearest router below that may become a GKDC.

        That is the next hop itself unless the trusted-router ACL or strict
        mode excludes it; an excluded router then relays a bundle it cannot
        open to the first eligible router below it.
        """
        assert state.acl is not None
        for name in reversed(request.path):
            peer = self.lookup(name, state.config, now, ROUTER_ROLES)
            if state.acl.acl.may_hold_keys(name, peer.role):
                return seal_bundle(signed, peer, state.config)
        return None

    def _send_ack(
        self,
        state: GroupState,
        request: Request,
        host_bundle: SealedBundle | None,
        hop_bundle: SealedBundle | None,
        now: float,
        code: AckCode = AckCode.NORMAL,
        host_path: SealedBundle | None = None,
        hop_path: SealedBundle | None = None,
    ) -> None:
        group = state.config
        assert request.child is not None and state.acl is not None
        child = self.lookup(request.child, group, now, ROUTER_ROLES)
        state.children.add(request.child)
        state.child_heard[request.child] = now
        header = self.header(MessageType.JOIN_ACK, group, origin=request.origin,
                             target_core=request.target_core, code=code)
        ack = JoinAck(header, self.new_token(child.name, now), request.host_token,
                      state.acl, host_bundle, hop_bundle,
                      self.issue_handle(state, child), host_path, hop_path)
        self.send(ack, group, child)
        self.trace(now, "ack_sent", group=group.name, peer=child.name,
                   host=request.host,
                   hop_bundle_for=hop_bundle.recipient if hop_bundle else None)

    def _deliver(
        self, state: GroupState, request: Request, host_bundle: SealedBundle,
        now: float, host_path: SealedBundle | None = None,
    ) -> None:
        group = state.config
        assert state.acl is not None
        host = self.lookup(request.host, group, now, ("host",))
        header = self.header(MessageType.KEY_DELIVERY, group, origin=self.config.address)
        delivery = KeyDelivery(header, self.new_token(host.name, now),
                               request.host_token, state.acl, host_bundle,
                               self.issue_handle(state, host), host_path)
        self.send(delivery, group, host)
        state.members.add(host.name)
        state.member_heard[host.name] = now
        self.trace(now, "keys_delivered", group=group.name, host=host.name)

    def _nack(
        self, state: GroupState, request: Request, code: ReasonCode, text: str,
        now: float,
    ) -> None:
        group = state.config
        if request.child is None:
            # the DR is the end of the line: the host gets nothing
            self.trace(now, "join_denied", group=group.name, host=request.host,
                       reason=code.name.lower().replace("_", "-"))
            return
        child = self.lookup(request.child, group, now, ROUTER_ROLES)
        header = self.header(MessageType.JOIN_NACK, group, origin=request.origin,
                             target_core=request.target_core)
        nack = JoinNack(header, self.new_token(child.name, now), request.host_token,
                        Reason(code, text))
        self.send(nack, group, child)
        self.trace(now, "nack_sent", group=group.name, peer=child.name,
                   host=request.host, reason=code.name.lower().replace("_", "-"))

    # acks and nacks coming back down

    def _pending_for(self, state: GroupState, token: HostToken, peer: str) -> Request:
        request = state.requests.get(token.nonce)
        if request is None or request.upstream != peer:
            raise ProtocolError(
                f"no join for {token.host} is pending toward {peer}",
                reason="unexpected-answer",
            )
        if request.host_token != token:
            raise AuthenticationFailed("answer carries another host token",
                                       reason="token-mismatch")
        return request

    def _on_join_ack(self, received: Received, state: GroupState, now: float) -> None:
        ack = received.message
        assert isinstance(ack, JoinAck)
        group = state.config
        peer = received.peer.name
        try:
            request = self._pending_for(state, ack.host_token, peer)
        except ProtocolError as error:
            if error.reason == "unexpected-answer":
                self._quit_stray_parent(state, peer, now)
            raise
        acl = self._check_acl_update(state, ack.acl, now)
        code = AckCode(ack.header.code)
        if (request.code is JoinCode.REJOIN_LOOP_PROBE) != (
            code is AckCode.PRIMARY_LOOP_PROBE
        ):
            raise ProtocolError(f"{code.name} ack answers a {request.code.name} join",
                                reason="unexpected-answer")
        if request.code is JoinCode.REJOIN_LOOP_PROBE:
            self._on_probe_ack(state, request, ack, now)
            return
        if ack.host_bundle is None and not request.router_token:
            raise ProtocolError("ack of a host's join without the host's bundle",
                                reason="missing-bundle")

        # open our own bundle before changing any state, so a bad ack
        # leaves this router exactly as it was
        opened = None
        hop = ack.hop_bundle
        if hop is not None and hop.recipient not in (self.name, *request.path):
            # a hop bundle is for this router or one below it on the join's path
            raise AuthenticationFailed(
                f"hop bundle sealed to {hop.recipient}, who is not on this join's path",
                reason="bad-seal",
            )
        if hop is not None and hop.recipient == self.name:
            if not acl.may_hold_keys(self.name, self.config.role):
                raise ProtocolError("bundle sealed to a router the ACL excludes",
                                    reason="not-eligible")
            opened = open_bundle(hop, self.identity, self.directory, group, now)
        handle = self.open_handle(state, ack.handle, peer) if ack.handle else None

        del state.requests[ack.host_token.nonce]
        state.acl = ack.acl
        self.trace(now, "ack_received", group=group.name, peer=peer,
                   host=request.host)
        if not state.on_tree or (request.own and state.acting_root):
            self._attach(state, peer, now)
        elif peer == state.parent:
            state.parent_heard = now
        if handle is not None:
            self.accept_handle(state, peer, handle)
        if opened is not None:
            self._store_bundle(state, opened.signed, opened.bundle, now)
            if ack.hop_path is not None and ack.hop_path.recipient == self.name:
                self.accept_path(state, ack.hop_path, now)
        if request.own:
            self._rejoined(state, request, code, peer, now)
        else:
            self._pass_down(state, request, ack, code, now)
        self._drain_queue(state, now)

    def _on_probe_ack(
        self, state: GroupState, request: Request, ack: JoinAck, now: float
    ) -> None:
        del state.requests[ack.host_token.nonce]
        if request.own:
            self.trace(now, "loop_probe_ok", group=state.config.name)
            return
        self._send_probe_ack(state, request, ack.acl, now)

    def _check_acl_update(self, state: GroupState, signed: SignedAcl, now: float) -> GroupAcl:
        acl = self.verify_acl(signed, state.config, now)
        if state.acl is not None and acl.serial < state.acl.acl.serial:
            raise ProtocolError(
                f"ACL serial {acl.serial} is older than {state.acl.acl.serial}",
                reason="older-acl",
            )
        return acl

    def _pass_down(
        self, state: GroupState, request: Request, ack: JoinAck, code: AckCode,
        now: float,
    ) -> None:
        if request.child is None:
            assert ack.host_bundle is not None
            self._deliver(state, request, ack.host_bundle, now, ack.host_path)
            return
        if self.is_gkdc(state):
            hop_out = self._seal_for_next_hop(state, self._unvault(state), request, now)
            hop_path = self.path_for_bundle(state, hop_out, now)
        elif ack.hop_bundle is not None and ack.hop_bundle.recipient != self.name:
            hop_out, hop_path = ack.hop_bundle, ack.hop_path
        else:
            hop_out, hop_path = None, None
        self._send_ack(state, request, ack.host_bundle, hop_out, now, code,
                       host_path=ack.host_path, hop_path=hop_path)

    def _on_join_nack(self, received: Received, state: GroupState, now: float) -> None:
        nack = received.message
        assert isinstance(nack, JoinNack)
        request = self._pending_for(state, nack.host_token, received.peer.name)
        del state.requests[nack.host_token.nonce]
        reason = nack.reason.code
        self.trace(now, "nack_received", group=state.config.name,
                   peer=received.peer.name, host=request.host,
                   reason=reason.name.lower().replace("_", "-"))
        if request.child is None and reason is ReasonCode.NO_ROUTE and (
            request.code is not JoinCode.REJOIN_LOOP_PROBE
        ):
            # a core that cannot be reached: try the next one in the list
            self._advance_core(state, request, now, "no-route")
            self._originate_join(state, request, now)
            return
        if request.own:
            if request.code is JoinCode.REJOIN_LOOP_PROBE:
                self._on_loop(state, now, "probe-refused")
            else:
                self._rejoin_failed(state, now, reason.name.lower().replace("_", "-"))
            return
        self._nack(state, request, reason, nack.reason.text, now)
        if not state.on_tree and not state.requests:
            self._drain_queue(state, now)

    def _drain_queue(self, state: GroupState, now: float) -> None:
        queued, state.queued = state.queued, []
        for request in queued:
            self._handle_join(state, request, now)

    # keys

    def _store_bundle(
        self, state: GroupState, signed: SignedBundle, bundle: KeyBundle, now: float
    ) -> None:
        was_gkdc = state.vaulted_bundle is not None
        if was_gkdc and bundle.epoch < self.current_bundle(state).epoch:
            # a parent that missed a re-key hands out the epoch before it
            self.trace(now, "older_keys_ignored", group=state.config.name,
                       epoch=bundle.epoch)
            return
        state.vaulted_bundle = self.vault.seal(signed.encode(), state.config.address)
        state.key_info = {"epoch": bundle.epoch, "spi": bundle.spi}
        event = "keys_updated" if was_gkdc else "became_gkdc"
        self.trace(now, event, group=state.config.name, **key_fields(bundle))
        self.on_bundle_stored(state, bundle, now)

    def _unvault(self, state: GroupState) -> SignedBundle:
        assert state.vaulted_bundle is not None
        return SignedBundle.decode(self.vault.open(state.vaulted_bundle, state.config.address))

    # the initiator's ACL, at the primary core

    def _on_acl_upload(self, received: Received, state: GroupState, now: float) -> None:
        upload = received.message
        assert isinstance(upload, AclUpload)
        group = state.config
        if not self.is_primary(state):
            raise ProtocolError(f"{self.name} is not the primary core of {group.name}",
                                reason="not-primary")
        signed = upload.acl or self._open_sealed_acl(upload, group)
        try:
            acl = self.verify_acl(signed, group, now)
            if acl.suite != group.suite_code:
                raise AuthenticationFailed("ACL names another suite", reason="invalid-acl")
        except AuthenticationFailed as error:
            self._answer_upload(received, ReasonCode.INVALID_ACL, error.reason, now)
            self.trace(now, "acl_rejected", group=group.name, reason=error.reason)
            return

        current = state.acl
        if current is not None and acl.serial <= current.acl.serial:
            if current.body == signed.body:
                # a retransmitted upload of the ACL already installed
                self._answer_upload(received, ReasonCode.ACCEPTED, "", now)
                return
            self._answer_upload(received, ReasonCode.OLDER_ACL,
                                f"serial {acl.serial} <= {current.acl.serial}", now)
            self.trace(now, "acl_rejected", group=group.name, reason="older-acl",
                       serial=acl.serial)
            return

        previous = current.acl if current is not None else None
        state.acl = signed
        self.trace(now, "acl_installed", group=group.name, serial=acl.serial,
                   mode=acl.mode.name.lower(), strict=acl.strict)
        self._answer_upload(received, ReasonCode.ACCEPTED, "", now)
        if state.vaulted_bundle is None:
            self._create_keys(state, acl, now)
        else:
            self.on_acl_replaced(state, previous, now)

    def _open_sealed_acl(self, upload: AclUpload, group: GroupConfig) -> SignedAcl:
        assert upload.sealed_acl is not None
        plaintext = self.identity.open(group.suite, upload.sealed_acl.sealed,
                                       acl_seal_info(group.address))
        reader = Reader(plaintext)
        signed = SignedAcl.decode(reader)
        reader.expect_end("the sealed ACL")
        return signed

    def _create_keys(self, state: GroupState, acl: GroupAcl, now: float) -> None:
        """Create the group key, KEK and SA parameters (section 6.1)."""
        group = state.config
        spi = 0
        while spi == 0:
            spi = int.from_bytes(self.randbytes(4), "big")
        bundle = KeyBundle(
            group=group.address,
            epoch=1,
            spi=spi,
            suite=group.suite_code,
            not_after=int(now) + acl.key_lifetime,
            group_key=self.randbytes(16),
            kek=self.randbytes(16),
        )
        signed = sign_bundle(bundle, self.identity, group)
        self.trace(now, "keys_created", group=group.name, **key_fields(bundle))
        self._store_bundle(state, signed, bundle, now)

    def _answer_upload(
        self, received: Received, code: ReasonCode, text: str, now: float
    ) -> None:
        group = received.group
        peer = received.peer
        header = self.header(MessageType.ACL_ACCEPT, group, origin=self.config.address)
        answer = AclAccept(header, self.new_token(peer.name, now), Reason(code, text))
        self.send(answer, group, peer)

    # timers: routing, then the tree's (node/tree.py)

    def next_timer(self) -> float | None:
        times = [self.routing_timer(), self.tree_timer(), self.keying_timer()]
        return min((t for t in times if t is not None), default=None)

    def handle_timer(self, now: float) -> None:
        self.handle_routing_timer(now)
        self.handle_tree_timer(now)
        self.handle_keying_timer(now)
        self.trace_tree_changes(now)
