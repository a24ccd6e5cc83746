"""Link-state unicast routing between neighbouring routers, without I/O.

RFC 1949 takes a router's next hop toward a core "from the underlying unicast
routing table". In a testbed nothing else provides that table, so routers
run a small link-state protocol in the manner of OSPF (RFC 2328), reduced to
what CBT needs:

- every ``hello_interval`` a router sends each neighbour router a hello that
  lists the routers it has heard, so an adjacency counts once both ends hear
  each other; a neighbour silent for ``router_dead_interval`` is down;
- a router advertises its working adjacencies in an LSA that it signs itself,
  originates again when they change and every ``lsa_refresh_interval``, and
  that every router floods on unchanged, so any router can check its origin;
- a hello also summarises the sender's LSA database, and the receiver sends
  back every LSA the sender lacks or holds in an older copy, so a lost flood
  is repaired within one hello interval without acknowledgements;
- shortest paths over links that both ends advertise give the next hop.

The :class:`LinkState` here keeps the neighbour table and the database and
computes routes; the router machine signs, sends and verifies the messages.
Names are identity names; next hops come out as transport addresses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx

from .errors import AuthenticationFailed, ProtocolError
from .machine import ROUTER_ROLES, Machine, Received, Timers
from .messages import (
    NO_GROUP,
    ROUTING_TYPES,
    ControlHeader,
    Hello,
    HelloBody,
    LinkStateUpdate,
    Lsa,
    MessageType,
    SignedLsa,
)

# an LSA sequence may run this far ahead of the receiver's clock, in ms, as
# a token's time may. A sequence farther ahead would outlive every later LSA
# of its origin
MAX_SEQUENCE_SKEW_MS = 30_000

# a database contains at most this many LSAs, so a flood cannot exhaust memory
MAX_LSAS = 4096

# LSAs sent back to one hello's summary, at most; the next hello sends more
MAX_LSAS_PER_HELLO = 64

# per neighbour: routing messages accepted in a burst, and per second after it
RATE_BURST = 256
RATE_PER_SECOND = 64.0


@dataclass
class Neighbour:
    """A directly connected router: its transport address and adjacency state.

    ``sent`` maps an LSA origin to the sequence last sent to this neighbour
    and when, so a hello summary that lags behind a flood does not make the
    router send the same LSA again at once.
    """

    name: str
    address: str
    cost: int
    heard_at: float | None = None
    two_way: bool = False
    sent: dict[str, tuple[int, float]] = field(default_factory=dict)


@dataclass
class StoredLsa:
    signed: SignedLsa
    received_at: float

    @property
    def lsa(self) -> Lsa:
        return self.signed.lsa


@dataclass
class HelloOutcome:
    """The result of one hello: adjacency changes, and the LSAs to send back."""

    adjacency_changed: bool
    first_heard: bool
    lsas_to_send: list[SignedLsa] = field(default_factory=list)


class RateLimiter:
    """A token bucket per source: ``burst`` messages, refilled at ``rate`` per s."""

    def __init__(self, burst: int = RATE_BURST, rate: float = RATE_PER_SECOND):
        self.burst = burst
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, source: str, now: float) -> bool:
        tokens, last = self._buckets.get(source, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[source] = (tokens, now)
            return False
        self._buckets[source] = (tokens - 1.0, now)
        return True


class LinkState:
    """One router's neighbour table, LSA database and routes.

    ``neighbours`` maps each neighbour router's name to its transport
    address, and ``costs`` maps some of them to a link cost (default 1).
    """

    def __init__(
        self,
        name: str,
        address: str,
        neighbours: dict[str, str],
        costs: dict[str, int],
        timers: Timers,
    ):
        self.name = name
        self.address = address
        self.timers = timers
        self.neighbours = {
            peer: Neighbour(peer, peer_address, max(1, int(costs.get(peer, 1))))
            for peer, peer_address in sorted(neighbours.items())
        }
        self.database: dict[str, StoredLsa] = {}
        self.routes: dict[str, str] = {}
        self.next_hops: dict[str, str] = {}
        self.next_hello: float | None = None
        self.next_refresh: float | None = None
        self.last_origination: float | None = None
        self.origination_due: float | None = None
        self.spf_due: float | None = None
        self._sequence = 0

    # adjacencies

    def adjacent(self) -> list[str]:
        """Return the neighbour routers whose adjacency works both ways."""
        return [n.name for n in self.neighbours.values() if n.two_way]

    def is_adjacent(self, name: str) -> bool:
        neighbour = self.neighbours.get(name)
        return neighbour is not None and neighbour.two_way

    def hello_body(self, now: float) -> HelloBody:
        heard = tuple(n.name for n in self.neighbours.values() if self._alive(n, now))
        summary = tuple(
            (origin, stored.lsa.sequence)
            for origin, stored in sorted(self.database.items())
        )
        return HelloBody(heard, summary)

    def _alive(self, neighbour: Neighbour, now: float) -> bool:
        if neighbour.heard_at is None:
            return False
        return now - neighbour.heard_at < self.timers.router_dead_interval

    def on_hello(self, peer: str, body: HelloBody, now: float) -> HelloOutcome:
        """Record a hello from neighbour ``peer`` and compare database summaries."""
        neighbour = self.neighbours[peer]
        first_heard = not self._alive(neighbour, now)
        neighbour.heard_at = now
        two_way = self.name in body.heard
        changed = two_way != neighbour.two_way
        neighbour.two_way = two_way
        if not two_way:
            neighbour.sent.clear()
        outcome = HelloOutcome(changed, first_heard)
        if two_way:
            outcome.lsas_to_send = self._missing_at_peer(neighbour, body.summary, now)
        return outcome

    def _missing_at_peer(
        self, neighbour: Neighbour, summary: tuple[tuple[str, int], ...], now: float
    ) -> list[SignedLsa]:
        theirs = dict(summary)
        missing = []
        for origin, stored in sorted(self.database.items()):
            sequence = stored.lsa.sequence
            if theirs.get(origin, -1) >= sequence:
                continue
            sent, sent_at = neighbour.sent.get(origin, (-1, 0.0))
            # a copy sent less than a dead interval ago may still be on its way
            if sent == sequence and now - sent_at < self.timers.router_dead_interval:
                continue
            missing.append(stored.signed)
        return missing[:MAX_LSAS_PER_HELLO]

    def record_sent(self, neighbour: str, lsa: Lsa, now: float) -> None:
        self.neighbours[neighbour].sent[lsa.origin] = (lsa.sequence, now)

    def expire_neighbours(self, now: float) -> list[str]:
        """Take down adjacencies whose neighbour fell silent; return their names."""
        lost = []
        for neighbour in self.neighbours.values():
            if neighbour.heard_at is not None and not self._alive(neighbour, now):
                neighbour.heard_at = None
                if neighbour.two_way:
                    neighbour.two_way = False
                    lost.append(neighbour.name)
        return lost

    # the LSA database

    def own_lsa(self, now: float) -> Lsa:
        """Build this router's next LSA; its sequence always grows."""
        self._sequence = max(self._sequence + 1, int(now * 1000))
        links = tuple(
            (n.name, n.cost) for n in self.neighbours.values() if n.two_way
        )
        return Lsa(self.name, self.address, self._sequence, links)

    def origination_allowed(self, now: float) -> bool:
        last = self.last_origination
        return last is None or now - last >= self.min_ls_interval

    @property
    def spf_delay(self) -> float:
        return self.timers.hello_interval / 10

    @property
    def min_ls_interval(self) -> float:
        # OSPF's MinLSInterval (5 s beside a 10 s hello), here half a hello
        # interval, so adjacencies that come up together share one LSA
        return self.timers.hello_interval / 2

    def originated(self, signed: SignedLsa, now: float) -> None:
        self.database[self.name] = StoredLsa(signed, now)
        self.last_origination = now
        self.origination_due = None
        self.next_refresh = now + self.timers.lsa_refresh_interval

    def is_newer(self, lsa: Lsa) -> bool:
        stored = self.database.get(lsa.origin)
        return stored is None or lsa.sequence > stored.lsa.sequence

    def install(self, signed: SignedLsa, now: float) -> bool:
        """Store ``signed`` if it is newer than the copy held; return whether it was.

        An LSA of this router's own name that is newer than the last one it
        originated is a copy from before a restart, so the router's next
        origination must outnumber it.
        """
        lsa = signed.lsa
        if not self.is_newer(lsa):
            return False
        if lsa.origin == self.name:
            self._sequence = max(self._sequence, lsa.sequence)
            return False
        if lsa.origin not in self.database and len(self.database) >= MAX_LSAS:
            return False
        self.database[lsa.origin] = StoredLsa(signed, now)
        return True

    def age_out(self, now: float) -> list[str]:
        """Drop other routers' LSAs not refreshed for three refresh intervals."""
        max_age = 3 * self.timers.lsa_refresh_interval
        old = [
            origin for origin, stored in self.database.items()
            if origin != self.name and now - stored.received_at > max_age
        ]
        for origin in old:
            del self.database[origin]
        return old

    # shortest paths

    def compute_routes(self) -> dict[str, str]:
        """Recompute routes; return identity address -> next hop transport address.

        A link counts only when both of its ends advertise it, so a router
        that died, whose own last LSA still lists its links, drops out once
        its neighbours stop advertising it.
        """
        graph = nx.DiGraph()
        graph.add_node(self.name)
        advertised = {
            origin: dict(stored.lsa.links) for origin, stored in self.database.items()
        }
        for origin in sorted(advertised):
            for neighbour, cost in sorted(advertised[origin].items()):
                if origin in advertised.get(neighbour, {}):
                    graph.add_edge(origin, neighbour, cost=cost)

        paths = nx.single_source_dijkstra_path(graph, self.name, weight="cost")
        routes = {}
        next_hops = {}
        for target, path in sorted(paths.items()):
            if len(path) < 2 or target not in self.database:
                continue
            first = self.neighbours.get(path[1])
            if first is None or not first.two_way:
                continue
            next_hops[target] = first.name
            routes[self.database[target].lsa.address] = first.address
        self.routes = routes
        self.next_hops = next_hops
        return routes

    # timers

    def next_timer(self) -> float | None:
        times = [self.next_hello, self.next_refresh, self.origination_due, self.spf_due]
        times += [
            n.heard_at + self.timers.router_dead_interval
            for n in self.neighbours.values() if n.heard_at is not None
        ]
        return min((t for t in times if t is not None), default=None)


class RoutingMixin(Machine):
    """The link-state protocol inside a router machine.

    With ``routing: static`` a router uses the routes in its config and
    ignores routing messages. With ``link-state`` it starts with no routes,
    learns them from its neighbours, and calls :meth:`on_routes_changed`
    whenever its next hops change.
    """

    def init_routing(self) -> None:
        self.routes: dict[str, str] = dict(self.config.routes)
        self.link_state: LinkState | None = None
        self.rate_limiter = RateLimiter()

    def start_routing(self, now: float) -> None:
        if self.config.routing != "link-state":
            return
        self.routes = {}
        neighbours = self._neighbour_routers(now)
        self.link_state = LinkState(
            self.name, self.config.address, neighbours, self.config.link_costs,
            self.config.timers,
        )
        self.trace(now, "routing_started", neighbours=sorted(neighbours))
        # the first LSA waits for the first adjacency, since one without links
        # gives no router a route
        self._send_hellos(now)

    def _neighbour_routers(self, now: float) -> dict[str, str]:
        """Return name -> transport address of the neighbours that are routers."""
        routers = {}
        for address, name in self.config.neighbours.items():
            try:
                suite = self.config.routing_suite
                self.directory.lookup(name, suite, now, ROUTER_ROLES)
            except AuthenticationFailed:
                continue
            routers[name] = address
        return routers

    def on_routes_changed(self, now: float) -> None:
        """Called after the next hops changed; the tree reacts here."""

    def on_adjacency_lost(self, name: str, now: float) -> None:
        """Called when the adjacency to neighbour router ``name`` goes down."""

    def routing_status(self) -> dict[str, Any]:
        cores = {
            address
            for group in self.config.groups
            for address in group.core_addresses
            if address != self.config.address
        }
        status: dict[str, Any] = {
            "mode": self.config.routing,
            "routes": len(self.routes),
            "reaches_cores": cores <= set(self.routes),
        }
        if self.link_state is not None:
            status["adjacent"] = self.link_state.adjacent()
            status["lsas"] = len(self.link_state.database)
        return status

    # receiving

    def admit(self, message_type: MessageType, source: str, now: float) -> None:
        if message_type in ROUTING_TYPES and not self.rate_limiter.allow(source, now):
            raise ProtocolError(
                f"routing messages from {source} exceed {RATE_PER_SECOND:g} per s",
                reason="rate-limited",
            )

    def on_routing_message(self, received: Received, now: float) -> None:
        link_state = self.link_state
        if link_state is None:
            if self.config.routing == "link-state":
                # the socket may be open a moment before the machine starts
                raise ProtocolError("routing has not started yet",
                                    reason="not-started")
            raise ProtocolError("this router uses static routes",
                                reason="unexpected-message")
        if received.peer.name not in link_state.neighbours:
            raise ProtocolError(f"{received.peer.name} is not a neighbour router",
                                reason="not-neighbour")
        message = received.message
        if isinstance(message, Hello):
            self._on_hello(link_state, received.peer.name, message, now)
        elif isinstance(message, LinkStateUpdate):
            self._on_lsa(link_state, received.peer.name, message.lsa, now)

    def _on_hello(
        self, link_state: LinkState, peer: str, hello: Hello, now: float
    ) -> None:
        outcome = link_state.on_hello(peer, hello.hello, now)
        if outcome.first_heard:
            # send a hello back at once, so the neighbour sees a two-way
            # adjacency sooner
            self._send_hello(link_state, link_state.neighbours[peer], now)
        if outcome.adjacency_changed:
            up = link_state.is_adjacent(peer)
            self.trace(now, "adjacency", peer=peer, up=up)
            self._originate(now)
            if not up:
                self._recompute_routes(now)
                self.on_adjacency_lost(peer, now)
        for signed in outcome.lsas_to_send:
            self._send_lsa(link_state.neighbours[peer], signed, now)

    def _on_lsa(
        self, link_state: LinkState, peer: str, signed: SignedLsa, now: float
    ) -> None:
        lsa = signed.lsa
        if not link_state.is_newer(lsa):
            return
        origin = self.directory.lookup(
            lsa.origin, self.config.routing_suite, now, ROUTER_ROLES
        )
        if origin.address != lsa.address:
            raise AuthenticationFailed(
                f"LSA of {lsa.origin} names {lsa.address}, its certificate "
                f"{origin.address}",
                reason="bad-lsa",
            )
        origin.verify(signed.signature, signed.signed_bytes())
        if lsa.sequence > int(now * 1000) + MAX_SEQUENCE_SKEW_MS:
            raise AuthenticationFailed(
                f"LSA sequence of {lsa.origin} is ahead of this router's clock",
                reason="future-lsa",
            )

        if lsa.origin == self.name:
            # a copy from before this router restarted: outnumber it
            link_state.install(signed, now)
            self._originate(now)
            return
        if link_state.install(signed, now):
            self._flood(link_state, signed, now, exclude=peer)
            self._schedule_spf(now)

    # sending

    def _routing_header(self, message_type: MessageType) -> ControlHeader:
        return ControlHeader(message_type, NO_GROUP, origin=self.config.address)

    def _send_hellos(self, now: float) -> None:
        link_state = self.link_state
        assert link_state is not None
        for neighbour in link_state.neighbours.values():
            self._send_hello(link_state, neighbour, now)
        link_state.next_hello = now + self.config.timers.hello_interval

    def _send_hello(
        self, link_state: LinkState, neighbour: Neighbour, now: float
    ) -> None:
        hello = Hello(
            self._routing_header(MessageType.HELLO),
            self.new_token(neighbour.name, now),
            link_state.hello_body(now),
        )
        self.send_signed(hello, self.config.routing_suite, neighbour.address,
                         neighbour.name)

    def _send_lsa(self, neighbour: Neighbour, signed: SignedLsa, now: float) -> None:
        assert self.link_state is not None
        self.link_state.record_sent(neighbour.name, signed.lsa, now)
        update = LinkStateUpdate(
            self._routing_header(MessageType.LINK_STATE),
            self.new_token(neighbour.name, now),
            signed,
        )
        self.send_signed(update, self.config.routing_suite, neighbour.address,
                         neighbour.name)

    def _flood(
        self, link_state: LinkState, signed: SignedLsa, now: float, exclude: str = ""
    ) -> None:
        for name in link_state.adjacent():
            if name != exclude:
                self._send_lsa(link_state.neighbours[name], signed, now)

    def _originate(self, now: float) -> None:
        """Advertise this router's adjacencies now, or as soon as allowed."""
        link_state = self.link_state
        assert link_state is not None
        if not link_state.origination_allowed(now):
            last = link_state.last_origination or now
            link_state.origination_due = last + link_state.min_ls_interval
            # adjacency changes move next hops even before the LSA goes out
            self._schedule_spf(now)
            return
        lsa = link_state.own_lsa(now)
        body = lsa.encode()
        signature = self.identity.sign(
            self.config.routing_suite, SignedLsa(body, b"", lsa).signed_bytes()
        )
        signed = SignedLsa(body, signature, lsa)
        link_state.originated(signed, now)
        self._flood(link_state, signed, now)
        self._schedule_spf(now)

    def _schedule_spf(self, now: float) -> None:
        """Recompute routes shortly, once for a burst of changes (OSPF's SPF delay)."""
        link_state = self.link_state
        assert link_state is not None
        if link_state.spf_due is None:
            link_state.spf_due = now + link_state.spf_delay

    def _recompute_routes(self, now: float) -> None:
        link_state = self.link_state
        assert link_state is not None
        link_state.spf_due = None
        old = self.routes
        routes = link_state.compute_routes()
        if routes == old:
            return
        self.routes = routes
        changed = sorted(
            address for address in set(old) | set(routes)
            if old.get(address) != routes.get(address)
        )
        self.trace(now, "routes_changed", routes=len(routes), changed=changed)
        self.on_routes_changed(now)

    # timers

    def routing_timer(self) -> float | None:
        if self.link_state is None:
            return None
        return self.link_state.next_timer()

    def handle_routing_timer(self, now: float) -> None:
        link_state = self.link_state
        if link_state is None:
            return
        lost = link_state.expire_neighbours(now)
        for name in lost:
            self.trace(now, "adjacency", peer=name, up=False)
        due = link_state.origination_due
        refresh = link_state.next_refresh
        if lost or (due is not None and now >= due) or (
            refresh is not None and now >= refresh
        ):
            self._originate(now)
        if lost:
            # routes around a lost neighbour are needed at once, by re-joins
            self._recompute_routes(now)
        for name in lost:
            self.on_adjacency_lost(name, now)
        if link_state.next_hello is not None and now >= link_state.next_hello:
            self._send_hellos(now)
        if link_state.age_out(now):
            self._schedule_spf(now)
        if link_state.spf_due is not None and now >= link_state.spf_due:
            self._recompute_routes(now)
