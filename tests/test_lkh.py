"""The logical key hierarchy: placement, eviction, following and its cost."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_figure1 import holds_bytes

from node.codec import Reader, Writer
from node.errors import AuthenticationFailed, MalformedMessage
from node.lkh import KeyTree, LkhPath, LkhUpdate, MemberKeys

GROUP = "239.1.1.1"


def tree_of(count: int, seed: int = 1) -> tuple[KeyTree, dict[str, MemberKeys]]:
    tree = KeyTree(GROUP, random.Random(seed).randbytes)
    members = {}
    for i in range(count):
        name = f"h{i}"
        members[name] = MemberKeys(GROUP, tree.register(name))
    return tree, members


def follow(members: dict[str, MemberKeys], update: LkhUpdate, epoch: int):
    """Return who reached the new root and the root keys they reached."""
    reached, roots = set(), set()
    for name, keys in members.items():
        try:
            roots.add(keys.apply(update, epoch))
        except AuthenticationFailed as error:
            assert error.reason == "evicted"
            continue
        reached.add(name)
    return reached, roots


def test_first_members_share_a_root():
    tree, members = tree_of(2)

    paths = [tree.path_of(name) for name in members]

    assert tree.depth == 1
    assert paths[0].keys[-1] == paths[1].keys[-1]
    assert paths[0].leaf_id != paths[1].leaf_id


def test_tree_grows_when_full():
    tree, _ = tree_of(5)

    assert tree.depth == 3
    assert len(tree.path_of("h4").keys) == 4


def test_leaves_are_all_at_one_depth():
    tree, _ = tree_of(7)

    assert {len(tree.path_of(name).keys) for name in tree.members} == {4}


def test_evicted_member_cannot_follow():
    tree, members = tree_of(8)

    update = tree.evict(["h3"], epoch=2)
    reached, roots = follow(members, update, epoch=2)

    assert reached == set(members) - {"h3"}
    assert roots == {tree.root_key()}
    assert "h3" not in tree


def test_eviction_replaces_the_root_key():
    tree, _ = tree_of(8)
    old_root = tree.root_key()

    tree.evict(["h3"], epoch=2)

    assert tree.root_key() != old_root


def test_eviction_wraps_two_per_level():
    tree, members = tree_of(16)
    first = tree.evict(["h5"], epoch=2)
    follow(members, first, epoch=2)

    update = tree.evict(["h12"], epoch=3)
    reached, _ = follow(members, update, epoch=3)

    # the leaf's parent keeps one child, every node above keeps two
    assert len(update.entries) == 2 * tree.depth - 1
    assert reached == set(members) - {"h5", "h12"}


def test_members_placed_before_growth_catch_up():
    tree, members = tree_of(5)

    # h4 sits alone in the right half, so the left half's key is only wrapped
    update = tree.evict(["h4"], epoch=2)
    reached, _ = follow(members, update, epoch=2)

    assert reached == {"h0", "h1", "h2", "h3"}


def test_several_evictions_at_once():
    tree, members = tree_of(16)

    update = tree.evict(["h0", "h7", "h8"], epoch=2)
    reached, roots = follow(members, update, epoch=2)

    assert reached == set(members) - {"h0", "h7", "h8"}
    assert len(roots) == 1


def test_evicted_keys_are_gone_from_the_tree():
    tree, members = tree_of(4)
    evicted_leaf = tree.path_of("h1").keys[0][1]

    tree.evict(["h1"], epoch=2)

    assert not holds_bytes(tree, evicted_leaf)


def test_consecutive_evictions_are_followed():
    tree, members = tree_of(8)
    for epoch, name in enumerate(["h1", "h6", "h2"], start=2):
        update = tree.evict([name], epoch)
        reached, roots = follow(members, update, epoch)
        del members[name]
        assert reached == set(members)
        assert roots == {tree.root_key()}


def test_evicted_member_stays_out_later():
    tree, members = tree_of(8)
    first = tree.evict(["h3"], epoch=2)
    follow({k: v for k, v in members.items() if k != "h3"}, first, 2)

    update = tree.evict(["h4"], epoch=3)

    with pytest.raises(AuthenticationFailed):
        members["h3"].apply(update, epoch=3)


def test_empty_eviction_still_rekeys_root():
    tree, members = tree_of(4)
    old_root = tree.root_key()

    update = tree.evict(["nobody"], epoch=2)
    reached, roots = follow(members, update, epoch=2)

    assert reached == set(members)
    assert roots == {tree.root_key()} and old_root not in roots


def test_update_for_another_epoch_does_not_open():
    tree, members = tree_of(4)
    update = tree.evict(["h1"], epoch=2)

    with pytest.raises(AuthenticationFailed) as caught:
        members["h0"].apply(update, epoch=3)

    assert caught.value.reason == "bad-seal"


def test_failed_update_leaves_member_keys_unchanged():
    tree, members = tree_of(4)
    update = tree.evict(["h1"], epoch=2)

    with pytest.raises(AuthenticationFailed):
        members["h0"].apply(update, epoch=3)

    assert members["h0"].apply(update, epoch=2) == tree.root_key()


def test_reregistering_changes_the_leaf_key():
    tree, _ = tree_of(4)
    old = tree.path_of("h2").keys[0]

    new = tree.register("h2").keys[0]

    assert new[0].node_id == old[0].node_id
    assert new[0].version == old[0].version + 1
    assert new[1] != old[1]
    assert len(tree) == 4


def test_freed_leaf_is_reused():
    tree, _ = tree_of(4)
    tree.evict(["h1"], epoch=2)

    tree.register("h9")

    assert tree.depth == 2


def test_joiner_after_eviction_follows_next_one():
    tree, members = tree_of(4)
    follow(members, tree.evict(["h1"], epoch=2), epoch=2)
    del members["h1"]
    members["h9"] = MemberKeys(GROUP, tree.register("h9"))

    update = tree.evict(["h2"], epoch=3)
    reached, _ = follow(members, update, epoch=3)

    assert reached == {"h0", "h3", "h9"}


def test_member_erase():
    tree, members = tree_of(2)
    leaf_key = tree.path_of("h0").keys[0][1]

    members["h0"].erase()

    assert not holds_bytes(members["h0"], leaf_key)


@pytest.mark.parametrize("count", [2, 16, 256, 2048])
def test_eviction_cost_is_logarithmic(count):
    tree, _ = tree_of(count)
    first = tree.evict(["h0"], epoch=2)

    update = tree.evict(["h1"], epoch=3)

    # RFC 2627 section 5.4: about 2 log2(n) keys; per-member re-keying seals n - 1,
    # and the first eviction adds at most one catch-up wrap per growth
    depth = math.ceil(math.log2(count))
    assert len(update.entries) <= 2 * depth
    assert len(first.entries) <= 3 * depth
    assert len(update.entries) < count - 2 or count <= 2


@settings(max_examples=30, deadline=None)
@given(
    st.integers(min_value=1, max_value=40),
    st.lists(st.integers(min_value=0, max_value=39), max_size=6),
)
def test_only_evicted_members_are_cut_off(count, picks):
    tree, members = tree_of(count)
    evicted = {f"h{i}" for i in picks if i < count}

    update = tree.evict(evicted, epoch=2)
    reached, roots = follow(members, update, epoch=2)

    assert reached == set(members) - evicted
    assert len(roots) <= 1


def test_update_round_trip():
    tree, _ = tree_of(8)
    update = tree.evict(["h2"], epoch=2)
    w = Writer()
    update.encode(w)

    r = Reader(w.getvalue())
    assert LkhUpdate.decode(r) == update
    assert r.at_end()


def test_update_with_lying_count_is_malformed():
    w = Writer()
    w.push_u32(1)
    w.push_u16(500)

    with pytest.raises(MalformedMessage):
        LkhUpdate.decode(Reader(w.getvalue()))


def test_path_round_trip():
    tree, _ = tree_of(8)
    path = tree.path_of("h5")

    assert LkhPath.decode(path.encode()) == path


@pytest.mark.parametrize("data", [b"", b"\x00", b"\x01\x00\x00\x00\x01", b"\x41" + bytes(4)])
def test_bad_path_is_malformed(data):
    with pytest.raises(MalformedMessage):
        LkhPath.decode(data)
