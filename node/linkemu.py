"""Link impairments emulated at the sender: delay, jitter, loss and bandwidth.

The local backend has no netem, so each agent decides when a datagram it
sends over an emulated link arrives, or whether it is dropped.
``LinkDirection`` makes that decision without doing any I/O, and
``schedule_delivery`` runs the delivery on an asyncio loop at that time.

Time base: every time here is in seconds of one monotonic clock. ``now`` in
``LinkDirection.transmit`` and the returned ``deliver_at`` are in the clock
that the direction was given, and ``schedule_delivery`` reads
``deliver_at`` in the loop's clock. Pass ``clock=loop.time`` so that both
are the same clock. asyncio's default loops return ``time.monotonic()``
from ``loop.time()``, so ``time.monotonic`` also works with them.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import random
import weakref
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable

from node.errors import ConfigError

DEFAULT_QUEUE_LIMIT = 1 << 20


@dataclass(frozen=True)
class Impairment:
    """Impairments of one link direction.

    ``delay`` and ``jitter`` are in seconds, ``loss`` is the fraction of
    datagrams dropped, and ``bandwidth`` is in bits per second (None means
    unlimited, so datagrams take no time to serialise).
    """

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0
    bandwidth: int | None = None

    def __post_init__(self) -> None:
        for name in ("delay", "jitter"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(
                    f"invalid link {name} {value!r}: expected seconds >= 0"
                )
        if not 0.0 <= self.loss <= 1.0:
            raise ConfigError(
                f"invalid link loss {self.loss!r}: expected a fraction from 0 to 1"
            )
        if self.bandwidth is not None:
            _check_bandwidth(self.bandwidth)


def _check_bandwidth(bandwidth: object) -> None:
    # bool is an int subclass, but True bits/s is a configuration mistake
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int):
        raise ConfigError(f"invalid link bandwidth {bandwidth!r}: expected bits/s")
    if bandwidth <= 0:
        raise ConfigError(f"invalid link bandwidth {bandwidth}: expected bits/s > 0")


class DropReason(StrEnum):
    """Reason a link direction dropped a datagram, as traces and counters name it."""

    DOWN = "down"
    LOSS = "loss"
    QUEUE_FULL = "queue-full"


@dataclass(frozen=True)
class Transmission:
    """The fate of one datagram: a delivery time or a drop reason."""

    deliver_at: float | None
    drop_reason: DropReason | None = None

    @property
    def dropped(self) -> bool:
        return self.deliver_at is None


@dataclass
class _QueuedDatagram:
    finish_at: float
    size: int


class LinkDirection:
    """One direction of an emulated link, deciding when datagrams arrive.

    A datagram first waits in a FIFO queue while earlier datagrams are
    serialised at ``bandwidth``. It then takes ``delay`` plus a uniform jitter
    in [-jitter, +jitter] to propagate, and the sum is clamped at zero.
    No datagram arrives before one sent earlier on the same direction,
    so jitter never reorders.

    Loss is decided before the queue, as Linux netem does, so lost datagrams
    use no bandwidth. A datagram that would take the bytes waiting to be
    serialised past ``queue_limit`` is dropped as ``queue-full``.
    """

    def __init__(
        self,
        impairment: Impairment,
        rng: random.Random,
        clock: Callable[[], float],
        *,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ):
        if queue_limit < 0:
            raise ConfigError(f"invalid queue limit {queue_limit}: expected bytes >= 0")

        self.impairment = impairment
        self.queue_limit = queue_limit
        self.is_up = True
        self.offered = 0
        self.delivered = 0
        self.dropped: Counter[DropReason] = Counter()
        self._rng = rng
        self._clock = clock
        self._queue: deque[_QueuedDatagram] = deque()
        self._queued_bytes = 0
        self._last_deliver_at = -math.inf

    def set_up(self, is_up: bool) -> None:
        """Bring the direction up or down. A down direction drops every datagram.

        NOTE: datagrams accepted before the direction went down keep their
        delivery time, because the caller has already scheduled them.
        """
        self.is_up = is_up

    def update(self, impairment: Impairment) -> None:
        """Apply new impairments to datagrams offered from now on."""
        self.impairment = impairment

    def offer(self, size: int, now: float | None = None) -> float | None:
        """Return the delivery time of a ``size``-byte datagram, or None if dropped.

        ``now`` defaults to the direction's clock. Use ``transmit`` to learn
        why a datagram was dropped.
        """
        return self.transmit(size, now).deliver_at

    def transmit(self, size: int, now: float | None = None) -> Transmission:
        """Decide the fate of a ``size``-byte datagram sent at ``now``."""
        if size < 0:
            raise ValueError(f"invalid datagram size {size}: expected bytes >= 0")
        if now is None:
            now = self._clock()
        self.offered += 1

        reason = self._drop_reason(size, now)
        if reason is not None:
            self.dropped[reason] += 1
            return Transmission(None, reason)

        finish_at = self._serialise(size, now)
        deliver_at = max(finish_at + self._propagation_delay(), self._last_deliver_at)
        self._last_deliver_at = deliver_at
        self.delivered += 1
        return Transmission(deliver_at)

    @property
    def queued_bytes(self) -> int:
        """Bytes accepted but not yet fully serialised, as of the last offer."""
        return self._queued_bytes

    def _drop_reason(self, size: int, now: float) -> DropReason | None:
        if not self.is_up:
            return DropReason.DOWN

        loss = self.impairment.loss
        if loss > 0 and self._rng.random() < loss:
            return DropReason.LOSS

        self._forget_serialised(now)

        # without a bandwidth limit nothing waits, so no queue can fill
        if self.impairment.bandwidth is None:
            return None
        if self._queued_bytes + size > self.queue_limit:
            return DropReason.QUEUE_FULL
        return None

    def _forget_serialised(self, now: float) -> None:
        while self._queue and self._queue[0].finish_at <= now:
            self._queued_bytes -= self._queue.popleft().size

    def _serialise(self, size: int, now: float) -> float:
        """Queue the datagram and return when its last bit is on the wire."""
        bandwidth = self.impairment.bandwidth
        if bandwidth is None:
            return now

        # the link is busy until the datagram ahead of this one is serialised
        start = max(now, self._queue[-1].finish_at) if self._queue else now
        finish_at = start + size * 8 / bandwidth
        self._queue.append(_QueuedDatagram(finish_at, size))
        self._queued_bytes += size
        return finish_at

    def _propagation_delay(self) -> float:
        delay, jitter = self.impairment.delay, self.impairment.jitter
        if jitter > 0:
            delay += self._rng.uniform(-jitter, jitter)
        return max(delay, 0.0)


class Link:
    """A point-to-point link between endpoints ``a`` and ``b``.

    Each direction has its own random generator, seeded from ``rng``, so
    traffic in one direction does not change the losses of the other.
    ``impairment_ba`` defaults to ``impairment_ab``.
    """

    def __init__(
        self,
        a: str,
        b: str,
        impairment_ab: Impairment,
        impairment_ba: Impairment | None = None,
        *,
        rng: random.Random,
        clock: Callable[[], float],
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ):
        if a == b:
            raise ConfigError(f"invalid link from {a!r} to itself")

        self.a = a
        self.b = b
        if impairment_ba is None:
            impairment_ba = impairment_ab
        self.ab = LinkDirection(
            impairment_ab, _fork(rng), clock, queue_limit=queue_limit
        )
        self.ba = LinkDirection(
            impairment_ba, _fork(rng), clock, queue_limit=queue_limit
        )

    def direction(self, src: str, dst: str) -> LinkDirection:
        """Return the direction that carries datagrams from ``src`` to ``dst``."""
        if (src, dst) == (self.a, self.b):
            return self.ab
        if (src, dst) == (self.b, self.a):
            return self.ba
        raise ConfigError(
            f"link {self.a}-{self.b} does not connect {src!r} to {dst!r}"
        )

    def set_up(self, is_up: bool) -> None:
        """Bring both directions up or down."""
        self.ab.set_up(is_up)
        self.ba.set_up(is_up)


def _fork(rng: random.Random) -> random.Random:
    return random.Random(rng.getrandbits(64))


class DeliveryHandle:
    """A scheduled delivery that can still be cancelled."""

    __slots__ = ("cancelled",)

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass(order=True)
class _Delivery:
    deliver_at: float
    sequence: int
    callback: Callable[..., Any] = field(compare=False)
    args: tuple[Any, ...] = field(compare=False)
    handle: DeliveryHandle = field(compare=False)


class _DeliveryScheduler:
    """Runs the deliveries of one loop in time order, FIFO among equal times.

    ``loop.call_at`` alone is not enough because asyncio keeps timers in a
    heap that does not preserve the order of timers due at the same time,
    which would reorder datagrams on a link without delay. The scheduler
    refers to the loop and its timer only weakly, so that the registry of
    schedulers does not keep a closed loop alive.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop_ref = weakref.ref(loop)
        self._heap: list[_Delivery] = []
        self._sequence = itertools.count()
        self._timer_ref: weakref.ref[asyncio.TimerHandle] | None = None

    def schedule(
        self, deliver_at: float, callback: Callable[..., Any], args: tuple[Any, ...]
    ) -> DeliveryHandle:
        handle = DeliveryHandle()
        delivery = _Delivery(deliver_at, next(self._sequence), callback, args, handle)
        heapq.heappush(self._heap, delivery)
        self._arm()
        return handle

    def _arm(self) -> None:
        """Set the loop timer for the earliest pending delivery."""
        loop = self._loop_ref()
        if loop is None or not self._heap:
            return

        earliest = self._heap[0].deliver_at
        timer = self._timer_ref() if self._timer_ref is not None else None
        if timer is not None and not timer.cancelled():
            if timer.when() <= earliest:
                return
            timer.cancel()
        self._timer_ref = weakref.ref(loop.call_at(earliest, self._run_due))

    def _run_due(self) -> None:
        self._timer_ref = None
        loop = self._loop_ref()
        if loop is None:
            return

        # call_soon runs callbacks in FIFO order, and each on its own, so one
        # failing callback is reported by the loop without stopping the others
        now = loop.time()
        while self._heap and self._heap[0].deliver_at <= now:
            delivery = heapq.heappop(self._heap)
            if not delivery.handle.cancelled:
                loop.call_soon(delivery.callback, *delivery.args)
        self._arm()


_schedulers: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, _DeliveryScheduler
] = weakref.WeakKeyDictionary()


def schedule_delivery(
    loop: asyncio.AbstractEventLoop,
    deliver_at: float,
    callback: Callable[..., Any],
    *args: Any,
) -> DeliveryHandle:
    """Call ``callback(*args)`` on ``loop`` at ``deliver_at`` in ``loop.time()``.

    Deliveries run in time order, and those due at the same time run in the
    order they were scheduled. A time in the past runs on the next loop
    iteration.
    """
    scheduler = _schedulers.get(loop)
    if scheduler is None:
        scheduler = _DeliveryScheduler(loop)
        _schedulers[loop] = scheduler
    return scheduler.schedule(deliver_at, callback, args)
