"""The agent: one node's state machine on real UDP sockets, timers and a control socket.

The agent owns all I/O around the sans-IO machine: it binds the node's
address on UDP port 7777, passes datagrams and the wall-clock time in,
sends what the machine emits through the emulated link (delay, jitter, loss,
bandwidth, up or down), writes every delivered datagram to the link's pcap,
keeps the machine's timer armed, writes the JSON-lines event trace, and
answers JSON commands on a Unix control socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from .capture import CaptureRegistry, PcapWriter
from .config import AgentConfig, LinkConfig
from .errors import ConfigError, SmkdError
from .linkemu import Impairment, LinkDirection, schedule_delivery
from .machine import Machine, TraceEvent, Transmit
from .host import make_machine
from .pki import Directory, Identity

log = logging.getLogger("smkd.agent")

MAX_DATAGRAM = 65_535

# datagrams an agent reads from its socket per loop turn, beyond the first
DRAIN_LIMIT = 63


class TraceWriter:
    """Appends one JSON object per event to the node's trace file."""

    def __init__(self, path: Path | None, node: str):
        self.node = node
        self._file: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", buffering=1)

    def write(self, event: TraceEvent) -> None:
        if self._file is None:
            return
        record = {"t": round(event.time, 6), "node": self.node, "event": event.name}
        record.update(event.fields)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class _Link:
    """The sending side of one emulated attachment."""

    def __init__(self, config: LinkConfig, rng: random.Random, clock, capture):
        self.config = config
        self.egress = LinkDirection(config.egress, rng, clock)
        self.capture: PcapWriter | None = capture


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, agent: Agent, sock: socket.socket):
        self.agent = agent
        self.sock = sock

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.agent.on_datagram(data, addr[0])

        # asyncio reads one datagram per socket per loop turn, so an agent
        # that shares a loop with thousands of others would fall behind a
        # burst and let the kernel drop it; reading what is queued keeps up
        for _ in range(DRAIN_LIMIT):
            try:
                data, addr = self.sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self.error_received(error)
                return
            self.agent.on_datagram(data, addr[0])

    def error_received(self, exc: Exception) -> None:
        # a downed interface fails every send, so each error kind is logged once
        kind = type(exc).__name__
        self.agent.socket_errors[kind] += 1
        if self.agent.socket_errors[kind] == 1:
            log.warning("%s: socket error: %s; repeats are counted, not logged",
                        self.agent.name, exc)


class Agent:
    """Runs one node. ``captures`` lets agents in one process share pcap writers."""

    def __init__(self, config: AgentConfig, captures: CaptureRegistry | None = None):
        self.config = config
        self.name = config.node.name
        self._own_captures = captures is None
        self.captures = captures if captures is not None else CaptureRegistry()
        identity = Identity.load(config.pki_dir, self.name, config.suites)
        directory = Directory(config.pki_dir)
        self.machine: Machine = make_machine(
            config.node, identity, directory, os.urandom
        )
        self.trace = TraceWriter(config.trace_path, self.name)
        self.logged_drops: Counter[tuple[str, str]] = Counter()
        self.socket_errors: Counter[str] = Counter()
        self.links: dict[str, _Link] = {}
        self._links_by_peer: dict[str, _Link] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._control: asyncio.AbstractServer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # lifecycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._make_links(loop)
        node = self.config.node
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind((self.config.bind or node.address, self.config.port))
        except OSError as error:
            sock.close()
            raise ConfigError(
                f"{self.name}: cannot bind {node.address}:{self.config.port}: {error}"
            ) from None
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: _DatagramProtocol(self, sock), sock=sock
        )
        if self.config.control_path is not None:
            await self._start_control(self.config.control_path)
        log.info(
            "%s: %s started on %s:%d (identity address %s)",
            self.name,
            node.role,
            self.config.bind or node.address,
            self.config.port,
            node.address,
        )
        self.machine.start(time.time())
        self._flush()

    def _make_links(self, loop: asyncio.AbstractEventLoop) -> None:
        seed = self.config.seed
        for link_config in self.config.links:
            # each direction draws from its own generator, fixed by the seed
            label = f"{seed}:{self.name}:{link_config.name}".encode()
            rng = random.Random(zlib.crc32(label) if seed is not None else None)
            capture = None
            if link_config.capture is not None:
                link_config.capture.parent.mkdir(parents=True, exist_ok=True)
                capture = self.captures.writer(link_config.capture)
            link = _Link(link_config, rng, loop.time, capture)
            self.links[link_config.name] = link
            for address in link_config.peers:
                self._links_by_peer[address] = link

    async def _start_control(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        self._control = await asyncio.start_unix_server(
            self._serve_control, path=str(path)
        )

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        if self._timer is not None:
            self._timer.cancel()
        if self._transport is not None:
            self._transport.close()
        if self._control is not None:
            self._control.close()
            if self.config.control_path is not None:
                self.config.control_path.unlink(missing_ok=True)
        self.trace.close()
        if self._own_captures:
            self.captures.close()
        log.info("%s: stopped", self.name)
        self._stopped.set()

    # datagrams

    def on_datagram(self, data: bytes, source: str) -> None:
        if self._stopped.is_set():
            return
        self.machine.receive(data, source, time.time())
        self._flush()

    def _flush(self) -> None:
        for output in self.machine.pop_outputs():
            if isinstance(output, Transmit):
                self._transmit(output)
            else:
                self._record(output)
        self._arm_timer()

    def _record(self, event: TraceEvent) -> None:
        self.trace.write(event)
        if event.name in ("drop", "data_rejected"):
            self._log_drop(
                event.fields.get("peer", "?"),
                event.fields.get("reason", "?"),
                event.fields.get("detail", ""),
            )

    def _log_drop(self, peer: str, reason: str, detail: str) -> None:
        # each (peer, reason) is logged once; the machine's counters keep the count
        key = (peer, reason)
        self.logged_drops[key] += 1
        if self.logged_drops[key] == 1:
            log.warning(
                "%s: dropped datagram from %s: %s (%s); further drops "
                "for this reason are counted, not logged",
                self.name,
                peer,
                reason,
                detail,
            )

    def _transmit(self, transmit: Transmit) -> None:
        link = self._links_by_peer.get(transmit.destination)
        if link is None or not self.config.emulate_links:
            capture = None
            if link is not None:
                capture = link.capture
            elif self.config.unicast_capture is not None:
                capture = self.captures.writer(self.config.unicast_capture)
            self._send_now(transmit, capture)
            return
        outcome = link.egress.transmit(len(transmit.datagram))
        if outcome.deliver_at is None:
            self._record(
                TraceEvent(
                    time.time(),
                    "link_drop",
                    {
                        "link": link.config.name,
                        "peer": transmit.peer,
                        "reason": str(outcome.drop_reason),
                        "size": len(transmit.datagram),
                    },
                )
            )
            return
        assert self._loop is not None
        schedule_delivery(
            self._loop, outcome.deliver_at, self._send_now, transmit, link.capture
        )

    def _send_now(self, transmit: Transmit, capture: PcapWriter | None) -> None:
        if self._transport is None or self._stopped.is_set():
            return
        self._transport.sendto(
            transmit.datagram, (transmit.destination, self.config.port)
        )
        if capture is not None and not capture.closed:
            capture.write_udp(
                time.time(),
                self.config.node.address,
                transmit.destination,
                transmit.datagram,
                self.config.port,
                self.config.port,
            )

    # timers

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        due = self.machine.next_timer()
        if due is None or self._loop is None or self._stopped.is_set():
            return
        self._timer = self._loop.call_later(max(0.0, due - time.time()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.machine.handle_timer(time.time())
        self._flush()

    # control socket: one JSON request per line, one JSON response per line

    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while line := await reader.readline():
                response = self.handle_command(line)
                writer.write(json.dumps(response).encode() + b"\n")
                await writer.drain()
                if self._stopped.is_set():
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # the event loop is shutting down with a client still connected;
            # ending quietly keeps asyncio from logging the cancellation
            pass
        finally:
            writer.close()

    def handle_command(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            if not isinstance(request, dict) or "cmd" not in request:
                raise ValueError('a request is a JSON object with a "cmd" key')
            return {"ok": True, **self._run_command(request)}
        except (ValueError, KeyError, TypeError, SmkdError) as error:
            return {"ok": False, "error": str(error)}

    def _run_command(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request["cmd"]
        now = time.time()
        if command == "status":
            counters = dict(self.machine.counters)
            return {"status": self.machine.status(), "counters": counters}
        if command in ("join", "leave"):
            method = getattr(self.machine, command, None)
            if method is None:
                raise ValueError(
                    f"{self.name} is a {self.config.node.role}: only hosts "
                    f"{command} groups"
                )
            method(request["group"], now)
            self._flush()
            return {}
        if command == "link":
            self._set_link(request)
            return {}
        if command == "stop":
            asyncio.get_running_loop().call_soon(self.stop)
            return {}
        if command in ("send", "rekey", "acl_update"):
            self._run_key_command(command, request, now)
            self._flush()
            return {}
        raise ValueError(
            f"unknown command {command!r}; expected status, join, leave, "
            "send, rekey, acl_update, link or stop"
        )

    def _run_key_command(
        self, command: str, request: dict[str, Any], now: float
    ) -> None:
        """Send group data, re-key a group or replace its ACL."""
        method_names = {
            "send": "send_data", "rekey": "rekey", "acl_update": "update_acl",
        }
        who = {
            "send": "hosts and initiators send data",
            "rekey": "the primary core re-keys a group",
            "acl_update": "the initiator updates an ACL",
        }
        method = getattr(self.machine, method_names[command], None)
        if method is None:
            raise ValueError(
                f"{self.name} is a {self.config.node.role}: only {who[command]}"
            )
        group = request["group"]
        if command == "send":
            method(
                group, now, count=int(request.get("count", 1)),
                size=int(request.get("size", 100)),
                interval=float(request.get("interval", 0.1)),
                forge_as=request.get("forge_as"),
            )
        elif command == "rekey":
            method(group, now)
        else:
            method(
                group, now, remove=tuple(request.get("remove") or ()),
                add=tuple(request.get("add") or ()),
            )

    def _set_link(self, request: dict[str, Any]) -> None:
        link = self.links.get(request["link"])
        if link is None:
            raise ValueError(
                f"{self.name} has no link {request['link']!r} "
                f"(has: {', '.join(sorted(self.links)) or 'none'})"
            )
        if "up" in request:
            link.egress.set_up(bool(request["up"]))
        if "impairment" in request:
            link.egress.update(Impairment(**request["impairment"]))
        self._record(
            TraceEvent(
                time.time(),
                "link_changed",
                {
                    "link": link.config.name,
                    "up": link.egress.is_up,
                },
            )
        )
