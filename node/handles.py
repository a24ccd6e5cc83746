"""Hop-by-hop packet handles between tree neighbours (RFC 1949 section 3).

"Neighbours could exchange a secret packet handle for inclusion in the CBT
header of data packets exchanged between those neighbours, allowing for the
simple and efficient hop-by-hop authentication of data packets." Here the
upper end of each tree link creates the secret during the secure join: a
parent puts a fresh secret, sealed with HPKE to the child, in the signed
join-ack, and a designated router does the same in the key delivery to a
member host. Both ends then tag every data packet they exchange with
HMAC-SHA256 under that secret, truncated to 16 bytes. The sender's and
receiver's names go into the MAC, so a packet cannot be reflected back over
the same link.
"""

from __future__ import annotations

import socket

from cryptography.hazmat.primitives import constant_time, hashes, hmac

from .errors import AuthenticationFailed, ConfigError

SECRET_SIZE = 32
HANDLE_SIZE = 16

HANDLE_LABEL = b"smkd packet handle v1\x00"
SEAL_LABEL = b"smkd handle seal\x00"


def seal_info(group_address: str, sender: str, recipient: str) -> bytes:
    """Return the HPKE ``info`` of a handle secret sealed from sender to recipient."""
    return (
        SEAL_LABEL
        + socket.inet_aton(group_address)
        + sender.encode("ascii")
        + b"\x00"
        + recipient.encode("ascii")
    )


def _mac(secret: bytes, sender: str, receiver: str, packet: bytes) -> hmac.HMAC:
    mac = hmac.HMAC(secret, hashes.SHA256())
    mac.update(HANDLE_LABEL)
    mac.update(sender.encode("ascii") + b"\x00" + receiver.encode("ascii") + b"\x00")
    mac.update(packet)
    return mac


class HandleTable:
    """The handle secrets one node shares with its tree neighbours in one group.

    A new join-ack replaces the secret of a link, and packets tagged under the
    old one may still be on their way, so the secret it replaced is still
    accepted (never used to send) until the next replacement. Secrets are kept
    in bytearrays and overwritten when dropped.
    """

    def __init__(self, owner: str):
        self.owner = owner
        self._secrets: dict[str, bytearray] = {}
        self._previous: dict[str, bytearray] = {}

    def __contains__(self, neighbour: str) -> bool:
        return neighbour in self._secrets

    def __len__(self) -> int:
        return len(self._secrets)

    def neighbours(self) -> set[str]:
        return set(self._secrets)

    def set(self, neighbour: str, secret: bytes) -> None:
        if len(secret) != SECRET_SIZE:
            raise ConfigError(
                f"handle secret is {len(secret)} bytes, expected {SECRET_SIZE}"
            )
        _overwrite(self._previous.pop(neighbour, None))
        current = self._secrets.pop(neighbour, None)
        if current is not None:
            self._previous[neighbour] = current
        self._secrets[neighbour] = bytearray(secret)

    def drop(self, neighbour: str) -> None:
        _overwrite(self._secrets.pop(neighbour, None))
        _overwrite(self._previous.pop(neighbour, None))

    def retain(self, neighbours: set[str]) -> None:
        """Drop the handles of every neighbour not in ``neighbours``."""
        for name in self.neighbours() - neighbours:
            self.drop(name)

    def clear(self) -> None:
        self.retain(set())

    def tag(self, neighbour: str, packet: bytes) -> bytes:
        """Return the handle for ``packet`` sent from this node to ``neighbour``.

        Raises ``ConfigError`` when no secret is shared with ``neighbour``.
        """
        secret = self._secrets.get(neighbour)
        if secret is None:
            raise ConfigError(f"{self.owner} shares no packet handle with {neighbour}")
        return _mac(bytes(secret), self.owner, neighbour, packet).finalize()[
            :HANDLE_SIZE
        ]

    def verify(self, neighbour: str, packet: bytes, handle: bytes) -> None:
        """Check the handle on ``packet`` received from ``neighbour``.

        Raises ``AuthenticationFailed`` with reason ``no-handle`` when no
        secret is shared with ``neighbour`` and ``bad-handle`` when the handle
        does not verify.
        """
        secret = self._secrets.get(neighbour)
        if secret is None:
            raise AuthenticationFailed(
                f"{self.owner} shares no packet handle with {neighbour}",
                reason="no-handle",
            )
        candidates = [secret]
        if neighbour in self._previous:
            candidates.append(self._previous[neighbour])
        for candidate in candidates:
            # HMAC.verify takes only full-length tags, so the truncated handle
            # is compared in constant time instead
            expected = _mac(bytes(candidate), neighbour, self.owner, packet).finalize()
            if constant_time.bytes_eq(expected[:HANDLE_SIZE], bytes(handle)):
                return
        raise AuthenticationFailed(
            f"packet handle from {neighbour} does not verify", reason="bad-handle"
        )


def _overwrite(secret: bytearray | None) -> None:
    if secret is not None:
        secret[:] = bytes(len(secret))
