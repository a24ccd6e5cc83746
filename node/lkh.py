"""A logical key hierarchy for evicting members (RFC 2627 section 5.4).

RFC 1949 has no way to exclude a member short of a new group, because every
member has the one KEK. Here every GKDC also keeps a binary tree of
key-encrypting keys over the nodes it gave keys to (node/keyserver.py). Each
of those nodes sits at a leaf and has the keys of the tree nodes on the path
from its leaf to the root. Evicting members replaces the key of every tree
node on their paths, bottom up, and wraps each new key under the keys of
that tree node's remaining children. The new root key then encrypts the
next group key and KEK. An evicted member has no key that any of the wraps
uses, so it cannot follow. Everyone else can, from one message whose size
grows with the tree's depth, not with the group.

The tree is complete: every leaf sits at the same depth. Members fill free
leaves from the left, and a full tree grows by a new root whose left child
is the old root. Node ids are stable, so members never renumber their keys.
A join does not change any key, because a joining member gets the current
group key under RFC 1949 too, so placing a member costs one sealed path to
it alone. Members placed before the tree grew lack the keys of the tree
nodes that growth put above their old root. The first eviction that wraps a
key under such a tree node therefore first wraps that node's key under its
left child, once.

Each node key has a version that grows with every replacement, so a member
can tell a wrap under a key it has from one under a newer key of the same
tree node. Key wraps are AES-128-GCM under the child's key with a random
nonce, bound to the group, the update's epoch and both node ids and versions.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .codec import Reader, Writer
from .errors import AuthenticationFailed, ConfigError, MalformedMessage

KEY_SIZE = 16
NONCE_SIZE = 12
WRAP_SIZE = NONCE_SIZE + KEY_SIZE + 16
ENTRY_SIZE = 16 + WRAP_SIZE
MAX_MEMBERS = 1 << 20
MAX_ENTRIES = 4096
MAX_PATH = 64

WRAP_LABEL = b"smkd lkh wrap v1\x00"


@dataclass(frozen=True)
class KeyRef:
    """One version of one node's key."""

    node_id: int
    version: int

    def encode(self, w: Writer) -> None:
        w.push_u32(self.node_id)
        w.push_u32(self.version)

    @classmethod
    def decode(cls, r: Reader) -> KeyRef:
        return cls(r.pull_u32(), r.pull_u32())


@dataclass(frozen=True)
class WrappedKey:
    """A node's new key, encrypted under the key of one of its children."""

    wrap: KeyRef
    target: KeyRef
    sealed: bytes = field(repr=False)


@dataclass(frozen=True)
class LkhUpdate:
    """The key wraps of one eviction, bottom up, and the new root's id."""

    root_id: int
    entries: tuple[WrappedKey, ...]

    def encode(self, w: Writer) -> None:
        w.push_u32(self.root_id)
        w.push_u16(len(self.entries))
        for entry in self.entries:
            entry.wrap.encode(w)
            entry.target.encode(w)
            w.push_bytes(entry.sealed)

    @classmethod
    def decode(cls, r: Reader) -> LkhUpdate:
        root_id = r.pull_u32()
        count = r.pull_u16()
        if count > MAX_ENTRIES or count * ENTRY_SIZE > r.remaining():
            raise MalformedMessage(f"{count} LKH entries cannot fit in the field")
        entries = tuple(
            WrappedKey(KeyRef.decode(r), KeyRef.decode(r), r.pull_bytes(WRAP_SIZE))
            for _ in range(count)
        )
        return cls(root_id, entries)


@dataclass(frozen=True)
class LkhPath:
    """The keys a member holds: its leaf first, then each ancestor to the root."""

    keys: tuple[tuple[KeyRef, bytes], ...] = field(repr=False)

    @property
    def leaf_id(self) -> int:
        return self.keys[0][0].node_id

    def encode(self) -> bytes:
        w = Writer()
        w.push_u8(len(self.keys))
        for ref, key in self.keys:
            ref.encode(w)
            w.push_bytes(key)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes) -> LkhPath:
        r = Reader(data)
        count = r.pull_u8()
        if not 1 <= count <= MAX_PATH:
            raise MalformedMessage(f"an LKH path of {count} keys")
        keys = tuple((KeyRef.decode(r), r.pull_bytes(KEY_SIZE)) for _ in range(count))
        r.expect_end("the LKH path")
        return cls(keys)


def _aad(group_address: str, epoch: int, wrap: KeyRef, target: KeyRef) -> bytes:
    w = Writer()
    w.push_bytes(WRAP_LABEL + socket.inet_aton(group_address))
    w.push_u32(epoch)
    wrap.encode(w)
    target.encode(w)
    return w.getvalue()


class _Node:
    def __init__(self, node_id: int, height: int, parent: _Node | None):
        self.id = node_id
        self.height = height
        self.parent = parent
        self.children: list[_Node | None] = [None, None]
        self.key = bytearray()
        self.version = 1
        self.member: str | None = None
        self.count = 0
        # set when members below the left child do not hold this node's key
        self.stale = False

    @property
    def ref(self) -> KeyRef:
        return KeyRef(self.id, self.version)

    def erase(self) -> None:
        self.key[:] = bytes(len(self.key))

    def replace_key(self, key: bytes) -> None:
        self.erase()
        self.key = bytearray(key)
        self.version += 1


class KeyTree:
    """A GKDC's key tree: the nodes it gave keys to at leaves, a key at every node.

    ``randbytes`` supplies keys and nonces.
    """

    def __init__(self, group_address: str, randbytes: Callable[[int], bytes]):
        self.group_address = group_address
        self.randbytes = randbytes
        self._next_id = 1
        # the root starts one level up, so that it is never a member's leaf
        self._root = self._new_node(1, None)
        self._leaves: dict[str, _Node] = {}

    def __len__(self) -> int:
        return len(self._leaves)

    def __contains__(self, member: str) -> bool:
        return member in self._leaves

    @property
    def members(self) -> set[str]:
        return set(self._leaves)

    @property
    def depth(self) -> int:
        return self._root.height

    @property
    def root_id(self) -> int:
        return self._root.id

    def root_key(self) -> bytes:
        return bytes(self._root.key)

    def _new_node(self, height: int, parent: _Node | None) -> _Node:
        node = _Node(self._next_id, height, parent)
        self._next_id += 1
        node.key = bytearray(self._random_key())
        return node

    def _random_key(self) -> bytes:
        key = self.randbytes(KEY_SIZE)
        if len(key) != KEY_SIZE:
            raise ConfigError(f"random source returned {len(key)} bytes")
        return key

    # registering members

    def register(self, member: str) -> LkhPath:
        """Give ``member`` a leaf, or a fresh leaf key if it has one; return its path.

        Raises ``ConfigError`` when the tree holds ``MAX_MEMBERS`` already.
        """
        leaf = self._leaves.get(member)
        if leaf is None:
            if len(self._leaves) >= MAX_MEMBERS:
                raise ConfigError(f"the key tree is full ({MAX_MEMBERS} members)")
            leaf = self._place(member)
        else:
            leaf.replace_key(self._random_key())
        return self.path_of(member)

    def path_of(self, member: str) -> LkhPath:
        node: _Node | None = self._leaves[member]
        keys = []
        while node is not None:
            keys.append((node.ref, bytes(node.key)))
            node = node.parent
        return LkhPath(tuple(keys))

    def _place(self, member: str) -> _Node:
        if self._root.count >= 1 << self._root.height:
            self._grow()
        node = self._root
        while node.height > 0:
            index = self._free_child(node)
            child = node.children[index]
            if child is None:
                child = node.children[index] = self._new_node(node.height - 1, node)
            node = child
        node.member = member
        self._leaves[member] = node
        self._count(node, +1)
        return node

    def _free_child(self, node: _Node) -> int:
        capacity = 1 << (node.height - 1)
        for index, child in enumerate(node.children):
            if child is None or child.count < capacity:
                return index
        raise AssertionError("a node below capacity has no free child")

    def _grow(self) -> None:
        old = self._root
        root = self._new_node(old.height + 1, None)
        root.stale = old.count > 0
        root.children[0] = old
        root.count = old.count
        old.parent = root
        self._root = root

    def _count(self, node: _Node | None, change: int) -> None:
        while node is not None:
            node.count += change
            node = node.parent

    # evicting members

    def evict(self, members: Iterable[str], epoch: int) -> LkhUpdate:
        """Remove ``members`` and replace every key they held; return the wraps.

        ``epoch`` is bound into every wrap, so an update opens only as the
        re-key it was made for. Names that are not registered are ignored.
        """
        leaves = [self._leaves.pop(m) for m in set(members) if m in self._leaves]
        # the root is always replaced, so every eviction changes the root key
        affected: dict[int, _Node] = {self._root.id: self._root}
        for leaf in leaves:
            self._count(leaf, -1)
            node = leaf.parent
            self._detach(leaf)
            while node is not None:
                affected[node.id] = node
                node = node.parent

        entries: list[WrappedKey] = []
        for node in sorted(affected.values(), key=lambda n: n.height):
            if node.count == 0 and node is not self._root:
                self._detach(node)
                continue
            for child in node.children:
                if child is not None and child.id not in affected:
                    self._catch_up(child, epoch, entries)
            node.replace_key(self._random_key())
            node.stale = False
            for child in node.children:
                if child is not None:
                    entries.append(self._wrap(child, node, epoch))
        return LkhUpdate(self._root.id, tuple(entries))

    def _catch_up(self, node: _Node, epoch: int, entries: list[WrappedKey]) -> None:
        """Wrap a grown node's key for the members placed below it before it grew."""
        if not node.stale:
            return
        left = node.children[0]
        assert left is not None
        self._catch_up(left, epoch, entries)
        entries.append(self._wrap(left, node, epoch))
        node.stale = False

    def erase(self) -> None:
        """Overwrite every key in the tree and forget its members."""
        stack = [self._root]
        while stack:
            node = stack.pop()
            node.erase()
            stack += [child for child in node.children if child is not None]
        self._leaves.clear()

    def _detach(self, node: _Node) -> None:
        parent = node.parent
        if parent is not None:
            parent.children[parent.children.index(node)] = None
        node.erase()
        node.parent = None

    def _wrap(self, child: _Node, node: _Node, epoch: int) -> WrappedKey:
        nonce = self.randbytes(NONCE_SIZE)
        aad = _aad(self.group_address, epoch, child.ref, node.ref)
        sealed = nonce + AESGCM(bytes(child.key)).encrypt(nonce, bytes(node.key), aad)
        return WrappedKey(child.ref, node.ref, sealed)


class MemberKeys:
    """The path keys a member holds, and how it follows an eviction."""

    def __init__(self, group_address: str, path: LkhPath):
        self.group_address = group_address
        self.leaf_id = path.leaf_id
        self._keys: dict[KeyRef, bytearray] = {
            ref: bytearray(key) for ref, key in path.keys
        }

    def __contains__(self, ref: KeyRef) -> bool:
        return ref in self._keys

    def apply(self, update: LkhUpdate, epoch: int) -> bytes:
        """Follow an eviction and return the new root key.

        Raises ``AuthenticationFailed`` with reason ``evicted`` when no wrap
        reaches the new root from a key this member holds, and ``bad-seal``
        when a wrap under a key it holds does not open. The member's keys
        change only when the whole update succeeds.
        """
        learned: dict[KeyRef, bytes] = {}
        for entry in update.entries:
            key = learned.get(entry.wrap)
            if key is None and entry.wrap in self._keys:
                key = bytes(self._keys[entry.wrap])
            if key is None or entry.target in learned:
                continue
            learned[entry.target] = self._unwrap(key, entry, epoch)

        roots = [key for ref, key in learned.items() if ref.node_id == update.root_id]
        if not roots:
            raise AuthenticationFailed(
                "no key this member holds reaches the new root", reason="evicted"
            )
        for ref, key in learned.items():
            self._forget_node(ref.node_id)
            self._keys[ref] = bytearray(key)
        return roots[0]

    def _forget_node(self, node_id: int) -> None:
        for ref in [r for r in self._keys if r.node_id == node_id]:
            old = self._keys.pop(ref)
            old[:] = bytes(len(old))

    def _unwrap(self, key: bytes, entry: WrappedKey, epoch: int) -> bytes:
        nonce, ciphertext = entry.sealed[:NONCE_SIZE], entry.sealed[NONCE_SIZE:]
        aad = _aad(self.group_address, epoch, entry.wrap, entry.target)
        try:
            return AESGCM(key).decrypt(nonce, ciphertext, aad)
        except InvalidTag:
            raise AuthenticationFailed(
                f"LKH wrap of node {entry.target.node_id} does not open",
                reason="bad-seal",
            ) from None

    def erase(self) -> None:
        for key in self._keys.values():
            key[:] = bytes(len(key))
        self._keys.clear()
