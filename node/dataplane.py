"""Group data at routers: packet handles and forwarding along the shared tree.

CBT's tree is bidirectional: a router passes a data packet to every tree
neighbour (its parent, its children and the member hosts it serves) except
the one it came from, so each member gets each packet once. Between tree
neighbours every packet carries a packet handle (node/handles.py), and a
router drops a packet from a tree neighbour whose handle does not verify.

A packet from a neighbour that is not on the tree is a non-member sender's
packet entering the tree, as in CBTv1's non-member sending. An on-tree router
passes it to all its tree neighbours, and a router off the tree passes it
one hop toward the primary core. Off-tree hops carry no handle, because the
two ends agreed no secret. Routers never decrypt group data: receivers check
the AEAD tag and the sender's signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .datapacket import DataPacket
from .errors import AuthenticationFailed, ConfigError, ProtocolError
from .handles import SECRET_SIZE, HandleTable, seal_info
from .machine import Machine, Peer, Transmit
from .messages import SealedBundle

if TYPE_CHECKING:
    from .tree import GroupState


@dataclass
class DataPlaneState:
    """A router's data-plane state in one group: handles and its own stream.

    The router's stream carries the packets it originates itself: the
    primary core's announcements of non-member senders' keys.
    """

    handles: HandleTable
    stream_spi: int = 0
    next_seq: int = 1


class DataRouter(Machine):
    """The data-plane half of the router machine (see the module doc)."""

    groups: dict[str, GroupState]
    routes: dict[str, str]

    def init_data_plane(self) -> None:
        self.data_plane: dict[str, DataPlaneState] = {
            address: DataPlaneState(HandleTable(self.name)) for address in self.groups
        }
        self._neighbour_addresses = {
            name: address for address, name in self.config.neighbours.items()
        }

    # handles, agreed during the secure join

    def issue_handle(self, state: GroupState, peer: Peer) -> SealedBundle:
        """Make a fresh handle secret for a new child or member, sealed to it."""
        group = state.config
        secret = self.randbytes(SECRET_SIZE)
        self.data_plane[group.address].handles.set(peer.name, secret)
        sealed = peer.seal(secret, seal_info(group.address, self.name, peer.name))
        return SealedBundle(peer.name, sealed)

    def open_handle(
        self, state: GroupState, sealed: SealedBundle, sender: str
    ) -> bytes:
        """Open the handle secret a parent sealed to this router in its join-ack.

        Raises ``AuthenticationFailed`` with reason ``bad-seal``.
        """
        group = state.config
        if sealed.recipient != self.name:
            raise AuthenticationFailed(
                f"packet handle is sealed to {sealed.recipient}", reason="bad-seal"
            )
        info = seal_info(group.address, sender, self.name)
        return self.identity.open(group.suite, sealed.sealed, info)

    def accept_handle(self, state: GroupState, parent: str, secret: bytes) -> None:
        try:
            self.data_plane[state.config.address].handles.set(parent, secret)
        except ConfigError as error:
            raise AuthenticationFailed(str(error), reason="bad-seal") from None

    def tree_neighbours(self, state: GroupState) -> set[str]:
        """Return the parent, children and members of an on-tree router."""
        if not state.on_tree:
            return set()
        neighbours = set(state.children) | set(state.members)
        if state.parent is not None:
            neighbours.add(state.parent)
        return neighbours

    def prune_handles(self) -> None:
        """Drop the handles of routers and hosts no longer on the tree here."""
        for address, state in self.groups.items():
            plane = self.data_plane[address]
            upstream = {r.upstream for r in state.requests.values() if r.upstream}
            plane.handles.retain(self.tree_neighbours(state) | upstream)

    # forwarding

    def receive_data(self, datagram: bytes, source: str, now: float) -> None:
        packet = DataPacket.decode(datagram)
        state = self.groups.get(packet.group)
        if state is None:
            raise ProtocolError(f"data for unknown group {packet.group}",
                                reason="unknown-group")
        peer = self.config.neighbours.get(source)
        if peer is None:
            raise AuthenticationFailed(f"data from {source}, not a neighbour",
                                       reason="not-neighbour")
        try:
            self._check_arrival(state, packet, peer)
        except ProtocolError as error:
            self.counters[f"data-drop:{error.reason}"] += 1
            self.trace(now, "data_rejected", group=state.config.name,
                       sender=packet.sender, peer=peer, seq=packet.seq,
                       reason=error.reason)
            return
        self.counters["data-forwarded"] += 1
        self.forward_data(state, packet, peer, now)

    def _check_arrival(self, state: GroupState, packet: DataPacket, peer: str) -> None:
        # NOTE: off-tree data carries no handle, so any neighbour off the tree
        # can inject packets that the tree carries to every member, where the
        # AEAD tag and the sender's signature reject them; nothing limits the rate
        if packet.hop_limit <= 1:
            raise ProtocolError("data packet ran out of hops", reason="hop-limit")
        plane = self.data_plane[state.config.address]
        if peer in self.tree_neighbours(state):
            if not packet.on_tree:
                raise AuthenticationFailed(
                    f"off-tree data from tree neighbour {peer}", reason="no-handle"
                )
            plane.handles.verify(peer, packet.handled_bytes(), packet.handle)
        elif packet.on_tree:
            # RFC 1949 section 3: on-tree data comes only from tree neighbours,
            # whose handle this router can check
            raise AuthenticationFailed(
                f"on-tree data from {peer}, which is not a tree neighbour",
                reason="not-tree-neighbour",
            )

    def forward_data(
        self, state: GroupState, packet: DataPacket, arrived_from: str | None,
        now: float,
    ) -> int:
        """Pass a packet on along the tree, or toward the core when off it.

        Returns the number of copies sent.
        """
        if not state.on_tree:
            return self._toward_core(state, packet, arrived_from)
        plane = self.data_plane[state.config.address]
        sent = 0
        for neighbour in sorted(self.tree_neighbours(state) - {arrived_from}):
            if neighbour not in plane.handles:
                # the join-ack or key delivery that carries it is still on its way
                self.counters["data-drop:no-handle"] += 1
                continue
            unhandled = packet.next_hop(on_tree=True, handle=b"")
            handle = plane.handles.tag(neighbour, unhandled.handled_bytes())
            self._send_packet(neighbour, packet.next_hop(on_tree=True, handle=handle))
            sent += 1
        return sent

    def _toward_core(
        self, state: GroupState, packet: DataPacket, arrived_from: str | None
    ) -> int:
        hop_address = self.routes.get(state.config.core_addresses[0])
        hop = self.config.neighbours.get(hop_address) if hop_address else None
        if hop is None or hop == arrived_from:
            self.counters["data-drop:no-route"] += 1
            return 0
        self._send_packet(hop, packet.next_hop(on_tree=False, handle=b""))
        return 1

    def _send_packet(self, neighbour: str, packet: DataPacket) -> None:
        address = self.config.peer_addresses.get(
            neighbour, self._neighbour_addresses.get(neighbour)
        )
        if address is None:
            self.counters["data-drop:no-address"] += 1
            return
        self.counters["sent:DATA"] += 1
        self._outputs.append(Transmit(address, packet.encode(), neighbour))
