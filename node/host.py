"""The host and group initiator state machines.

A host joins a group by sending its designated router a secure membership
report that carries its signed token (RFC 1949 appendix B), repeats it a few
times against loss, and installs the SA when its DR hands over the key bundle
sealed to it. While it holds the key it reports again every
``membership_interval`` (as IGMP hosts answer queries), so that a DR that
restarted learns its members back and a DR whose members went silent can
prune its branch. The initiator signs the group ACL and uploads it to the
primary core until the core accepts it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .bundles import key_fields, open_bundle
from .codec import Writer
from .documents import AclMode, HostToken, KeyBundle, SignedAcl
from .errors import AuthenticationFailed, ConfigError, ProtocolError
from .machine import GroupConfig, Machine, Received
from .member import MemberState
from .messages import (
    AclAccept, AclUpload, ControlHeader, KeyDelivery, MembershipReport,
    MessageType, ReasonCode, ReportCode, SealedAcl,
)
from .router import Router, acl_seal_info
from .sender import GroupSender


# refresh tokens a host keeps answerable; older ones are forgotten
MAX_OUTSTANDING = 4


@dataclass
class Membership:
    """A host's state in one group."""

    config: GroupConfig
    joined: bool = False
    outstanding: dict[bytes, HostToken] = field(default_factory=dict)
    reports_sent: int = 0
    next_report: float | None = None
    next_refresh: float | None = None
    sa: KeyBundle | None = field(default=None, repr=False)


class Host(GroupSender):
    def __init__(self, config, identity, directory, randbytes):
        super().__init__(config, identity, directory, randbytes)
        if config.gateway is None:
            raise ConfigError(f"host {config.name} has no designated router (gateway)")
        self.memberships = {g.address: Membership(g) for g in config.groups}
        self.init_member()

    def _membership(self, group_name: str) -> Membership:
        group = self.config.group_by_name(group_name)
        if group is None:
            known = ", ".join(g.name for g in self.config.groups) or "none"
            raise ConfigError(f"{self.name} has no group {group_name!r} (known: {known})")
        return self.memberships[group.address]

    def holds_key(self, group_name: str) -> bool:
        return self._membership(group_name).sa is not None

    def status(self) -> dict[str, Any]:
        groups = {}
        for membership in self.memberships.values():
            sa = membership.sa
            groups[membership.config.name] = {
                "joined": membership.joined,
                "holds_key": sa is not None,
                "epoch": sa.epoch if sa else None,
                "spi": sa.spi if sa else None,
            }
        return {"name": self.name, "role": self.config.role, "groups": groups}

    # commands

    def join(self, group_name: str, now: float) -> None:
        membership = self._membership(group_name)
        membership.joined = True
        membership.reports_sent = 0
        self._send_report(membership, ReportCode.JOIN, now)

    def leave(self, group_name: str, now: float) -> None:
        membership = self._membership(group_name)
        membership.joined = False
        membership.next_report = None
        membership.next_refresh = None
        membership.outstanding.clear()
        self._send_report(membership, ReportCode.LEAVE, now)
        self.erase_member_keys(self.member_state[membership.config.address], now)
        if membership.sa is not None:
            membership.sa = None
            self.trace(now, "key_erased", group=group_name)

    def _send_report(self, membership: Membership, code: ReportCode, now: float) -> None:
        group = membership.config
        token = self.new_host_token(group, now)
        if code is ReportCode.JOIN:
            membership.outstanding[token.nonce] = token
            membership.reports_sent += 1
            membership.next_report = now + self.config.timers.report_interval
        elif code is ReportCode.REFRESH:
            # a DR that forgot this member answers a refresh with keys
            membership.outstanding[token.nonce] = token
            while len(membership.outstanding) > MAX_OUTSTANDING:
                del membership.outstanding[next(iter(membership.outstanding))]
        dr = self.lookup(self.config.gateway, group, now, ("router", "core"))
        header = ControlHeader(MessageType.MEMBERSHIP_REPORT, group.address,
                               origin=self.config.address, code=code)
        self.send(MembershipReport(header, token), group, dr)
        self.trace(now, "report_sent", group=group.name, peer=dr.name,
                   code=code.name.lower(), attempt=membership.reports_sent)

    # timers: the report is repeated until keys arrive (appendix B)

    def next_timer(self) -> float | None:
        times = [t for m in self.memberships.values()
                 for t in (m.next_report, m.next_refresh) if t is not None]
        times += [
            t for t in (self.member_timer(), self.sender_timer()) if t is not None
        ]
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        self.handle_member_timer(now)
        self.handle_sender_timer(now)
        retries = self.config.timers.report_retries
        for membership in self.memberships.values():
            self._refresh(membership, now)
            due = membership.next_report
            if due is None or now < due:
                continue
            if membership.sa is not None or membership.reports_sent > retries:
                membership.next_report = None
                if membership.sa is None:
                    self.trace(now, "join_timeout", group=membership.config.name)
                continue
            self._send_report(membership, ReportCode.JOIN, now)

    def _refresh(self, membership: Membership, now: float) -> None:
        due = membership.next_refresh
        interval = self.config.timers.membership_interval
        if due is None or now < due or interval is None:
            return
        membership.next_refresh = now + interval
        self._send_report(membership, ReportCode.REFRESH, now)

    # key delivery from the DR

    def dispatch(self, received: Received, now: float) -> None:
        handlers = {
            MessageType.REKEY: self.on_rekey,
            MessageType.SENDER_KEY_GRANT: self.on_sender_grant,
        }
        handler = handlers.get(received.message.header.type)
        if handler is not None:
            handler(received, now)
            return
        if received.message.header.type is not MessageType.KEY_DELIVERY:
            super().dispatch(received, now)
            return
        delivery = received.message
        assert isinstance(delivery, KeyDelivery)
        membership = self.memberships[received.group.address]
        group = membership.config
        if received.peer.name != self.config.gateway:
            raise AuthenticationFailed(
                f"keys from {received.peer.name}, not from the DR {self.config.gateway}",
                reason="not-my-dr",
            )
        sent = membership.outstanding.get(delivery.host_token.nonce)
        if sent is None or sent != delivery.host_token or not membership.joined:
            raise ProtocolError("key delivery answers no report of ours",
                                reason="unexpected-answer")
        acl = self.verify_acl(delivery.acl, group, now)
        opened = open_bundle(delivery.host_bundle, self.identity, self.directory,
                             group, now)
        current = membership.sa
        if current is not None and opened.bundle.epoch < current.epoch:
            # a DR that missed a re-key still hands out the epoch before it
            raise ProtocolError(
                f"key delivery of epoch {opened.bundle.epoch}, this host holds "
                f"{current.epoch}",
                reason="older-epoch",
            )
        self.on_keys_delivered(group, opened.bundle, acl, delivery.handle,
                               delivery.host_path, received.peer.name, now)
        self._install(membership, opened.bundle, received.peer.name, now)

    def on_group_key_changed(
        self, member: MemberState, bundle: KeyBundle | None, now: float
    ) -> None:
        super().on_group_key_changed(member, bundle, now)
        membership = self.memberships[member.config.address]
        membership.sa = bundle
        if bundle is None:
            membership.next_refresh = None
            membership.outstanding.clear()
            self.trace(now, "key_erased", group=member.config.name, reason="evicted")
            # the host still wants the group, so it reports again; its DR,
            # which holds the new ACL by now, records the denial
            self.join(member.config.name, now)

    def _install(self, membership: Membership, bundle: KeyBundle, dr: str, now: float) -> None:
        membership.sa = bundle
        membership.outstanding.clear()
        membership.next_report = None
        interval = self.config.timers.membership_interval
        if interval is not None:
            membership.next_refresh = now + interval
        self.trace(now, "key_installed", group=membership.config.name, peer=dr,
                   **key_fields(bundle))


class Initiator(GroupSender):
    """The group initiator: signs the ACL and uploads it to the primary core.

    It may also send to its groups, as a non-member sender (node/sender.py).
    """

    def __init__(self, config, identity, directory, randbytes):
        super().__init__(config, identity, directory, randbytes)
        self.init_member()
        self.uploads: dict[str, dict[str, Any]] = {}
        for group in config.groups:
            if group.acl is not None and group.initiator == self.name:
                self.uploads[group.address] = {
                    "group": group, "accepted": False, "attempts": 0, "next": None,
                }

    def start(self, now: float) -> None:
        super().start(now)
        for upload in self.uploads.values():
            self._upload(upload, now)

    def status(self) -> dict[str, Any]:
        groups = {
            u["group"].name: {"accepted": u["accepted"], "attempts": u["attempts"]}
            for u in self.uploads.values()
        }
        return {"name": self.name, "role": self.config.role, "groups": groups}

    def _upload(self, upload: dict[str, Any], now: float) -> None:
        group: GroupConfig = upload["group"]
        assert group.acl is not None
        body = group.acl.encode()
        signature = self.identity.sign(group.suite, SignedAcl(body, b"", group.acl).signed_bytes())
        signed = SignedAcl(body, signature, group.acl)
        core = self.lookup(group.primary_core, group, now, ("core",))
        header = ControlHeader(MessageType.ACL_UPLOAD, group.address,
                               origin=self.config.address,
                               primary_core=group.core_addresses[0],
                               target_core=group.core_addresses[0],
                               cores=group.core_addresses)
        token = self.new_token(core.name, now)
        if group.seal_acl:
            w = Writer()
            signed.encode(w)
            sealed = core.seal(w.getvalue(), acl_seal_info(group.address))
            message = AclUpload(header, token, sealed_acl=SealedAcl(sealed))
        else:
            message = AclUpload(header, token, acl=signed)
        self.send(message, group, core)
        upload["attempts"] += 1
        upload["next"] = now + self.config.timers.report_interval
        self.trace(now, "acl_uploaded", group=group.name, peer=core.name,
                   serial=group.acl.serial, sealed=group.seal_acl,
                   attempt=upload["attempts"])

    def update_acl(
        self, group_name: str, now: float, remove: tuple[str, ...] = (),
        add: tuple[str, ...] = (),
    ) -> None:
        """Sign and upload the next ACL, without ``remove`` and with ``add``.

        In an exclusion list, removing a host adds it to the list. The primary
        core answers a newer ACL that drops a host with an eviction re-key.
        """
        upload = next(
            (u for u in self.uploads.values() if u["group"].name == group_name), None
        )
        if upload is None:
            raise ConfigError(f"{self.name} uploads no ACL of group {group_name!r}")
        group: GroupConfig = upload["group"]
        acl = group.acl
        assert acl is not None
        if acl.mode is AclMode.INCLUDE:
            missing = sorted(set(remove) - set(acl.hosts))
            if missing:
                raise ConfigError(
                    f"cannot remove {', '.join(missing)}: not listed in the ACL of "
                    f"{group_name} ({', '.join(acl.hosts)})"
                )
            hosts = [h for h in acl.hosts if h not in remove]
            hosts += [h for h in add if h not in hosts]
        else:
            hosts = [h for h in acl.hosts if h not in add]
            hosts += [h for h in remove if h not in hosts]
        new_acl = dataclasses.replace(acl, serial=acl.serial + 1, hosts=tuple(hosts))
        upload["group"] = dataclasses.replace(group, acl=new_acl)
        upload["accepted"] = False
        self.trace(now, "acl_changed", group=group_name, serial=new_acl.serial,
                   removed=list(remove), added=list(add))
        self._upload(upload, now)

    def next_timer(self) -> float | None:
        times = [u["next"] for u in self.uploads.values() if u["next"] is not None]
        times += [
            t for t in (self.member_timer(), self.sender_timer()) if t is not None
        ]
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        self.handle_member_timer(now)
        self.handle_sender_timer(now)
        for upload in self.uploads.values():
            if upload["next"] is not None and now >= upload["next"]:
                self._upload(upload, now)

    def dispatch(self, received: Received, now: float) -> None:
        if received.message.header.type is MessageType.SENDER_KEY_GRANT:
            self.on_sender_grant(received, now)
            return
        if received.message.header.type is not MessageType.ACL_ACCEPT:
            super().dispatch(received, now)
            return
        answer = received.message
        assert isinstance(answer, AclAccept)
        upload = self.uploads.get(received.group.address)
        if upload is None or received.peer.name != received.group.primary_core:
            raise ProtocolError("ACL answer for no upload of ours",
                                reason="unexpected-answer")
        upload["next"] = None
        if answer.reason.code is ReasonCode.ACCEPTED:
            upload["accepted"] = True
            self.trace(now, "acl_accepted", group=received.group.name)
        else:
            self.trace(now, "acl_rejected", group=received.group.name,
                       reason=answer.reason.code.name.lower().replace("_", "-"),
                       detail=answer.reason.text)


def make_machine(config, identity, directory, randbytes) -> Machine:
    """Build the state machine for the node's role."""
    classes = {"host": Host, "router": Router, "core": Router, "initiator": Initiator}
    try:
        cls = classes[config.role]
    except KeyError:
        raise ConfigError(
            f"unknown role {config.role!r}, expected one of {sorted(classes)}"
        ) from None
    return cls(config, identity, directory, randbytes)
