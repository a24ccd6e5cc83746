"""The router and core state machine: secure joins and distributed GKDCs.

This follows RFC 1949 section 6.2 and its Figure 1. A designated router (DR)
authenticates a host's signed token before it forms a join; joins are signed
hop by hop and unicast toward the target core; the first GKDC on the way (the
primary core, or an on-tree router that already holds the keys) checks the
host against the ACL and answers with a join-ack that carries the group
access package; each router on the way back verifies it, keeps its own key
bundle enciphered under a local key, and seals a fresh one to the next hop.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Any

from .bundles import key_fields, open_bundle, seal_bundle, sign_bundle
from .codec import Reader
from .crypto import LocalVault
from .documents import GroupAcl, HostToken, KeyBundle, SignedAcl, SignedBundle
from .errors import AuthenticationFailed, MalformedMessage, ProtocolError
from .machine import ROUTER_ROLES, GroupConfig, Machine, Received
from .messages import (
    AclAccept, AclUpload, JoinAck, JoinNack, JoinRequest, KeyDelivery,
    MembershipReport, MessageType, Path, Reason, ReasonCode, ReportCode,
    SealedBundle,
)

ACL_SEAL_LABEL = b"smkd acl seal\0"


def acl_seal_info(group_address: str) -> bytes:
    return ACL_SEAL_LABEL + socket.inet_aton(group_address)


@dataclass
class Request:
    """A secure join this router has taken on, on behalf of one host.

    ``child`` is the router the join came from, or ``None`` when the host is
    on one of this router's own LANs. ``path`` lists the routers the join
    passed before reaching this one, the DR first.
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

    @property
    def host(self) -> str:
        return self.host_token.host


@dataclass
class GroupState:
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


class Router(Machine):
    """A CBT router (role ``router``) or core (role ``core``)."""

    def __init__(self, config, identity, directory, randbytes):
        super().__init__(config, identity, directory, randbytes)
        self.vault = LocalVault(randbytes(LocalVault.KEY_SIZE), randbytes)
        self.groups = {group.address: GroupState(group) for group in config.groups}
        for state in self.groups.values():
            # the primary core is the root of the tree from the start
            state.on_tree = self.is_primary(state)

    # roles and GKDC status

    def is_primary(self, state: GroupState) -> bool:
        return state.config.primary_core == self.name

    def is_gkdc(self, state: GroupState) -> bool:
        if state.vaulted_bundle is None or state.acl is None:
            return False
        if self.is_primary(state):
            # the primary core creates the keys, so it serves joins under
            # every policy, the central KDC's included
            return True
        return state.acl.acl.may_hold_keys(self.name, self.config.role)

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
                "children": sorted(state.children),
                "members": sorted(state.members),
                "gkdc": self.is_gkdc(state),
                "acl_serial": state.acl.acl.serial if state.acl else None,
                "pending": len(state.requests),
                "queued": len(state.queued),
                "key": state.key_info,
            }
        return {"name": self.name, "role": self.config.role, "groups": groups}

    # dispatch

    def dispatch(self, received: Received, now: float) -> None:
        handlers = {
            MessageType.MEMBERSHIP_REPORT: self._on_report,
            MessageType.JOIN_REQUEST: self._on_join_request,
            MessageType.JOIN_ACK: self._on_join_ack,
            MessageType.JOIN_NACK: self._on_join_nack,
            MessageType.ACL_UPLOAD: self._on_acl_upload,
        }
        handler = handlers.get(received.message.header.type)
        if handler is None:
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
        self.trace(now, "report_received", group=state.config.name, host=token.host,
                   code=ReportCode(report.header.code).name.lower())
        self.trace(now, "token_verified", kind="host", host=token.host)

        if report.header.code == ReportCode.LEAVE:
            state.members.discard(token.host)
            self.trace(now, "member_left", group=state.config.name, host=token.host)
            return
        if any(r.child is None and r.host == token.host for r in state.requests.values()):
            # the host repeats its report until keys arrive; one join suffices
            self.trace(now, "report_duplicate", group=state.config.name, host=token.host)
            return
        request = Request(
            token, None, (), self.config.address,
            state.config.core_addresses[0], host_verified=True,
        )
        self._handle_join(state, request, now)

    # join requests

    def _on_join_request(self, received: Received, state: GroupState, now: float) -> None:
        join = received.message
        assert isinstance(join, JoinRequest)
        path = join.path.routers
        if not path or path[-1] != received.peer.name:
            raise MalformedMessage("join path does not end with its sender")
        if self.name in path:
            raise ProtocolError("join path already contains this router", reason="loop")
        self.trace(now, "join_received", group=state.config.name,
                   peer=received.peer.name, host=join.host_token.host)
        request = Request(
            join.host_token, received.peer.name, path,
            join.header.origin, join.header.target_core,
        )
        self._handle_join(state, request, now)

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
        elif state.requests and request.host_token.nonce not in state.requests:
            # CBT: joins that arrive while this router waits for its own ack
            # are answered once that ack arrives
            state.queued.append(request)
            self.trace(now, "join_queued", group=state.config.name, host=request.host)
        else:
            self._forward(state, request, self._next_hop(state, request), now)

    def _next_hop(self, state: GroupState, request: Request) -> str | None:
        target = request.target_core
        if self.config.role == "core" and not self.is_primary(state):
            # RFC 1949 changes CBT here: a secondary core forwards the join
            # to the primary instead of acking it and re-joining
            target = state.config.core_addresses[0]
        hop_address = self.config.routes.get(target)
        if hop_address is None:
            return None
        return self.config.neighbours.get(hop_address)

    def _forward(
        self, state: GroupState, request: Request, upstream: str | None, now: float
    ) -> None:
        group = state.config
        if upstream is None:
            self._nack(state, request, ReasonCode.NO_ROUTE,
                       f"{self.name} has no route toward the core", now)
            return
        peer = self.lookup(upstream, group, now, ROUTER_ROLES)
        if request.attempts == 0:
            request.first_sent = now
        request.upstream = upstream
        request.last_sent = now
        request.attempts += 1
        state.requests[request.host_token.nonce] = request

        header = self.header(MessageType.JOIN_REQUEST, group, origin=request.origin,
                             target_core=request.target_core)
        join = JoinRequest(header, self.new_token(upstream, now), request.host_token,
                           Path(request.path + (self.name,)))
        self.send(join, group, peer)
        self.trace(now, "join_sent", group=group.name, peer=upstream,
                   host=request.host, attempt=request.attempts)

    # answering as a GKDC

    def _answer(self, state: GroupState, request: Request, now: float) -> None:
        group = state.config
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
        if not acl.admits(request.host):
            self.trace(now, "denied", group=group.name, host=request.host,
                       reason="excluded" if acl.mode.name == "EXCLUDE" else "not-on-acl")
            self._nack(state, request, ReasonCode.NOT_ON_ACL,
                       f"{request.host} is not admitted by ACL serial {acl.serial}", now)
            return

        signed = self._unvault(state)
        host = self.lookup(request.host, group, now, ("host",))
        host_bundle = seal_bundle(signed, host, group)
        if request.child is None:
            self._deliver(state, request, host_bundle, now)
            return
        hop_bundle = self._seal_for_next_hop(state, signed, request, now)
        self._send_ack(state, request, host_bundle, hop_bundle, now)
        self.trace(now, "served", group=group.name, host=request.host,
                   peer=request.child)

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
        host_bundle: SealedBundle,
        hop_bundle: SealedBundle | None,
        now: float,
    ) -> None:
        group = state.config
        assert request.child is not None and state.acl is not None
        child = self.lookup(request.child, group, now, ROUTER_ROLES)
        state.children.add(request.child)
        header = self.header(MessageType.JOIN_ACK, group, origin=request.origin,
                             target_core=request.target_core)
        ack = JoinAck(header, self.new_token(child.name, now), request.host_token,
                      state.acl, host_bundle, hop_bundle)
        self.send(ack, group, child)
        self.trace(now, "ack_sent", group=group.name, peer=child.name,
                   host=request.host,
                   hop_bundle_for=hop_bundle.recipient if hop_bundle else None)

    def _deliver(
        self, state: GroupState, request: Request, host_bundle: SealedBundle, now: float
    ) -> None:
        group = state.config
        assert state.acl is not None
        host = self.lookup(request.host, group, now, ("host",))
        header = self.header(MessageType.KEY_DELIVERY, group, origin=self.config.address)
        delivery = KeyDelivery(header, self.new_token(host.name, now),
                               request.host_token, state.acl, host_bundle)
        self.send(delivery, group, host)
        state.members.add(host.name)
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
        request = self._pending_for(state, ack.host_token, received.peer.name)
        acl = self._check_acl_update(state, ack.acl, now)

        # open our own bundle before changing any state, so a bad ack
        # leaves this router exactly as it was
        opened = None
        hop = ack.hop_bundle
        if hop is not None and hop.recipient == self.name:
            if not acl.may_hold_keys(self.name, self.config.role):
                raise ProtocolError("bundle sealed to a router the ACL excludes",
                                    reason="not-eligible")
            opened = open_bundle(hop, self.identity, self.directory, group, now)

        del state.requests[ack.host_token.nonce]
        state.acl = ack.acl
        self.trace(now, "ack_received", group=group.name, peer=received.peer.name,
                   host=request.host)
        if not state.on_tree:
            state.on_tree = True
            state.parent = received.peer.name
            self.trace(now, "on_tree", group=group.name, parent=state.parent)
        if opened is not None:
            self._store_bundle(state, opened.signed, opened.bundle, now)
        self._pass_down(state, request, ack, now)
        self._drain_queue(state, now)

    def _check_acl_update(self, state: GroupState, signed: SignedAcl, now: float) -> GroupAcl:
        acl = self.verify_acl(signed, state.config, now)
        if state.acl is not None and acl.serial < state.acl.acl.serial:
            raise ProtocolError(
                f"ACL serial {acl.serial} is older than {state.acl.acl.serial}",
                reason="older-acl",
            )
        return acl

    def _pass_down(self, state: GroupState, request: Request, ack: JoinAck, now: float) -> None:
        if request.child is None:
            self._deliver(state, request, ack.host_bundle, now)
            return
        if self.is_gkdc(state):
            hop_out = self._seal_for_next_hop(state, self._unvault(state), request, now)
        elif ack.hop_bundle is not None and ack.hop_bundle.recipient != self.name:
            hop_out = ack.hop_bundle
        else:
            hop_out = None
        self._send_ack(state, request, ack.host_bundle, hop_out, now)

    def _on_join_nack(self, received: Received, state: GroupState, now: float) -> None:
        nack = received.message
        assert isinstance(nack, JoinNack)
        request = self._pending_for(state, nack.host_token, received.peer.name)
        del state.requests[nack.host_token.nonce]
        self.trace(now, "nack_received", group=state.config.name,
                   peer=received.peer.name, host=request.host,
                   reason=nack.reason.code.name.lower().replace("_", "-"))
        self._nack(state, request, nack.reason.code, nack.reason.text, now)
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
        state.vaulted_bundle = self.vault.seal(signed.encode(), state.config.address)
        state.key_info = {"epoch": bundle.epoch, "spi": bundle.spi}
        event = "keys_updated" if was_gkdc else "became_gkdc"
        self.trace(now, event, group=state.config.name, **key_fields(bundle))

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

        state.acl = signed
        self.trace(now, "acl_installed", group=group.name, serial=acl.serial,
                   mode=acl.mode.name.lower(), strict=acl.strict)
        if state.vaulted_bundle is None:
            self._create_keys(state, acl, now)
        self._answer_upload(received, ReasonCode.ACCEPTED, "", now)

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

    # timers: join retransmission and expiry

    def next_timer(self) -> float | None:
        interval = self.config.timers.pending_join_interval
        times = [
            request.last_sent + interval
            for state in self.groups.values()
            for request in state.requests.values()
        ]
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        timers = self.config.timers
        for state in self.groups.values():
            for request in list(state.requests.values()):
                if now < request.last_sent + timers.pending_join_interval:
                    continue
                if now - request.first_sent >= timers.expire_pending_join:
                    del state.requests[request.host_token.nonce]
                    self.trace(now, "join_expired", group=state.config.name,
                               host=request.host)
                    continue
                self._forward(state, request, request.upstream, now)
            if not state.on_tree and not state.requests and state.queued:
                self._drain_queue(state, now)
