"""Re-keying at routers, key trees along the tree's branches, and sender keys.

The primary core re-keys each group before its key expires (RFC 1949 section
6.1), on the ``rekey`` command, and when the initiator uploads a newer ACL.
Its signed notice (node/rekey.py) goes from parent to child down the tree.
Each router checks the primary core's signature, moves its own vaulted
bundle to the new epoch when it is a GKDC, and passes the notice on to its
children and member hosts. A scheduled re-key changes the group key and SPI
and keeps the KEK, under which the notice carries the new bundle.

Eviction goes beyond the RFC. Every GKDC keeps a key tree (node/lkh.py) over
the routers and hosts it sealed a bundle to, and gives each of them its path
in that tree with the bundle: these are LKH keys along the tree's branches,
so no node registers anywhere and the primary core does no work per member.
An ACL that drops hosts or routers leads to an eviction. Its notice carries
the new ACL, and each GKDC on the way down evicts the nodes of its own tree
that the ACL no longer admits, then appends a branch wrap: its tree's update
and the new bundle (new group key and KEK) under its tree's new root. A node
opens the wrap of a GKDC it holds a path from. An evicted node holds no key
that any wrap uses, so it cannot follow. Each designated router also stops
serving the hosts that the ACL drops.

Only the primary core re-keys. While it is unreachable, an acting root
serves the current keys unchanged (node/tree.py).

The primary core also answers the key exchange of non-member senders and
announces their sender keys under the group key (RFC 1949 section 8,
node/senderkeys.py).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .bundles import key_fields, sign_bundle, verify_signed_bundle
from .codec import Reader, Writer
from .crypto import fingerprint, suite_by_name
from .datapacket import DataKind, DataPacket
from .dataplane import DataRouter
from .documents import AclMode, GroupAcl, KeyBundle, SignedAcl
from .errors import AuthenticationFailed, ConfigError, MalformedMessage, ProtocolError
from .lkh import KeyTree, LkhPath, MemberKeys
from .machine import ROUTER_ROLES, GroupConfig, Machine, Peer, Received
from .messages import (
    MessageType,
    Reason,
    ReasonCode,
    Rekey,
    SealedBundle,
    SenderKeyGrantMessage,
    SenderKeyRequestMessage,
)
from .rekey import (
    MAX_WRAPS,
    BranchWrap,
    BranchWraps,
    RekeyKind,
    RekeyNotice,
    SignedRekey,
    open_bundle_under,
    seal_bundle_under,
    verify_rekey,
)
from .sa import DataKey
from .senderkeys import (
    SenderKey,
    SenderKeyGrant,
    SenderKeyRequest,
    SignedSenderKey,
    load_verifying_key,
    make_grant,
    sender_admitted,
)

if TYPE_CHECKING:
    from .documents import SignedBundle
    from .tree import GroupState

PATH_SEAL_LABEL = b"smkd branch path\x00"
# how often the primary core announces the key of each non-member sender
ANNOUNCE_INTERVAL = 5.0
# key tree paths a node keeps, one per GKDC that gave it keys
MAX_PATHS = 8


def path_seal_info(group_address: str, recipient: str) -> bytes:
    return PATH_SEAL_LABEL + socket.inet_aton(group_address) + recipient.encode("ascii")


def open_path(
    machine: Machine, suite_name: str, group_address: str, sealed: SealedBundle
) -> tuple[str, MemberKeys]:
    """Open a key tree path sealed to this node; return its owner and the keys.

    Raises ``AuthenticationFailed`` with reason ``bad-seal``.
    """
    if sealed.recipient != machine.name:
        raise AuthenticationFailed(f"key tree path is sealed to {sealed.recipient}",
                                   reason="bad-seal")
    plaintext = machine.identity.open(
        suite_name, sealed.sealed, path_seal_info(group_address, machine.name)
    )
    try:
        reader = Reader(plaintext)
        owner = reader.pull_name("key tree owner")
        path = LkhPath.decode(reader.pull_bytes(reader.remaining()))
    except MalformedMessage as error:
        raise AuthenticationFailed(str(error), reason="bad-seal") from None
    return owner, MemberKeys(group_address, path)


class BranchPaths:
    """A node's paths in the key trees of the GKDCs that gave it keys."""

    def __init__(self) -> None:
        self._paths: dict[str, MemberKeys] = {}

    def __len__(self) -> int:
        return len(self._paths)

    def owners(self) -> list[str]:
        return list(self._paths)

    def add(self, owner: str, keys: MemberKeys) -> None:
        old = self._paths.pop(owner, None)
        if old is not None:
            old.erase()
        self._paths[owner] = keys
        while len(self._paths) > MAX_PATHS:
            self._paths.pop(next(iter(self._paths))).erase()

    def follow(
        self, wraps: BranchWraps | None, group: str, epoch: int
    ) -> bytes:
        """Open the new bundle from the first wrap whose tree this node is in.

        Raises ``AuthenticationFailed`` with reason ``evicted`` when no wrap
        opens: this node was evicted from every tree it holds a path in, or
        holds none.
        """
        for wrap in wraps.wraps if wraps is not None else ():
            keys = self._paths.get(wrap.owner)
            if keys is None:
                continue
            try:
                root = keys.apply(wrap.update, epoch)
            except AuthenticationFailed:
                continue
            return open_bundle_under(root, wrap.sealed_bundle, group, epoch,
                                     RekeyKind.EVICTION, wrap.owner)
        raise AuthenticationFailed(
            "no branch wrap opens with the key tree paths this node holds",
            reason="evicted",
        )

    def clear(self) -> None:
        for keys in self._paths.values():
            keys.erase()
        self._paths.clear()


@dataclass
class KeyingState:
    """A router's re-keying state in one group.

    ``epoch_seen`` is the newest re-key this router passed on. A GKDC keeps
    ``tree`` over the nodes it sealed bundles to, with each leaf's role, and
    ``paths`` are this router's own paths in other GKDCs' trees. The
    re-key schedule and the non-member sender keys exist only at the
    primary core.
    """

    epoch_seen: int = 0
    next_rekey: float | None = None
    tree: KeyTree | None = field(default=None, repr=False)
    leaf_roles: dict[str, str] = field(default_factory=dict)
    paths: BranchPaths = field(default_factory=BranchPaths, repr=False)
    senders: dict[str, bytes] = field(default_factory=dict, repr=False)
    next_announce: float | None = None


class KeyServer(DataRouter):
    """Re-keying, key trees and the primary core's sender keys (see the module doc)."""

    def init_keying(self) -> None:
        self.init_data_plane()
        self.keying = {address: KeyingState() for address in self.groups}

    if TYPE_CHECKING:
        # implemented by the router and node/tree.py, which come later in the MRO

        def _store_bundle(
            self, state: GroupState, signed: SignedBundle, bundle: KeyBundle,
            now: float,
        ) -> None: ...

        def _unvault(self, state: GroupState) -> SignedBundle: ...

        def _erase_keys(self, state: GroupState, now: float) -> None: ...

        def _check_acl_update(
            self, state: GroupState, signed: SignedAcl, now: float
        ) -> GroupAcl: ...

        def _prune_if_idle(self, state: GroupState, now: float) -> None: ...

        def is_primary(self, state: GroupState) -> bool: ...

        def _state_by_name(self, group_name: str) -> GroupState | None: ...

    def current_bundle(self, state: GroupState) -> KeyBundle:
        return KeyBundle.decode(self._unvault(state).body)

    # hooks called by the router

    def on_bundle_stored(self, state: GroupState, bundle: KeyBundle, now: float) -> None:
        """Start this GKDC's key tree, and at the primary core plan the re-key."""
        keying = self.keying[state.config.address]
        keying.epoch_seen = max(keying.epoch_seen, bundle.epoch)
        if keying.tree is None:
            keying.tree = KeyTree(state.config.address, self.randbytes)
        if self.is_primary(state):
            self._schedule_rekey(state, bundle, now)

    def branch_path(self, state: GroupState, peer: Peer) -> SealedBundle | None:
        """Place a node this GKDC gives keys to in its key tree; seal it its path."""
        keying = self.keying[state.config.address]
        if state.vaulted_bundle is None or keying.tree is None:
            return None
        path = keying.tree.register(peer.name)
        keying.leaf_roles[peer.name] = peer.role
        w = Writer()
        w.push_name(self.name)
        w.push_bytes(path.encode())
        info = path_seal_info(state.config.address, peer.name)
        return SealedBundle(peer.name, peer.seal(w.getvalue(), info))

    def path_for_bundle(
        self, state: GroupState, bundle: SealedBundle | None, now: float
    ) -> SealedBundle | None:
        """Return the key tree path that goes with a hop bundle this GKDC sealed."""
        if bundle is None:
            return None
        peer = self.lookup(bundle.recipient, state.config, now, ROUTER_ROLES)
        return self.branch_path(state, peer)

    def accept_path(self, state: GroupState, sealed: SealedBundle, now: float) -> None:
        """Keep the key tree path a GKDC above sealed to this router with its bundle."""
        group = state.config
        owner, keys = open_path(self, group.suite, group.address, sealed)
        self.keying[group.address].paths.add(owner, keys)
        self.trace(now, "path_received", group=group.name, owner=owner,
                   leaf=keys.leaf_id)

    def on_acl_replaced(
        self, state: GroupState, previous: GroupAcl | None, now: float
    ) -> None:
        """Re-key after the initiator replaced the ACL, evicting whom it drops."""
        if state.vaulted_bundle is None or state.acl is None:
            return
        acl = state.acl.acl
        keying = self.keying[state.config.address]
        dropped = [
            name for name, role in keying.leaf_roles.items()
            if not _may_stay(acl, name, role)
        ]
        if dropped or (previous is not None and _narrows(previous, acl)):
            self.originate_rekey(state, now, RekeyKind.EVICTION, "acl-update")
        else:
            self.originate_rekey(state, now, RekeyKind.SCHEDULED, "acl-update")
        self._drop_evicted_members(state, now)

    # re-keying at the primary core

    def rekey(self, group_name: str, now: float) -> None:
        """Re-key a group now (the ``rekey`` command); only the primary core can."""
        state = self._state_by_name(group_name)
        if state is None:
            raise ConfigError(f"{self.name} has no group {group_name!r}")
        if not self.is_primary(state):
            raise ConfigError(
                f"{self.name} is not the primary core of {group_name}; only "
                f"{state.config.primary_core} re-keys it"
            )
        if state.vaulted_bundle is None:
            raise ConfigError(f"{group_name} has no keys yet: its ACL is not installed")
        self.originate_rekey(state, now, RekeyKind.SCHEDULED, "command")

    def _schedule_rekey(self, state: GroupState, bundle: KeyBundle, now: float) -> None:
        # the previous key must stop being accepted by its expiry, so the
        # re-key comes activation plus grace before it, but not before half
        # of the lifetime has passed
        timers = self.config.timers
        lead = timers.rekey_activation + timers.rekey_grace
        lifetime = max(bundle.not_after - now, 0.0)
        self.keying[state.config.address].next_rekey = max(
            now + lifetime / 2, bundle.not_after - lead
        )

    def originate_rekey(
        self, state: GroupState, now: float, kind: RekeyKind, reason: str
    ) -> None:
        group = state.config
        keying = self.keying[group.address]
        assert state.acl is not None
        current = self.current_bundle(state)
        epoch = current.epoch + 1
        kek = current.kek if kind is RekeyKind.SCHEDULED else self.randbytes(16)
        bundle = KeyBundle(
            group=group.address, epoch=epoch, spi=self._new_spi(current.spi),
            suite=group.suite_code, not_after=int(now) + state.acl.acl.key_lifetime,
            group_key=self.randbytes(16), kek=kek,
        )
        signed_bundle = sign_bundle(bundle, self.identity, group)

        sealed = b""
        if kind is RekeyKind.SCHEDULED:
            sealed = seal_bundle_under(current.kek, signed_bundle.encode(),
                                       group.address, epoch, kind, self.randbytes(12))
        timers = self.config.timers
        notice = RekeyNotice(
            group=group.address, epoch=epoch, kind=kind, issued_ms=int(now * 1000),
            activation_ms=int(timers.rekey_activation * 1000),
            grace_ms=int(timers.rekey_grace * 1000), sealed_bundle=sealed,
            acl=state.acl if reason == "acl-update" else None,
        )
        signed = SignedRekey.sign(notice, self.identity, group.suite)
        wraps = None
        if kind is RekeyKind.EVICTION:
            wraps = BranchWraps((self._branch_wrap(state, signed_bundle.encode(),
                                                   epoch, now),))

        self.trace(now, "keys_created", group=group.name, reason=reason,
                   kind=kind.name.lower(), **key_fields(bundle))
        self._store_bundle(state, signed_bundle, bundle, now)
        self.trace(now, "rekey_sent", group=group.name, epoch=epoch,
                   kind=kind.name.lower(), reason=reason)
        self._pass_rekey(state, signed, wraps, now)
        keying.next_announce = now + timers.rekey_activation if keying.senders else None

    def _new_spi(self, previous: int) -> int:
        spi = 0
        while spi in (0, previous):
            spi = int.from_bytes(self.randbytes(4), "big")
        return spi

    def _branch_wrap(
        self, state: GroupState, signed_bundle: bytes, epoch: int, now: float
    ) -> BranchWrap:
        """Evict what the ACL drops from this GKDC's tree; wrap the bundle for the rest."""
        group = state.config
        keying = self.keying[group.address]
        assert keying.tree is not None and state.acl is not None
        acl = state.acl.acl
        evicted = sorted(
            name for name, role in keying.leaf_roles.items()
            if not _may_stay(acl, name, role)
        )
        for name in evicted:
            del keying.leaf_roles[name]
        update = keying.tree.evict(evicted, epoch)
        sealed = seal_bundle_under(keying.tree.root_key(), signed_bundle, group.address,
                                   epoch, RekeyKind.EVICTION, self.randbytes(12),
                                   self.name)
        self.trace(now, "branch_rekeyed", group=group.name, epoch=epoch,
                   evicted=evicted, wraps=len(update.entries), leaves=len(keying.tree))
        return BranchWrap(self.name, update, sealed)

    def _pass_rekey(
        self, state: GroupState, signed: SignedRekey, wraps: BranchWraps | None,
        now: float,
    ) -> None:
        """Send a re-key notice to every child and member host."""
        group = state.config
        origin = group.core_addresses[0]
        targets = [(c, ROUTER_ROLES) for c in sorted(state.children)]
        targets += [(m, ("host",)) for m in sorted(state.members)]
        for name, roles in targets:
            peer = self.lookup(name, group, now, roles)
            header = self.header(MessageType.REKEY, group, origin=origin)
            message = Rekey(header, self.new_token(name, now), signed, wraps)
            self.send(message, group, peer)

    # re-keying at every other router

    def _on_rekey(self, received: Received, state: GroupState, now: float) -> None:
        message = received.message
        assert isinstance(message, Rekey)
        group = state.config
        if self.is_primary(state):
            raise ProtocolError("a re-key notice sent to the primary core",
                                reason="unexpected-message")
        if not state.on_tree or received.peer.name != state.parent:
            raise ProtocolError(
                f"re-key notice from {received.peer.name}, which is not the parent",
                reason="not-parent",
            )
        try:
            notice = verify_rekey(message.rekey, self.directory, group, now)
        except AuthenticationFailed as error:
            self.trace(now, "rekey_rejected", group=group.name,
                       peer=received.peer.name, reason=error.reason)
            raise
        keying = self.keying[group.address]
        if notice.epoch <= keying.epoch_seen:
            self.counters["rekey:duplicate"] += 1
            return
        keying.epoch_seen = notice.epoch

        if notice.acl is not None:
            self._apply_acl(state, notice.acl, now)
        signed_bundle = self._follow_rekey(state, notice, message.wraps, now)
        wraps = message.wraps
        tree = keying.tree
        if notice.kind is RekeyKind.EVICTION and signed_bundle is not None and tree:
            # a GKDC that gave no node keys has no tree to wrap the bundle for
            own = self._branch_wrap(state, signed_bundle, notice.epoch, now)
            wraps = BranchWraps((*(wraps.wraps if wraps else ()), own)[-MAX_WRAPS:])
        self._pass_rekey(state, message.rekey, wraps, now)
        self._drop_evicted_members(state, now)

    def _apply_acl(self, state: GroupState, signed: SignedAcl, now: float) -> None:
        acl = self._check_acl_update(state, signed, now)
        if state.acl is None or acl.serial > state.acl.acl.serial:
            state.acl = signed
            self.trace(now, "acl_updated", group=state.config.name, serial=acl.serial)

    def _drop_evicted_members(self, state: GroupState, now: float) -> None:
        """Stop serving member hosts that the current ACL no longer admits."""
        if state.acl is None:
            return
        plane = self.data_plane[state.config.address]
        for host in sorted(state.members):
            if state.acl.acl.admits(host):
                continue
            state.members.discard(host)
            state.member_heard.pop(host, None)
            plane.handles.drop(host)
            self.trace(now, "member_evicted", group=state.config.name, host=host)
        self._prune_if_idle(state, now)

    def _follow_rekey(
        self, state: GroupState, notice: RekeyNotice, wraps: BranchWraps | None,
        now: float,
    ) -> bytes | None:
        """Move a GKDC's vaulted bundle to the notice's epoch, or give it up.

        Returns the new signed bundle, or None when this router holds no keys
        or could not follow.
        """
        if state.vaulted_bundle is None:
            return None
        group = state.config
        current = self.current_bundle(state)
        if notice.epoch <= current.epoch:
            return None
        keying = self.keying[group.address]
        try:
            if notice.kind is RekeyKind.SCHEDULED:
                plaintext = open_bundle_under(current.kek, notice.sealed_bundle,
                                              group.address, notice.epoch, notice.kind)
            else:
                plaintext = keying.paths.follow(wraps, group.address, notice.epoch)
            opened = verify_signed_bundle(plaintext, self.directory, group, now)
            if opened.bundle.epoch != notice.epoch:
                raise AuthenticationFailed("bundle epoch differs from the notice's",
                                           reason="bad-rekey")
        except AuthenticationFailed as error:
            # a GKDC that cannot follow must not hand out old keys
            self.trace(now, "rekey_missed", group=group.name, epoch=notice.epoch,
                       reason=error.reason)
            self._erase_keys(state, now)
            return None
        self._store_bundle(state, opened.signed, opened.bundle, now)
        return plaintext

    # non-member senders (RFC 1949 section 8)

    def _on_sender_request(
        self, received: Received, state: GroupState, now: float
    ) -> None:
        message = received.message
        assert isinstance(message, SenderKeyRequestMessage)
        group = state.config
        sender = received.peer.name
        if not self.is_primary(state):
            raise ProtocolError(f"{self.name} is not the primary core of {group.name}",
                                reason="not-primary")
        if state.acl is None or state.vaulted_bundle is None:
            self._answer_sender(received, ReasonCode.NO_ACL, None, now)
            return
        if not sender_admitted(state.acl.acl, sender):
            self._answer_sender(received, ReasonCode.NOT_ON_ACL, None, now)
            self.trace(now, "sender_rejected", group=group.name, sender=sender,
                       reason="not-on-acl")
            return

        request = message.request
        suite = suite_by_name(group.suite)
        try:
            load_verifying_key(suite, request.verify_key)
            key = self._sender_key_for(state, sender, request, now)
            grant = make_grant(suite, group.address, sender, request, key.session_key,
                               key.not_after)
        except (MalformedMessage, AuthenticationFailed) as error:
            self._answer_sender(received, ReasonCode.AUTHENTICATION_FAILED, None, now)
            self.trace(now, "sender_rejected", group=group.name, sender=sender,
                       reason=getattr(error, "reason", "malformed"))
            return
        self._answer_sender(received, ReasonCode.ACCEPTED, grant, now)
        self.trace(now, "sender_key_granted", group=group.name, sender=sender,
                   sender_spi=request.sender_spi,
                   sender_key_fp=fingerprint(key.session_key))
        self._announce(state, key, now)
        keying = self.keying[group.address]
        if keying.next_announce is None:
            keying.next_announce = now + ANNOUNCE_INTERVAL

    def _sender_key_for(
        self, state: GroupState, sender: str, request: SenderKeyRequest, now: float
    ) -> SenderKey:
        """Return the sender's key, reusing it when the request is repeated."""
        group = state.config
        keying = self.keying[group.address]
        vaulted = keying.senders.get(sender)
        if vaulted is not None:
            known = SenderKey.decode(self.vault.open(vaulted, _vault_label(group, sender)))
            if (known.sender_spi, known.verify_key) == (
                request.sender_spi, request.verify_key
            ):
                return known
        assert state.acl is not None
        key = SenderKey(
            group=group.address, sender=sender, sender_spi=request.sender_spi,
            suite=group.suite_code, issued_ms=int(now * 1000),
            not_after=int(now) + state.acl.acl.key_lifetime,
            verify_key=request.verify_key, session_key=self.randbytes(16),
        )
        keying.senders[sender] = self.vault.seal(key.encode(), _vault_label(group, sender))
        return key

    def _answer_sender(
        self, received: Received, code: ReasonCode, grant: SenderKeyGrant | None,
        now: float,
    ) -> None:
        group = received.group
        assert group is not None
        header = self.header(MessageType.SENDER_KEY_GRANT, group,
                             origin=self.config.address)
        answer = SenderKeyGrantMessage(header, self.new_token(received.peer.name, now),
                                       Reason(code), grant)
        self.send(answer, group, received.peer)

    def _announce(self, state: GroupState, key: SenderKey, now: float) -> None:
        """Send ``{[sender_key, senderSparams]^SK_primary}^group_key`` down the tree."""
        group = state.config
        plane = self.data_plane[group.address]
        if plane.stream_spi == 0:
            plane.stream_spi = self._new_spi(0)
        bundle = self.current_bundle(state)
        signed = SignedSenderKey.sign(key, self.identity, group.suite)
        packet = DataPacket(
            kind=DataKind.SENDER_KEY, group=group.address,
            primary_core=group.core_addresses[0], group_spi=bundle.spi,
            epoch=bundle.epoch, sender_spi=plane.stream_spi, seq=plane.next_seq,
            sender=self.name, ciphertext=b"",
        )
        data_key = DataKey(bundle.group_key, bundle.spi)
        try:
            ciphertext = data_key.seal(self.name, plane.stream_spi, plane.next_seq,
                                       packet.origin_header(), signed.encode())
        finally:
            data_key.erase()
        plane.next_seq += 1
        packet = replace(packet, ciphertext=ciphertext)
        copies = self.forward_data(state, packet, None, now)
        self.trace(now, "sender_key_announced", group=group.name, sender=key.sender,
                   sender_spi=key.sender_spi, epoch=bundle.epoch, copies=copies)

    def _announce_all(self, state: GroupState, now: float) -> None:
        group = state.config
        keying = self.keying[group.address]
        for sender, vaulted in sorted(keying.senders.items()):
            key = SenderKey.decode(self.vault.open(vaulted, _vault_label(group, sender)))
            if key.not_after < now or state.acl is None or not sender_admitted(
                state.acl.acl, sender
            ):
                del keying.senders[sender]
                continue
            self._announce(state, key, now)
        keying.next_announce = now + ANNOUNCE_INTERVAL if keying.senders else None

    # timers

    def keying_timer(self) -> float | None:
        times = []
        for keying in self.keying.values():
            times += [keying.next_rekey, keying.next_announce]
        return min((t for t in times if t is not None), default=None)

    def handle_keying_timer(self, now: float) -> None:
        for address, state in self.groups.items():
            keying = self.keying[address]
            if keying.next_rekey is not None and now >= keying.next_rekey:
                keying.next_rekey = None
                if self.is_primary(state) and state.vaulted_bundle is not None:
                    self.originate_rekey(state, now, RekeyKind.SCHEDULED, "lifetime")
            if keying.next_announce is not None and now >= keying.next_announce:
                if state.vaulted_bundle is not None:
                    self._announce_all(state, now)
                else:
                    keying.next_announce = None
            if state.vaulted_bundle is None:
                self._forget_key_tree(keying)
        self.prune_handles()

    def _forget_key_tree(self, keying: KeyingState) -> None:
        # a router without keys serves no joins, so its tree and paths go too
        if keying.tree is not None:
            keying.tree.erase()
            keying.tree = None
        keying.leaf_roles.clear()
        keying.paths.clear()


def _vault_label(group: GroupConfig, sender: str) -> str:
    return f"{group.address} sender {sender}"


def _may_stay(acl: GroupAcl, name: str, role: str) -> bool:
    """Return whether the ACL still lets a key tree leaf hold the group's keys."""
    if role == "host":
        return acl.admits(name)
    return acl.may_hold_keys(name, role)


def _narrows(previous: GroupAcl, acl: GroupAcl) -> bool:
    """Return whether ``acl`` may admit fewer hosts or key-holding routers."""
    if previous.mode is not acl.mode or acl.strict and not previous.strict:
        return True
    if acl.central and not previous.central:
        return True
    if acl.trusted_routers is not None and (
        previous.trusted_routers is None
        or set(previous.trusted_routers) - set(acl.trusted_routers)
    ):
        return True
    if acl.mode is AclMode.INCLUDE:
        return bool(set(previous.hosts) - set(acl.hosts))
    return bool(set(acl.hosts) - set(previous.hosts))
