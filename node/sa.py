"""The group security association: AEAD over group data, epochs and anti-replay.

Group data is encrypted with AES-128-GCM under the key of one epoch, named on
the wire by its SPI (RFC 1949 section 5). Many members send under the same
group key, so a shared key with counter nonces would repeat nonces between
senders. Each sender therefore encrypts under its own subkey, derived with
HKDF-SHA256 from the epoch key, its name and its sender SPI, and uses its
64-bit sequence number as the nonce. A sender that restarts picks a fresh
sender SPI, so a nonce never repeats under one subkey.

Subkeys give no origin authentication between members, because every member
can derive every subkey: sender-specific signatures do that (node/senderkeys.py).

A receiver checks sequence numbers against an RFC 4303 style sliding window
per sender stream (section 3.4.3: check before decryption, update after the
tag verifies). After a re-key, the previous epoch stays usable for a bounded
grace window and is then erased: the key bytes are overwritten and every
cipher object made from them is dropped.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import AuthenticationFailed, ConfigError, MalformedMessage

KEY_SIZE = 16
TAG_SIZE = 16
WINDOW_SIZE = 128
MAX_SEQUENCE = 2**64 - 1
# erased SPIs remembered so that late data is rejected as erased, not unknown
ERASED_MEMORY = 16

SUBKEY_LABEL = b"smkd data subkey v1\x00"


class ReplayWindow:
    """An anti-replay window over one sender stream's sequence numbers.

    ``top`` is the highest sequence number accepted so far, and bit ``i`` of
    the bitmap is set when ``top - i`` was accepted. Sequence numbers start
    at 1, as in RFC 4303.
    """

    def __init__(self, size: int = WINDOW_SIZE):
        if size < 1:
            raise ConfigError(f"replay window size {size} must be at least 1")
        self.size = size
        self.top = 0
        self._bitmap = 0

    def check(self, seq: int) -> None:
        """Raise ``AuthenticationFailed`` unless ``seq`` may be new.

        Reasons: ``stale-data`` below the window, ``replayed-data`` inside it
        and already accepted. Raises ``MalformedMessage`` for 0 or a number
        above 64 bits.
        """
        if not 1 <= seq <= MAX_SEQUENCE:
            raise MalformedMessage(f"sequence number {seq} outside 1..2^64-1")
        if seq > self.top:
            return
        offset = self.top - seq
        if offset >= self.size:
            raise AuthenticationFailed(
                f"sequence number {seq} is below the window ending at {self.top}",
                reason="stale-data",
            )
        if self._bitmap >> offset & 1:
            raise AuthenticationFailed(
                f"sequence number {seq} was accepted before", reason="replayed-data"
            )

    def update(self, seq: int) -> None:
        """Mark ``seq`` accepted; call only after its packet authenticated."""
        self.check(seq)
        if seq > self.top:
            shift = seq - self.top
            self._bitmap = (self._bitmap << shift | 1) & ((1 << self.size) - 1)
            self.top = seq
            return
        self._bitmap |= 1 << (self.top - seq)


class ReplayTable:
    """One replay window per sender stream, bounded in number.

    A stream is a ``(sender, sender SPI)`` pair. When the table is full, the
    stream heard from least recently is forgotten, which reopens its window.
    That sender's key is normally gone by then, so its old packets fail
    authentication anyway.
    """

    def __init__(self, size: int = WINDOW_SIZE, max_streams: int = 1024):
        self.size = size
        self.max_streams = max_streams
        self._windows: OrderedDict[tuple[str, int], ReplayWindow] = OrderedDict()

    def __len__(self) -> int:
        return len(self._windows)

    def check(self, sender: str, sender_spi: int, seq: int) -> None:
        window = self._windows.get((sender, sender_spi))
        if window is None:
            ReplayWindow(self.size).check(seq)
            return
        window.check(seq)

    def update(self, sender: str, sender_spi: int, seq: int) -> None:
        key = (sender, sender_spi)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = ReplayWindow(self.size)
        self._windows.move_to_end(key)
        window.update(seq)
        while len(self._windows) > self.max_streams:
            self._windows.popitem(last=False)

    def forget(self, sender: str) -> None:
        """Drop every stream of ``sender``, whose sender key was revoked."""
        for key in [k for k in self._windows if k[0] == sender]:
            del self._windows[key]


def _nonce(seq: int) -> bytes:
    return bytes(4) + seq.to_bytes(8, "big")


class DataKey:
    """An AES-128-GCM key for group data, with a subkey per sender stream.

    The key is kept in a bytearray so that :meth:`erase` can overwrite it.
    Derived ciphers are cached, at most ``max_streams`` of them.
    """

    def __init__(self, key: bytes, spi: int, max_streams: int = 1024):
        if len(key) != KEY_SIZE:
            raise ConfigError(f"data key is {len(key)} bytes, expected {KEY_SIZE}")
        self.spi = spi
        self.max_streams = max_streams
        self._key: bytearray | None = bytearray(key)
        self._ciphers: OrderedDict[tuple[str, int], AESGCM] = OrderedDict()

    @property
    def erased(self) -> bool:
        return self._key is None

    def _cipher(self, sender: str, sender_spi: int) -> AESGCM:
        if self._key is None:
            raise AuthenticationFailed(
                f"the key of SPI {self.spi:#010x} is erased", reason="erased-key"
            )
        stream = (sender, sender_spi)
        cipher = self._ciphers.get(stream)
        if cipher is None:
            cipher = AESGCM(self._derive(sender, sender_spi))
            self._ciphers[stream] = cipher
            if len(self._ciphers) > self.max_streams:
                self._ciphers.popitem(last=False)
        self._ciphers.move_to_end(stream)
        return cipher

    def _derive(self, sender: str, sender_spi: int) -> bytes:
        assert self._key is not None
        info = (
            SUBKEY_LABEL
            + self.spi.to_bytes(4, "big")
            + sender_spi.to_bytes(4, "big")
            + sender.encode("ascii")
        )
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_SIZE, salt=None, info=info)
        return hkdf.derive(bytes(self._key))

    def seal(
        self, sender: str, sender_spi: int, seq: int, aad: bytes, plaintext: bytes
    ) -> bytes:
        """Encrypt ``plaintext`` as packet ``seq`` of the sender's stream."""
        if not 1 <= seq <= MAX_SEQUENCE:
            raise ConfigError(f"sequence number {seq} outside 1..2^64-1")
        return self._cipher(sender, sender_spi).encrypt(_nonce(seq), plaintext, aad)

    def open(
        self, sender: str, sender_spi: int, seq: int, aad: bytes, ciphertext: bytes
    ) -> bytes:
        """Decrypt one packet; raise ``AuthenticationFailed`` (``bad-data-tag``)."""
        cipher = self._cipher(sender, sender_spi)
        try:
            return cipher.decrypt(_nonce(seq), ciphertext, aad)
        except InvalidTag:
            raise AuthenticationFailed(
                f"data from {sender} does not authenticate under SPI {self.spi:#010x}",
                reason="bad-data-tag",
            ) from None

    def erase(self) -> None:
        """Overwrite the key and drop every cipher derived from it."""
        if self._key is not None:
            self._key[:] = bytes(len(self._key))
            self._key = None
        self._ciphers.clear()


@dataclass
class EpochKey:
    """One epoch's group key at a member.

    ``activate_at`` is when this member starts sending under it, and
    ``retire_at``, once a newer epoch arrives, when it is erased. Times are
    seconds since the Unix epoch.
    """

    epoch: int
    data_key: DataKey = field(repr=False)
    not_after: float
    activate_at: float
    retire_at: float | None = None

    @property
    def spi(self) -> int:
        return self.data_key.spi


class GroupSA:
    """The group keys a member holds: the newest epoch and at most one before it.

    A new epoch is installed as soon as it arrives, so data under it decrypts
    at once, but this member keeps sending under the previous epoch until the
    new one's activation time. The previous epoch is accepted until ``grace``
    seconds after that activation, and is then erased. An epoch older than
    the previous one is erased as soon as a newer epoch arrives, so a member
    never keeps more than two group keys.

    ``not_after`` is not enforced here: while the primary core is unreachable
    the group is not re-keyed, and the current key stays in use (node/tree.py).
    """

    def __init__(self, grace: float, max_streams: int = 1024):
        if grace < 0:
            raise ConfigError(f"grace window {grace} s must not be negative")
        self.grace = grace
        self.max_streams = max_streams
        self._keys: dict[int, EpochKey] = {}
        self._erased: deque[tuple[int, int]] = deque(maxlen=ERASED_MEMORY)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def newest(self) -> EpochKey | None:
        return max(self._keys.values(), key=lambda k: k.epoch, default=None)

    def install(
        self, epoch: int, spi: int, key: bytes, not_after: float, activate_at: float
    ) -> list[EpochKey]:
        """Install a newer epoch; return the epochs this erased at once.

        Raises ``ConfigError`` for an epoch that is not newer than the newest
        one held, or for an SPI already in use.
        """
        newest = self.newest
        if newest is not None and epoch <= newest.epoch:
            raise ConfigError(f"epoch {epoch} is not newer than {newest.epoch}")
        if spi in self._keys or spi == 0:
            raise ConfigError(f"SPI {spi:#010x} is zero or already in use")

        erased = []
        for old in list(self._keys.values()):
            if old is newest:
                old.retire_at = activate_at + self.grace
            else:
                erased.append(self._erase(old))
        data_key = DataKey(key, spi, self.max_streams)
        self._keys[spi] = EpochKey(epoch, data_key, not_after, activate_at)
        return erased

    def sending_key(self, now: float) -> EpochKey | None:
        """Return the newest epoch whose activation time has come."""
        active = [k for k in self._keys.values() if k.activate_at <= now]
        if not active:
            # before any activation, fall back to the oldest key held
            return min(self._keys.values(), key=lambda k: k.epoch, default=None)
        return max(active, key=lambda k: k.epoch)

    def key_for(self, spi: int) -> EpochKey:
        """Return the epoch an SPI names.

        Raises ``AuthenticationFailed`` with reason ``erased-key`` for an SPI
        erased recently, and ``unknown-spi`` otherwise.
        """
        key = self._keys.get(spi)
        if key is not None:
            return key
        for erased_spi, epoch in self._erased:
            if erased_spi == spi:
                raise AuthenticationFailed(
                    f"SPI {spi:#010x} belongs to epoch {epoch}, which was erased",
                    reason="erased-key",
                )
        raise AuthenticationFailed(f"unknown SPI {spi:#010x}", reason="unknown-spi")

    def next_expiry(self) -> float | None:
        times = [k.retire_at for k in self._keys.values() if k.retire_at is not None]
        return min(times, default=None)

    def expire(self, now: float) -> list[EpochKey]:
        """Erase every epoch whose grace window has ended; return them."""
        due = [
            k for k in self._keys.values()
            if k.retire_at is not None and k.retire_at <= now
        ]
        return [self._erase(k) for k in due]

    def erase_all(self) -> list[EpochKey]:
        return [self._erase(k) for k in list(self._keys.values())]

    def _erase(self, key: EpochKey) -> EpochKey:
        del self._keys[key.spi]
        key.data_key.erase()
        self._erased.append((key.spi, key.epoch))
        return key
