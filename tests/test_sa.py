"""The group SA: anti-replay windows, per-sender subkeys, epochs and erasure."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_figure1 import holds_bytes

from node.errors import AuthenticationFailed, ConfigError, MalformedMessage
from node.sa import (
    ERASED_MEMORY,
    DataKey,
    GroupSA,
    ReplayTable,
    ReplayWindow,
)

NOW = 1_800_000_000.0
KEY = bytes(range(16))
OTHER_KEY = bytes(range(16, 32))
AAD = b"header"


def reason_of(call, *args) -> str:
    with pytest.raises(AuthenticationFailed) as caught:
        call(*args)
    return caught.value.reason


# the replay window


def test_window_accepts_increasing_sequence():
    window = ReplayWindow(8)

    for seq in (1, 2, 3, 10):
        window.check(seq)
        window.update(seq)

    assert window.top == 10


def test_window_rejects_replay():
    window = ReplayWindow(8)
    window.update(5)

    assert reason_of(window.check, 5) == "replayed-data"


def test_window_accepts_late_packet_once():
    window = ReplayWindow(8)
    window.update(5)

    window.update(3)

    assert reason_of(window.check, 3) == "replayed-data"


def test_window_rejects_below_window():
    window = ReplayWindow(8)
    window.update(20)

    assert reason_of(window.check, 12) == "stale-data"
    window.check(13)


def test_window_rejects_zero_and_overflow():
    window = ReplayWindow(8)

    with pytest.raises(MalformedMessage):
        window.check(0)
    with pytest.raises(MalformedMessage):
        window.check(2**64)


def test_window_large_jump_clears_bitmap():
    window = ReplayWindow(8)
    window.update(1)
    window.update(1000)

    window.check(999)
    assert reason_of(window.check, 1000) == "replayed-data"


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=200))
def test_window_matches_a_model(sequence):
    window = ReplayWindow(32)
    accepted: set[int] = set()
    top = 0
    for seq in sequence:
        fresh = seq not in accepted and seq > top - 32
        try:
            window.update(seq)
        except AuthenticationFailed:
            assert not fresh
            continue
        assert fresh
        accepted.add(seq)
        top = max(top, seq)


def test_table_keeps_streams_apart():
    table = ReplayTable(8)
    table.update("h", 1, 5)

    table.check("h", 2, 5)
    table.check("h2", 1, 5)
    assert reason_of(table.check, "h", 1, 5) == "replayed-data"


def test_table_is_bounded():
    table = ReplayTable(8, max_streams=2)
    for sender in ("a", "b", "c"):
        table.update(sender, 1, 1)

    assert len(table) == 2
    table.check("a", 1, 1)


def test_table_forgets_a_sender():
    table = ReplayTable(8)
    table.update("h", 1, 1)
    table.update("h", 2, 1)
    table.update("h2", 1, 1)

    table.forget("h")

    assert len(table) == 1


# data keys


def test_data_key_round_trip():
    key = DataKey(KEY, spi=7)

    sealed = key.seal("h", 1, 1, AAD, b"hello")

    assert key.open("h", 1, 1, AAD, sealed) == b"hello"
    assert b"hello" not in sealed


def test_data_key_streams_use_distinct_subkeys():
    key = DataKey(KEY, spi=7)

    # the same nonce under two streams must not give the same ciphertext
    assert key.seal("h", 1, 1, AAD, b"x" * 16) != key.seal("h2", 1, 1, AAD, b"x" * 16)
    assert key.seal("h", 1, 1, AAD, b"x" * 16) != key.seal("h", 2, 1, AAD, b"x" * 16)


@pytest.mark.parametrize("change", ["sender", "sender_spi", "seq", "aad", "body"])
def test_data_key_rejects_any_change(change):
    key = DataKey(KEY, spi=7)
    sealed = key.seal("h", 1, 1, AAD, b"hello")
    args = {"sender": "h", "sender_spi": 1, "seq": 1, "aad": AAD,
            "ciphertext": sealed}
    args[change if change != "body" else "ciphertext"] = {
        "sender": "h2", "sender_spi": 2, "seq": 2, "aad": b"other",
        "body": bytes([sealed[0] ^ 1]) + sealed[1:],
    }[change]

    assert reason_of(
        key.open, args["sender"], args["sender_spi"], args["seq"], args["aad"],
        args["ciphertext"],
    ) == "bad-data-tag"


def test_data_key_under_another_key_fails():
    sealed = DataKey(KEY, spi=7).seal("h", 1, 1, AAD, b"hello")

    assert reason_of(DataKey(OTHER_KEY, spi=7).open, "h", 1, 1, AAD, sealed) == (
        "bad-data-tag"
    )


def test_data_key_erase_removes_key_material():
    key = DataKey(KEY, spi=7)
    key.seal("h", 1, 1, AAD, b"hello")

    key.erase()

    assert key.erased
    assert not holds_bytes(key, KEY)
    assert reason_of(key.open, "h", 1, 1, AAD, b"x" * 32) == "erased-key"


def test_data_key_rejects_wrong_size():
    with pytest.raises(ConfigError):
        DataKey(b"short", spi=7)


# epochs and grace


def group_sa(grace: float = 5.0) -> GroupSA:
    sa = GroupSA(grace)
    sa.install(1, 0x11, KEY, NOW + 3600, activate_at=NOW)
    return sa


def test_sa_sends_under_first_epoch():
    sa = group_sa()

    key = sa.sending_key(NOW)

    assert key is not None and key.epoch == 1


def test_sa_keeps_old_epoch_until_activation():
    sa = group_sa()
    sa.install(2, 0x22, OTHER_KEY, NOW + 7200, activate_at=NOW + 1)

    assert sa.sending_key(NOW + 0.5).epoch == 1
    assert sa.sending_key(NOW + 1).epoch == 2
    # the new epoch decrypts at once
    assert sa.key_for(0x22).epoch == 2


def test_sa_accepts_old_epoch_within_grace():
    sa = group_sa(grace=5)
    sa.install(2, 0x22, OTHER_KEY, NOW + 7200, activate_at=NOW + 1)

    assert sa.expire(NOW + 5.9) == []
    assert sa.key_for(0x11).epoch == 1


def test_sa_erases_old_epoch_after_grace():
    sa = group_sa(grace=5)
    old = sa.key_for(0x11)
    sa.install(2, 0x22, OTHER_KEY, NOW + 7200, activate_at=NOW + 1)

    erased = sa.expire(NOW + 6)

    assert [k.epoch for k in erased] == [1]
    assert reason_of(sa.key_for, 0x11) == "erased-key"
    assert old.data_key.erased
    assert not holds_bytes(sa, KEY)
    assert holds_bytes(sa, OTHER_KEY)


def test_sa_next_expiry_is_end_of_grace():
    sa = group_sa(grace=5)
    assert sa.next_expiry() is None

    sa.install(2, 0x22, OTHER_KEY, NOW + 7200, activate_at=NOW + 1)

    assert sa.next_expiry() == NOW + 6


def test_sa_holds_at_most_two_epochs():
    sa = group_sa()
    sa.install(2, 0x22, OTHER_KEY, NOW + 7200, activate_at=NOW + 1)

    erased = sa.install(3, 0x33, bytes(16), NOW + 9000, activate_at=NOW + 2)

    assert [k.epoch for k in erased] == [1]
    assert len(sa) == 2
    assert not holds_bytes(sa, KEY)


def test_sa_rejects_older_epoch():
    sa = group_sa()

    with pytest.raises(ConfigError):
        sa.install(1, 0x22, OTHER_KEY, NOW + 7200, activate_at=NOW)


def test_sa_rejects_reused_spi():
    sa = group_sa()

    with pytest.raises(ConfigError):
        sa.install(2, 0x11, OTHER_KEY, NOW + 7200, activate_at=NOW)


def test_sa_unknown_spi():
    sa = group_sa()

    assert reason_of(sa.key_for, 0x99) == "unknown-spi"


def test_sa_erased_memory_is_bounded():
    sa = group_sa(grace=0)
    for epoch in range(2, ERASED_MEMORY + 4):
        sa.install(epoch, 0x1000 + epoch, bytes([epoch]) * 16, NOW, activate_at=NOW)
        sa.expire(NOW)

    # the first SPI fell out of the erased list, so it is merely unknown now
    assert reason_of(sa.key_for, 0x11) == "unknown-spi"


def test_sa_erase_all():
    sa = group_sa()

    sa.erase_all()

    assert len(sa) == 0
    assert sa.newest is None
    assert not holds_bytes(sa, KEY)
