"""A member host's keys after the join: the group SA, re-keys and group data.

A host that holds the group key keeps it in a :class:`GroupSA` (node/sa.py),
together with the packet handle its designated router sealed to it in the
key delivery. It takes data only from its DR and only with a valid handle,
then checks the replay window, the AEAD tag under the epoch the SPI names
and the sender's signature under the announced sender key. A packet whose
sender key has not arrived yet waits a short while for the announcement.

Re-key notices come from the DR. A scheduled one opens under the KEK, an
eviction through the branch wrap of the GKDC whose key tree the host got a
path in with its keys (node/keyserver.py). A host that finds it missed a
re-key (a notice it cannot open, or data under an epoch newer than its own)
asks its DR for the current keys with a new membership report. A host that
the new ACL no longer admits erases its keys, and its report is denied.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .bundles import key_fields, verify_signed_bundle
from .crypto import SigningKey, fingerprint, suite_by_name
from .datapacket import DataKind, DataPacket
from .documents import GroupAcl, KeyBundle
from .errors import AuthenticationFailed, MalformedMessage, ProtocolError
from .handles import HandleTable, seal_info
from .keyserver import BranchPaths, open_path
from .machine import GroupConfig, Machine, Received
from .messages import Rekey, SealedBundle
from .rekey import BranchWraps, RekeyKind, RekeyNotice, open_bundle_under, verify_rekey
from .sa import DataKey, GroupSA, ReplayTable
from .senderkeys import (
    SenderKeyRequest,
    SenderKeyTable,
    SignedSenderKey,
    verify_announcement,
    verify_origin,
)

if TYPE_CHECKING:
    from .crypto import KemPrivateKey

# how long data waits for the announcement of its sender's key, and how much
PENDING_WINDOW = 2.0
MAX_PENDING = 256


@dataclass
class SendJob:
    """A ``send`` command: ``count`` packets of ``size`` bytes, ``interval`` apart.

    ``forge_as`` names another sender to claim, so that a test can show that
    receivers reject a forged origin.
    """

    count: int
    size: int
    interval: float
    next_at: float
    forge_as: str | None = None


@dataclass
class Exchange:
    """A non-member sender's key exchange with the primary core, in flight."""

    request: SenderKeyRequest
    private: KemPrivateKey = field(repr=False)
    attempts: int = 0
    next_at: float = 0.0


@dataclass
class MemberState:
    """A host's or initiator's keys and data state in one group.

    The receiving half holds the group SA, the handle shared with the DR, the
    ACL, the sender keys it learned and their replay windows, and its paths in
    the GKDCs' key trees. The sending half holds its sender key and stream, the
    session key of a non-member sender and the queued ``send`` commands.
    """

    config: GroupConfig
    sa: GroupSA
    handles: HandleTable
    senders: SenderKeyTable = field(default_factory=SenderKeyTable)
    replay: ReplayTable = field(default_factory=ReplayTable)
    bundle: KeyBundle | None = field(default=None, repr=False)
    acl: GroupAcl | None = None
    paths: BranchPaths = field(default_factory=BranchPaths, repr=False)
    recover_at: float = 0.0
    pending: deque[tuple[float, DataPacket]] = field(default_factory=deque)
    signing_key: SigningKey | None = field(default=None, repr=False)
    sender_spi: int = 0
    next_seq: int = 1
    announced_spi: int = 0
    announced_at: float | None = None
    session: DataKey | None = field(default=None, repr=False)
    session_not_after: float = 0.0
    exchange: Exchange | None = None
    jobs: list[SendJob] = field(default_factory=list)

    def holds_keys(self) -> bool:
        return len(self.sa) > 0


class GroupMember(Machine):
    """The receiving half of the host machine (see the module doc)."""

    def init_member(self) -> None:
        grace = self.config.timers.rekey_grace
        self.member_state: dict[str, MemberState] = {
            group.address: MemberState(group, GroupSA(grace), HandleTable(self.name))
            for group in self.config.groups
        }

    def member_by_name(self, group_name: str) -> MemberState:
        for member in self.member_state.values():
            if member.config.name == group_name:
                return member
        known = ", ".join(m.config.name for m in self.member_state.values()) or "none"
        raise ProtocolError(f"{self.name} has no group {group_name!r} (known: {known})",
                            reason="unknown-group")

    # implemented by the host

    def on_group_key_changed(
        self, member: MemberState, bundle: KeyBundle | None, now: float
    ) -> None:
        return None

    def request_keys(self, member: MemberState, now: float) -> None:
        return None

    # keys from the designated router

    def on_keys_delivered(
        self, group: GroupConfig, bundle: KeyBundle, acl: GroupAcl,
        handle: SealedBundle | None, path: SealedBundle | None, dr: str, now: float,
    ) -> None:
        """Install a delivered bundle, the ACL, the DR's handle and the key tree path."""
        member = self.member_state[group.address]
        if handle is not None:
            member.handles.set(dr, self._open_handle(group, handle, dr))
        if path is not None:
            owner, keys = open_path(self, group.suite, group.address, path)
            member.paths.add(owner, keys)
        member.acl = acl
        newest = member.sa.newest
        if newest is None or bundle.epoch > newest.epoch:
            member.sa.install(bundle.epoch, bundle.spi, bundle.group_key,
                              bundle.not_after, activate_at=now)
            member.bundle = bundle

    def _open_handle(self, group: GroupConfig, sealed: SealedBundle, dr: str) -> bytes:
        if sealed.recipient != self.name:
            raise AuthenticationFailed(
                f"packet handle is sealed to {sealed.recipient}", reason="bad-seal"
            )
        info = seal_info(group.address, dr, self.name)
        return self.identity.open(group.suite, sealed.sealed, info)

    def erase_member_keys(self, member: MemberState, now: float) -> None:
        """Erase every key of the group: on leaving, and when evicted."""
        for old in member.sa.erase_all():
            self.trace(now, "epoch_erased", group=member.config.name, epoch=old.epoch,
                       spi=old.spi)
        member.handles.clear()
        member.senders.clear()
        member.pending.clear()
        member.bundle = None
        member.paths.clear()

    # re-keying

    def on_rekey(self, received: Received, now: float) -> None:
        message = received.message
        assert isinstance(message, Rekey) and received.group is not None
        member = self.member_state[received.group.address]
        group = member.config
        if received.peer.name != self.config.gateway:
            raise AuthenticationFailed(
                f"re-key notice from {received.peer.name}, not from the DR",
                reason="not-my-dr",
            )
        try:
            notice = verify_rekey(message.rekey, self.directory, group, now)
        except AuthenticationFailed as error:
            self.trace(now, "rekey_rejected", group=group.name,
                       peer=received.peer.name, reason=error.reason)
            raise
        newest = member.sa.newest
        if not member.holds_keys() or newest is None or notice.epoch <= newest.epoch:
            return
        if notice.acl is not None and not self._apply_acl(member, notice, now):
            return

        try:
            bundle = self._open_rekey(member, notice, message.wraps, now)
        except AuthenticationFailed as error:
            self.trace(now, "rekey_missed", group=group.name, epoch=notice.epoch,
                       reason=error.reason)
            self._recover(member, now)
            return
        member.sa.grace = notice.grace_ms / 1000
        for old in member.sa.install(
            bundle.epoch, bundle.spi, bundle.group_key, bundle.not_after,
            activate_at=now + notice.activation_ms / 1000,
        ):
            self.trace(now, "epoch_erased", group=group.name, epoch=old.epoch,
                       spi=old.spi)
        member.bundle = bundle
        self.on_group_key_changed(member, bundle, now)
        self.trace(now, "key_installed", group=group.name, peer=received.peer.name,
                   via="rekey", kind=notice.kind.name.lower(), **key_fields(bundle))

    def _apply_acl(self, member: MemberState, notice: RekeyNotice, now: float) -> bool:
        """Take the notice's ACL; return False when it evicts this host."""
        assert notice.acl is not None
        acl = self.verify_acl(notice.acl, member.config, now)
        if member.acl is not None and acl.serial <= member.acl.serial:
            return True
        member.acl = acl
        for sender in member.senders.retain(lambda name: name == acl.initiator
                                            or acl.admits(name)):
            member.replay.forget(sender)
            self.trace(now, "sender_key_revoked", group=member.config.name,
                       sender=sender)
        if acl.admits(self.name):
            return True
        self.trace(now, "evicted", group=member.config.name, serial=acl.serial)
        self.erase_member_keys(member, now)
        self.on_group_key_changed(member, None, now)
        return False

    def _open_rekey(
        self, member: MemberState, notice: RekeyNotice, wraps: BranchWraps | None,
        now: float,
    ) -> KeyBundle:
        group = member.config
        assert member.bundle is not None
        if notice.kind is RekeyKind.SCHEDULED:
            plaintext = open_bundle_under(member.bundle.kek, notice.sealed_bundle,
                                          group.address, notice.epoch, notice.kind)
        else:
            plaintext = member.paths.follow(wraps, group.address, notice.epoch)
        opened = verify_signed_bundle(plaintext, self.directory, group, now)
        if opened.bundle.epoch != notice.epoch:
            raise AuthenticationFailed("bundle epoch differs from the notice's",
                                       reason="bad-rekey")
        return opened.bundle

    def _recover(self, member: MemberState, now: float) -> None:
        """Ask the DR for the current keys, at most once per report interval."""
        if now < member.recover_at:
            return
        member.recover_at = now + self.config.timers.report_interval
        self.trace(now, "keys_requested", group=member.config.name)
        self.request_keys(member, now)

    # group data

    def receive_data(self, datagram: bytes, source: str, now: float) -> None:
        packet = DataPacket.decode(datagram)
        member = self.member_state.get(packet.group)
        if member is None:
            raise ProtocolError(f"data for unknown group {packet.group}",
                                reason="unknown-group")
        dr = self.config.gateway
        if self.config.neighbours.get(source) != dr:
            raise AuthenticationFailed(f"data from {source}, not from the DR {dr}",
                                       reason="not-my-dr")
        try:
            if not packet.on_tree:
                raise AuthenticationFailed("data from the DR without a handle",
                                           reason="no-handle")
            assert dr is not None
            member.handles.verify(dr, packet.handled_bytes(), packet.handle)
            self._accept(member, packet, now)
        except ProtocolError as error:
            self._reject(member, packet, error, now)

    def _reject(
        self, member: MemberState, packet: DataPacket, error: ProtocolError,
        now: float,
    ) -> None:
        self.counters[f"data-drop:{error.reason}"] += 1
        self.trace(now, "data_rejected", group=member.config.name,
                   sender=packet.sender, seq=packet.seq, epoch=packet.epoch,
                   kind=packet.kind.name.lower(), reason=error.reason)

    def _accept(self, member: MemberState, packet: DataPacket, now: float) -> None:
        if not member.holds_keys():
            raise AuthenticationFailed("this host holds no group key",
                                       reason="no-group-key")
        if packet.sender == self.name:
            # the tree never brings a host's own packets back to it
            raise AuthenticationFailed("data claims to be from this host",
                                       reason="forged-origin")
        member.replay.check(packet.sender, packet.sender_spi, packet.seq)
        if packet.kind is DataKind.SENDER_KEY:
            self._learn_sender_key(member, packet, now)
            return

        try:
            known = member.senders.lookup(packet.sender, packet.sender_spi, now)
        except AuthenticationFailed as error:
            if error.reason == "unknown-sender-key" and len(member.pending) < MAX_PENDING:
                member.pending.append((now, packet))
                return
            raise
        data_key = self._data_key(member, packet, known.session, now)
        plaintext = data_key.open(packet.sender, packet.sender_spi, packet.seq,
                                  packet.origin_header(), packet.ciphertext)
        verify_origin(known, packet.signature, packet.signed_bytes())
        member.replay.update(packet.sender, packet.sender_spi, packet.seq)
        self.counters["data-received"] += 1
        self.trace(now, "data_received", group=member.config.name, sender=packet.sender,
                   seq=packet.seq, size=len(plaintext), epoch=packet.epoch,
                   spi=packet.group_spi)

    def _data_key(
        self, member: MemberState, packet: DataPacket, session: DataKey | None,
        now: float,
    ) -> DataKey:
        """Return the key a packet is under: its sender's session key or an epoch's."""
        if packet.group_spi == 0:
            if session is None:
                raise AuthenticationFailed(
                    f"{packet.sender} is a member sender and has no session key",
                    reason="wrong-key",
                )
            return session
        if session is not None:
            raise AuthenticationFailed(
                f"{packet.sender} sends under its session key, not the group key",
                reason="wrong-key",
            )
        try:
            return member.sa.key_for(packet.group_spi).data_key
        except AuthenticationFailed as error:
            newest = member.sa.newest
            if error.reason == "unknown-spi" and newest and packet.epoch > newest.epoch:
                self.trace(now, "rekey_missed", group=member.config.name,
                           epoch=packet.epoch, reason="newer-data")
                self._recover(member, now)
            raise

    def _learn_sender_key(
        self, member: MemberState, packet: DataPacket, now: float
    ) -> None:
        data_key = self._data_key(member, packet, None, now)
        plaintext = data_key.open(packet.sender, packet.sender_spi, packet.seq,
                                  packet.origin_header(), packet.ciphertext)
        try:
            signed = SignedSenderKey.decode(plaintext)
        except MalformedMessage as error:
            raise AuthenticationFailed(str(error), reason="bad-sender-key") from None
        if member.acl is None:
            raise AuthenticationFailed("no ACL to check the sender against",
                                       reason="no-acl")
        key = verify_announcement(signed, packet.sender, self.directory, member.config,
                                  member.acl, now)
        member.replay.update(packet.sender, packet.sender_spi, packet.seq)
        suite = suite_by_name(member.config.suite)
        if member.senders.learn(key, signed.signer, suite):
            fields: dict[str, Any] = {}
            if key.session_key:
                fields["sender_key_fp"] = fingerprint(key.session_key)
            self.trace(now, "sender_key_learned", group=member.config.name,
                       sender=key.sender, signer=signed.signer,
                       sender_spi=key.sender_spi, **fields)
        self._retry_pending(member, key.sender, now)

    def _retry_pending(self, member: MemberState, sender: str, now: float) -> None:
        waiting = [p for _, p in member.pending if p.sender == sender]
        member.pending = deque((t, p) for t, p in member.pending if p.sender != sender)
        for packet in waiting:
            try:
                self._accept(member, packet, now)
            except ProtocolError as error:
                self._reject(member, packet, error, now)

    def _expire_pending(self, member: MemberState, now: float) -> None:
        while member.pending and now - member.pending[0][0] >= PENDING_WINDOW:
            _, packet = member.pending.popleft()
            error = AuthenticationFailed("no announcement of the sender key arrived",
                                         reason="unknown-sender-key")
            self._reject(member, packet, error, now)

    # timers

    def member_timer(self) -> float | None:
        times: list[float] = []
        for member in self.member_state.values():
            expiry = member.sa.next_expiry()
            if expiry is not None:
                times.append(expiry)
            if member.pending:
                times.append(member.pending[0][0] + PENDING_WINDOW)
        return min(times, default=None)

    def handle_member_timer(self, now: float) -> None:
        for member in self.member_state.values():
            for old in member.sa.expire(now):
                self.trace(now, "epoch_erased", group=member.config.name,
                           epoch=old.epoch, spi=old.spi)
            self._expire_pending(member, now)
