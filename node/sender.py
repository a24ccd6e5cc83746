"""The sending half of a host or initiator: group data and sender keys.

A member sender (one that holds the group key) makes a sender key for the
session and announces it to the group, signed by itself and encrypted under
the group key, before its first data packet, whenever the epoch it sends
under changes, and every ``ANNOUNCE_INTERVAL`` while it sends, so that hosts
that joined later learn it too. Its data is encrypted under the group key of
the epoch it sends under.

A non-member sender (one without the group key, such as the initiator or a
host that has not joined) first runs the key exchange with the primary core
(node/senderkeys.py); the primary announces its key. Its data is encrypted
under the session key of that exchange and enters the tree at the first
on-tree router on the way to the primary core.

Both sign every packet with their sender key, so that a receiver can tell
who sent it (RFC 1949 section 8).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from .crypto import fingerprint, suite_by_name
from .datapacket import DataKind, DataPacket
from .documents import NONCE_SIZE
from .errors import ConfigError, ProtocolError
from .machine import Received, Transmit
from .member import Exchange, GroupMember, MemberState, SendJob
from .messages import (
    MessageType,
    ReasonCode,
    SenderKeyGrantMessage,
    SenderKeyRequestMessage,
)
from .sa import DataKey
from .senderkeys import (
    SenderKey,
    SenderKeyRequest,
    SignedSenderKey,
    open_grant,
    public_bytes,
)

ANNOUNCE_INTERVAL = 5.0
MAX_SIZE = 60_000
# a non-member renews its session key once this share of its lifetime is gone
RENEW_AT = 0.8
# a forger numbers its packets above what the claimed sender has used, so
# that the replay window does not reject them before the signature check
FORGED_SEQUENCE_OFFSET = 1 << 32


class GroupSender(GroupMember):
    """The sending half of the host and initiator machines (see the module doc)."""

    def send_data(
        self, group_name: str, now: float, count: int = 1, size: int = 100,
        interval: float = 0.1, forge_as: str | None = None,
    ) -> None:
        """Queue the ``send`` command: ``count`` packets of ``size`` bytes."""
        member = self.member_by_name(group_name)
        if count < 1 or not 1 <= size <= MAX_SIZE or interval < 0:
            raise ConfigError(
                f"send needs count >= 1, size 1..{MAX_SIZE} bytes and interval >= 0; "
                f"got count {count}, size {size}, interval {interval}"
            )
        member.jobs.append(SendJob(count, size, interval, now, forge_as))
        self.trace(now, "send_started", group=group_name, count=count, size=size,
                   interval=interval, forge_as=forge_as)
        self._run_jobs(member, now)

    def on_group_key_changed(
        self, member: MemberState, bundle: Any, now: float
    ) -> None:
        if bundle is None:
            # evicted: a later send starts over as a non-member
            member.announced_spi = 0

    def request_keys(self, member: MemberState, now: float) -> None:
        join = getattr(self, "join", None)
        if join is not None:
            join(member.config.name, now)

    # sending

    def _run_jobs(self, member: MemberState, now: float) -> None:
        while member.jobs:
            job = member.jobs[0]
            if job.next_at > now or not self._ready_to_send(member, now):
                return
            self._send_one(member, job, now)
            job.count -= 1
            job.next_at = now + job.interval
            if job.count == 0:
                member.jobs.pop(0)

    def _ready_to_send(self, member: MemberState, now: float) -> bool:
        """Return whether a key to send under is at hand, starting an exchange if not."""
        if member.holds_keys():
            return True
        if member.session is not None and now < member.session_not_after:
            return True
        if member.exchange is None:
            self._start_exchange(member, now)
        return False

    def _send_one(self, member: MemberState, job: SendJob, now: float) -> None:
        self._ensure_sender_key(member)
        sender, sender_spi = self.name, member.sender_spi
        if job.forge_as is not None:
            # claim another sender's stream, as a member that forges would
            sender = job.forge_as
            sender_spi = member.senders.spi_of(sender) or sender_spi
        if member.holds_keys():
            self._announce_if_due(member, now)
        payload = _payload(self.name, member.next_seq, job.size)
        offset = FORGED_SEQUENCE_OFFSET if job.forge_as is not None else 0
        packet = self._seal(member, DataKind.DATA, sender, sender_spi, payload, now,
                            sign=True, seq_offset=offset)
        self.trace(now, "data_sent", group=member.config.name, sender=sender,
                   seq=packet.seq, size=job.size, epoch=packet.epoch,
                   spi=packet.group_spi, forged=job.forge_as is not None)

    def _ensure_sender_key(self, member: MemberState) -> None:
        if member.signing_key is None:
            member.signing_key = suite_by_name(member.config.suite).generate_signing_key()
            member.sender_spi = _nonzero_spi(self.randbytes)
            member.next_seq = 1

    def _seal(
        self, member: MemberState, kind: DataKind, sender: str, sender_spi: int,
        plaintext: bytes, now: float, sign: bool, seq_offset: int = 0,
    ) -> DataPacket:
        """Encrypt, sign and send one packet of this node's stream to the DR."""
        group = member.config
        if member.holds_keys():
            epoch_key = member.sa.sending_key(now)
            assert epoch_key is not None
            data_key, group_spi, epoch = epoch_key.data_key, epoch_key.spi, epoch_key.epoch
        else:
            assert member.session is not None
            data_key, group_spi, epoch = member.session, 0, 0
        packet = DataPacket(
            kind=kind, group=group.address, primary_core=group.core_addresses[0],
            group_spi=group_spi, epoch=epoch, sender_spi=sender_spi,
            seq=member.next_seq + seq_offset, sender=sender, ciphertext=b"",
        )
        member.next_seq += 1
        ciphertext = data_key.seal(sender, sender_spi, packet.seq,
                                   packet.origin_header(), plaintext)
        packet = replace(packet, ciphertext=ciphertext)
        if sign:
            assert member.signing_key is not None
            suite = suite_by_name(group.suite)
            signature = suite.sign(member.signing_key, packet.signed_bytes())
            packet = replace(packet, signature=signature)
        self._to_dr(member, packet)
        return packet

    def _to_dr(self, member: MemberState, packet: DataPacket) -> None:
        dr = self.config.gateway
        assert dr is not None
        on_tree = dr in member.handles
        packet = replace(packet, on_tree=on_tree)
        if on_tree:
            packet = replace(packet, handle=member.handles.tag(dr, packet.handled_bytes()))
        address = self.config.peer_addresses.get(dr) or next(
            (a for a, name in self.config.neighbours.items() if name == dr), None
        )
        if address is None:
            raise ConfigError(f"{self.name} has no address for its DR {dr}")
        self.counters["sent:DATA"] += 1
        self._outputs.append(Transmit(address, packet.encode(), dr))

    # announcing a member's sender key

    def _announce_if_due(self, member: MemberState, now: float) -> None:
        epoch_key = member.sa.sending_key(now)
        assert epoch_key is not None
        fresh = (
            member.announced_at is not None
            and now - member.announced_at < ANNOUNCE_INTERVAL
        )
        if member.announced_spi == epoch_key.spi and fresh:
            return
        assert member.signing_key is not None and member.acl is not None
        key = SenderKey(
            group=member.config.address, sender=self.name,
            sender_spi=member.sender_spi, suite=member.config.suite_code,
            issued_ms=int(now * 1000),
            not_after=int(now) + member.acl.key_lifetime,
            verify_key=public_bytes(member.signing_key),
        )
        signed = SignedSenderKey.sign(key, self.identity, member.config.suite)
        self._seal(member, DataKind.SENDER_KEY, self.name, member.sender_spi,
                   signed.encode(), now, sign=False)
        member.announced_spi = epoch_key.spi
        member.announced_at = now
        self.trace(now, "sender_key_announced", group=member.config.name,
                   sender=self.name, sender_spi=member.sender_spi,
                   epoch=epoch_key.epoch)

    # the key exchange of a non-member sender

    def _start_exchange(self, member: MemberState, now: float) -> None:
        self._ensure_sender_key(member)
        assert member.signing_key is not None
        suite = suite_by_name(member.config.suite)
        private = suite.generate_kem_key()
        request = SenderKeyRequest(
            sender_spi=member.sender_spi, nonce=self.randbytes(NONCE_SIZE),
            verify_key=public_bytes(member.signing_key),
            exchange_key=private.public_key.raw,
        )
        member.exchange = Exchange(request, private)
        self._send_exchange(member, now)

    def _send_exchange(self, member: MemberState, now: float) -> None:
        exchange = member.exchange
        assert exchange is not None
        group = member.config
        if exchange.attempts > self.config.timers.report_retries:
            member.exchange = None
            self._give_up_sending(member, "no-answer", now)
            return
        core = self.lookup(group.primary_core, group, now, ("core",))
        header = self.header(MessageType.SENDER_KEY_REQUEST, group,
                             origin=self.config.address)
        message = SenderKeyRequestMessage(header, self.new_token(core.name, now),
                                          exchange.request)
        self.send(message, group, core)
        exchange.attempts += 1
        exchange.next_at = now + self.config.timers.report_interval
        self.trace(now, "sender_key_requested", group=group.name,
                   sender_spi=exchange.request.sender_spi, attempt=exchange.attempts)

    def on_sender_grant(self, received: Received, now: float) -> None:
        answer = received.message
        assert isinstance(answer, SenderKeyGrantMessage) and received.group is not None
        member = self.member_state[received.group.address]
        group = member.config
        exchange = member.exchange
        if received.peer.name != group.primary_core or exchange is None:
            raise ProtocolError("sender key grant for no request of ours",
                                reason="unexpected-answer")
        if answer.reason.code is not ReasonCode.ACCEPTED or answer.grant is None:
            member.exchange = None
            reason = answer.reason.code.name.lower().replace("_", "-")
            self._give_up_sending(member, reason, now)
            return

        suite = suite_by_name(group.suite)
        session_key = open_grant(suite, exchange.private, group.address, self.name,
                                 exchange.request, answer.grant)
        # the exchange's private key goes with the exchange, for forward secrecy
        member.exchange = None
        if member.session is not None:
            member.session.erase()
        member.session = DataKey(session_key, exchange.request.sender_spi)
        member.session_not_after = now + RENEW_AT * max(answer.grant.not_after - now, 0)
        self.trace(now, "sender_key_received", group=group.name,
                   sender_spi=exchange.request.sender_spi,
                   sender_key_fp=fingerprint(session_key))
        self._run_jobs(member, now)

    def _give_up_sending(self, member: MemberState, reason: str, now: float) -> None:
        dropped = sum(job.count for job in member.jobs)
        member.jobs.clear()
        self.trace(now, "send_failed", group=member.config.name, reason=reason,
                   dropped=dropped)

    # timers

    def sender_timer(self) -> float | None:
        times: list[float] = []
        for member in self.member_state.values():
            if member.exchange is not None:
                times.append(member.exchange.next_at)
            elif member.jobs:
                times.append(member.jobs[0].next_at)
        return min(times, default=None)

    def handle_sender_timer(self, now: float) -> None:
        for member in self.member_state.values():
            exchange = member.exchange
            if exchange is not None and now >= exchange.next_at:
                self._send_exchange(member, now)
            self._run_jobs(member, now)


def _payload(sender: str, seq: int, size: int) -> bytes:
    """Return recognisable filler, so a test can look for it in captures."""
    pattern = f"smkd data from {sender} #{seq} ".encode("ascii")
    return (pattern * (size // len(pattern) + 1))[:size]


def _nonzero_spi(randbytes: Any) -> int:
    spi = 0
    while spi == 0:
        spi = int.from_bytes(randbytes(4), "big")
    return spi
