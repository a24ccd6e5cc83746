"""Tests of the link impairment model and delivery scheduling in node.linkemu."""

from __future__ import annotations

import asyncio
import math
import random

import pytest

from node.errors import ConfigError
from node.linkemu import (
    DEFAULT_QUEUE_LIMIT,
    DropReason,
    Impairment,
    Link,
    LinkDirection,
    Transmission,
    schedule_delivery,
)


def fixed_clock() -> float:
    raise AssertionError("the test passes now explicitly")


def direction(impairment: Impairment, seed: int = 1, **kwargs: int) -> LinkDirection:
    return LinkDirection(impairment, random.Random(seed), fixed_clock, **kwargs)


# -- impairment ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"delay": -0.1}, "delay -0.1"),
        ({"delay": math.nan}, "delay nan"),
        ({"jitter": math.inf}, "jitter inf"),
        ({"loss": 1.5}, "loss 1.5"),
        ({"loss": -0.01}, "loss -0.01"),
        ({"loss": math.nan}, "loss nan"),
        ({"bandwidth": 0}, "bandwidth 0"),
        ({"bandwidth": -1}, "bandwidth -1"),
        ({"bandwidth": 1.5e6}, "bandwidth 1500000.0"),
        ({"bandwidth": True}, "bandwidth True"),
    ],
)
def test_invalid_impairment_rejected(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Impairment(**fields)  # type: ignore[arg-type]


def test_impairment_defaults() -> None:
    impairment = Impairment()

    assert impairment.delay == 0.0
    assert impairment.jitter == 0.0
    assert impairment.loss == 0.0
    assert impairment.bandwidth is None


def test_negative_queue_limit_rejected() -> None:
    with pytest.raises(ConfigError, match="queue limit -1"):
        direction(Impairment(), queue_limit=-1)


def test_negative_size_rejected() -> None:
    with pytest.raises(ValueError, match="size -1"):
        direction(Impairment()).offer(-1, 0.0)


# -- delay, jitter and loss ------------------------------------------------------


def test_zero_impairment_delivers_at_now() -> None:
    link = direction(Impairment())

    for now in (0.0, 0.5, 12.25, 12.25, 1e6):
        assert link.offer(1500, now) == now
    assert link.offered == 5
    assert link.delivered == 5
    assert sum(link.dropped.values()) == 0


def test_zero_impairment_takes_no_randomness() -> None:
    rng = random.Random(3)
    link = LinkDirection(Impairment(), rng, fixed_clock)
    link.offer(100, 0.0)

    assert rng.random() == random.Random(3).random()


def test_delay_added() -> None:
    link = direction(Impairment(delay=0.025))

    assert link.offer(100, 10.0) == pytest.approx(10.025)
    assert link.offer(100, 11.0) == pytest.approx(11.025)


def delivered_times(link: LinkDirection, sent: list[float]) -> list[float]:
    """Offer 100-byte datagrams at ``sent`` and return their delivery times."""
    arrivals = []
    for now in sent:
        arrival = link.offer(100, now)
        assert arrival is not None, f"datagram sent at {now} was dropped"
        arrivals.append(arrival)
    return arrivals


def test_jitter_bounds_without_reordering() -> None:
    delay, jitter = 0.05, 0.02
    link = direction(Impairment(delay=delay, jitter=jitter), seed=7)

    sent = [index * 0.001 for index in range(1_000)]
    arrivals = delivered_times(link, sent)

    for now, arrival in zip(sent, arrivals):
        assert now + delay - jitter <= arrival <= now + delay + jitter + 1e-12
    assert all(a <= b for a, b in zip(arrivals, arrivals[1:]))

    # the jitter is used, but the order rule delays datagrams that would
    # overtake, so early arrivals are rarer than late ones at this spacing
    offsets = [arrival - now for now, arrival in zip(sent, arrivals)]
    assert min(offsets) < delay
    assert max(offsets) > delay + jitter / 2


def test_jitter_uniform_when_spaced_out() -> None:
    delay, jitter = 0.05, 0.02
    link = direction(Impairment(delay=delay, jitter=jitter), seed=11)

    # one second apart, so the no-reordering rule never moves an arrival
    sent = [float(n) for n in range(2_000)]
    offsets = [arrival - now for now, arrival in zip(sent, delivered_times(link, sent))]
    mean = sum(offsets) / len(offsets)

    # the mean of U(-j, j) has standard deviation j / sqrt(3 n), about 0.00026 s
    assert mean == pytest.approx(delay, abs=0.0015)
    assert min(offsets) >= delay - jitter
    assert max(offsets) <= delay + jitter
    assert min(offsets) < delay - jitter * 0.9
    assert max(offsets) > delay + jitter * 0.9


def test_jitter_clamped_at_zero() -> None:
    link = direction(Impairment(delay=0.001, jitter=0.01), seed=5)

    sent = [float(n) for n in range(500)]
    offsets = [arrival - now for now, arrival in zip(sent, delivered_times(link, sent))]
    assert min(offsets) == 0.0
    assert max(offsets) <= 0.011


def test_loss_fraction_within_tolerance() -> None:
    link = direction(Impairment(loss=0.2), seed=2024)

    results = [link.offer(100, n * 0.001) for n in range(10_000)]
    lost = results.count(None)

    # binomial standard deviation is sqrt(10000 * 0.2 * 0.8) = 40, allow 5 of them
    assert 1_800 <= lost <= 2_200
    assert link.offered == 10_000
    assert link.dropped[DropReason.LOSS] == lost
    assert link.delivered == 10_000 - lost


def test_full_loss_drops_all() -> None:
    link = direction(Impairment(loss=1.0))

    assert [link.offer(100, 0.0) for _ in range(100)] == [None] * 100
    assert link.dropped["loss"] == 100


def test_same_seed_same_fate() -> None:
    impairment = Impairment(delay=0.01, jitter=0.005, loss=0.3)
    first = direction(impairment, seed=9)
    second = direction(impairment, seed=9)

    times = [n * 0.002 for n in range(300)]
    assert [first.offer(64, t) for t in times] == [second.offer(64, t) for t in times]


# -- bandwidth and queue -------------------------------------------------------


def test_bandwidth_serialises_back_to_back() -> None:
    link = direction(Impairment(bandwidth=1_000_000))

    arrivals = [link.offer(1_250, 0.0) for _ in range(10)]

    # 1,250 bytes at 1 Mbit/s take 10 ms each
    expected = [0.01 * (n + 1) for n in range(10)]
    assert arrivals == pytest.approx(expected)
    assert arrivals[-1] == pytest.approx(0.1)


def test_bandwidth_idle_link_starts_at_now() -> None:
    link = direction(Impairment(bandwidth=1_000_000))

    assert link.offer(1_250, 0.0) == pytest.approx(0.01)
    assert link.offer(1_250, 5.0) == pytest.approx(5.01)


def test_bandwidth_then_delay() -> None:
    link = direction(Impairment(delay=0.2, bandwidth=8_000))

    assert link.offer(1_000, 0.0) == pytest.approx(1.2)
    assert link.offer(1_000, 0.5) == pytest.approx(2.2)


def test_queue_overflow_dropped() -> None:
    # 1,000 bytes/s, so each 1,000-byte datagram keeps the link busy for 1 s
    link = direction(Impairment(bandwidth=8_000), queue_limit=3_000)

    fates = [link.transmit(1_000, 0.0) for _ in range(4)]

    assert [fate.deliver_at for fate in fates[:3]] == pytest.approx([1.0, 2.0, 3.0])
    assert fates[3] == Transmission(None, DropReason.QUEUE_FULL)
    assert fates[3].dropped
    assert link.dropped[DropReason.QUEUE_FULL] == 1
    assert link.queued_bytes == 3_000


def test_queue_drains_over_time() -> None:
    link = direction(Impairment(bandwidth=8_000), queue_limit=3_000)
    for _ in range(3):
        link.offer(1_000, 0.0)

    # by t=1 the first datagram is serialised, so one slot is free again
    assert link.offer(1_000, 1.0) == pytest.approx(4.0)
    assert link.offer(1_000, 1.0) is None
    assert link.queued_bytes == 3_000


def test_queue_limit_default() -> None:
    link = direction(Impairment(bandwidth=8_000))

    accepted = [link.offer(65_536, 0.0) for _ in range(17)]
    assert DEFAULT_QUEUE_LIMIT == 1 << 20
    assert None not in accepted[:16]
    assert accepted[16] is None


def test_unlimited_bandwidth_never_queue_full() -> None:
    link = direction(Impairment(), queue_limit=10)

    assert link.offer(65_507, 0.0) == 0.0
    assert link.dropped[DropReason.QUEUE_FULL] == 0


def test_lost_datagram_uses_no_bandwidth() -> None:
    link = direction(Impairment(loss=1.0, bandwidth=8_000))
    link.offer(1_000, 0.0)
    link.update(Impairment(bandwidth=8_000))

    assert link.offer(1_000, 0.0) == pytest.approx(1.0)


# -- link state and updates ------------------------------------------------------


def test_down_drops_until_up() -> None:
    link = direction(Impairment(delay=0.01))
    link.set_up(False)

    fates = [link.transmit(100, n * 0.1) for n in range(5)]
    assert all(fate == Transmission(None, DropReason.DOWN) for fate in fates)
    assert link.dropped["down"] == 5

    link.set_up(True)
    assert link.offer(100, 1.0) == pytest.approx(1.01)
    assert link.offered == 6
    assert link.delivered == 1


def test_update_applies_to_later_datagrams() -> None:
    link = direction(Impairment(delay=0.1))
    first = link.offer(100, 0.0)

    link.update(Impairment(delay=0.5))
    second = link.offer(100, 0.01)

    assert first == pytest.approx(0.1)
    assert second == pytest.approx(0.51)
    assert link.impairment == Impairment(delay=0.5)


def test_update_to_shorter_delay_keeps_order() -> None:
    link = direction(Impairment(delay=0.5))
    first = link.offer(100, 0.0)

    link.update(Impairment(delay=0.0))
    second = link.offer(100, 0.1)
    third = link.offer(100, 0.6)

    # the second datagram waits for the first instead of overtaking it
    assert first == pytest.approx(0.5)
    assert second == first
    assert third == pytest.approx(0.6)


def test_offer_reads_clock_when_now_missing() -> None:
    link = LinkDirection(Impairment(delay=1.0), random.Random(1), lambda: 42.0)

    assert link.offer(100) == pytest.approx(43.0)
    assert link.transmit(100).deliver_at == pytest.approx(43.0)


def test_drop_reason_strings() -> None:
    assert [reason.value for reason in DropReason] == ["down", "loss", "queue-full"]
    assert DropReason.QUEUE_FULL == "queue-full"


# -- link ------------------------------------------------------------------------


def make_link(**kwargs: object) -> Link:
    return Link(
        "r1",
        "r2",
        Impairment(delay=0.01),
        rng=random.Random(4),
        clock=fixed_clock,
        **kwargs,  # type: ignore[arg-type]
    )


def test_link_directions() -> None:
    link = make_link(impairment_ba=Impairment(delay=0.02))

    assert link.direction("r1", "r2") is link.ab
    assert link.direction("r2", "r1") is link.ba
    assert link.ab.offer(1, 0.0) == pytest.approx(0.01)
    assert link.ba.offer(1, 0.0) == pytest.approx(0.02)


def test_link_reverse_defaults_to_forward() -> None:
    link = make_link()

    assert link.ba.impairment == Impairment(delay=0.01)
    assert link.ab is not link.ba


def test_link_unknown_endpoint_rejected() -> None:
    with pytest.raises(ConfigError, match="does not connect 'r1' to 'r3'"):
        make_link().direction("r1", "r3")


def test_link_to_itself_rejected() -> None:
    with pytest.raises(ConfigError, match="to itself"):
        Link("r1", "r1", Impairment(), rng=random.Random(1), clock=fixed_clock)


def test_link_set_up_both_directions() -> None:
    link = make_link()
    link.set_up(False)

    assert link.ab.offer(1, 0.0) is None
    assert link.ba.offer(1, 0.0) is None

    link.set_up(True)
    assert link.ab.offer(1, 0.0) is not None
    assert link.ba.offer(1, 0.0) is not None


def test_link_queue_limit_passed_on() -> None:
    link = make_link(queue_limit=5)

    assert link.ab.queue_limit == 5
    assert link.ba.queue_limit == 5


def test_link_directions_draw_independently() -> None:
    def reverse_fates(forward_traffic: int) -> list[float | None]:
        impairment = Impairment(loss=0.5, jitter=0.01)
        link = Link("a", "b", impairment, rng=random.Random(8), clock=fixed_clock)
        for _ in range(forward_traffic):
            link.ab.offer(10, 0.0)
        return [link.ba.offer(10, n * 1.0) for n in range(50)]

    assert reverse_fates(0) == reverse_fates(100)


# -- scheduling on asyncio -----------------------------------------------------


def test_schedule_same_time_fifo() -> None:
    async def main() -> list[int]:
        loop = asyncio.get_running_loop()
        delivered: list[int] = []
        deliver_at = loop.time() + 0.01
        for index in range(200):
            schedule_delivery(loop, deliver_at, delivered.append, index)
        await asyncio.sleep(0.1)
        return delivered

    assert asyncio.run(main()) == list(range(200))


def test_schedule_runs_in_time_order() -> None:
    async def main() -> list[tuple[float, float]]:
        loop = asyncio.get_running_loop()
        runs: list[tuple[float, float]] = []
        start = loop.time()
        for offset in (0.05, 0.01, 0.03, 0.01, 0.0, -1.0):
            deliver_at = start + offset
            schedule_delivery(
                loop, deliver_at, lambda at: runs.append((at, loop.time())), deliver_at
            )
        await asyncio.sleep(0.15)
        return runs

    runs = asyncio.run(main())
    scheduled = [deliver_at for deliver_at, _ in runs]
    assert len(runs) == 6
    assert scheduled == sorted(scheduled)
    assert all(ran_at >= deliver_at for deliver_at, ran_at in runs)


def test_schedule_earlier_rearms_timer() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        schedule_delivery(loop, loop.time() + 5.0, order.append, "late")
        schedule_delivery(loop, loop.time() + 0.01, order.append, "early")
        await asyncio.sleep(0.1)
        return order

    assert asyncio.run(main()) == ["early"]


def test_schedule_cancel() -> None:
    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        order: list[str] = []
        handle = schedule_delivery(loop, loop.time() + 0.01, order.append, "cancelled")
        schedule_delivery(loop, loop.time() + 0.01, order.append, "kept")
        handle.cancel()
        await asyncio.sleep(0.05)
        return order

    assert asyncio.run(main()) == ["kept"]


def test_schedule_failing_callback_isolated() -> None:
    async def main() -> tuple[list[str], list[str]]:
        loop = asyncio.get_running_loop()
        errors: list[str] = []
        loop.set_exception_handler(
            lambda _, context: errors.append(str(context.get("exception")))
        )
        order: list[str] = []

        def fail() -> None:
            raise RuntimeError("delivery failed")

        deliver_at = loop.time() + 0.01
        schedule_delivery(loop, deliver_at, fail)
        schedule_delivery(loop, deliver_at, order.append, "after")
        await asyncio.sleep(0.05)
        return order, errors

    order, errors = asyncio.run(main())
    assert order == ["after"]
    assert errors == ["delivery failed"]


def test_link_delivery_on_loop_clock() -> None:
    async def main() -> tuple[list[tuple[int, float]], list[float]]:
        loop = asyncio.get_running_loop()
        link = LinkDirection(
            Impairment(delay=0.02, jitter=0.01), random.Random(3), loop.time
        )
        received: list[tuple[int, float]] = []
        promised = []
        for index in range(50):
            deliver_at = link.offer(100)
            assert deliver_at is not None
            promised.append(deliver_at)
            schedule_delivery(
                loop,
                deliver_at,
                lambda i: received.append((i, loop.time())),
                index,
            )
        await asyncio.sleep(0.2)
        return received, promised

    received, promised = asyncio.run(main())
    assert [index for index, _ in received] == list(range(50))
    assert all(ran_at >= promised[index] for index, ran_at in received)
