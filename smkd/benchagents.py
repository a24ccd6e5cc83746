"""The worker side of ``smkd bench``: many agents in one process, instrumented.

A worker process loads the agent configs it is given, starts every agent on
its loopback address in one asyncio loop, and takes commands from the bench
process over a pipe: ``status``, ``mark``, ``join``, ``collect`` and ``stop``.
It counts each node's signature, verification, seal and open operations with
proxies around the node's identity and certificate directory, so the protocol
code runs unchanged.
"""

from __future__ import annotations

import asyncio
import cProfile
import dataclasses
import errno
import json
import logging
import resource
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO

from node.agent import Agent
from node.capture import CaptureRegistry
from node.config import AgentConfig, load_agent_config
from node.machine import TraceEvent

log = logging.getLogger("smkd.bench")

# the operations counted at every node; cert_verify is a certificate's CA
# signature, checked the first time a node's directory looks up a peer
CRYPTO_OPERATIONS = ("sign", "verify", "seal", "open", "cert_verify")

# hosts that start their join in one turn of a worker's event loop
JOINS_PER_TURN = 20

_JOIN_COMMAND = b'{"cmd": "join", "group": "%s"}'


# counting proxies


class CountingIdentity:
    """A node identity that counts its signatures and opened seals."""

    def __init__(self, identity: Any, operations: Counter[str]):
        self.name = identity.name
        self._identity = identity
        self._operations = operations

    def sign(self, suite_name: str, data: bytes) -> bytes:
        self._operations["sign"] += 1
        return self._identity.sign(suite_name, data)

    def open(self, suite_name: str, sealed: bytes, info: bytes) -> bytes:
        self._operations["open"] += 1
        return self._identity.open(suite_name, sealed, info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._identity, name)


class CountingPeer:
    """A peer certificate that counts the verifications and seals done with it."""

    def __init__(self, peer: Any, operations: Counter[str]):
        self.name = peer.name
        self.role = peer.role
        self.address = peer.address
        self.peer = peer
        self._operations = operations

    def verify(self, signature: bytes, data: bytes) -> None:
        self._operations["verify"] += 1
        self.peer.verify(signature, data)

    def seal(self, plaintext: bytes, info: bytes) -> bytes:
        self._operations["seal"] += 1
        return self.peer.seal(plaintext, info)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.peer, name)


class CountingDirectory:
    """A certificate directory whose peers count their operations."""

    def __init__(self, directory: Any, operations: Counter[str]):
        self._directory = directory
        self._operations = operations
        self._peers: dict[tuple[str, str], CountingPeer] = {}

    def lookup(
        self, name: str, suite_name: str, now: float, roles: Iterable[str]
    ) -> CountingPeer:
        peer = self._directory.lookup(name, suite_name, now, roles)

        # one proxy per certificate, replaced when the directory reloads it
        key = (name, suite_name)
        proxy = self._peers.get(key)
        if proxy is None or proxy.peer is not peer:
            proxy = CountingPeer(peer, self._operations)
            self._peers[key] = proxy
        return proxy

    @property
    def verifications(self) -> int:
        return self._directory.verifications


# traces


class SharedTrace:
    """The JSON-lines trace of every agent in a worker, in one file.

    It also keeps the events the bench measures: each host's first report
    and first installed key, report retransmissions and join timeouts, the
    re-key's start and each host's install of it, and the data received.
    """

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # the file stays open for the worker's life, closed by close()
        self._file: TextIO = open(path, "a", buffering=1 << 16)  # noqa: SIM115
        self.first_report: dict[str, float] = {}
        self.keyed: dict[str, float] = {}
        self.timeouts: set[str] = set()
        self.retransmissions = 0
        self.acl_accepted = False
        self.rekey_sent: float | None = None
        self.rekeyed: dict[str, float] = {}
        self.data_sent: float | None = None
        self.data_received: Counter[str] = Counter()
        self.data_last = 0.0

    def write(self, node: str, event: TraceEvent) -> None:
        record = {"t": round(event.time, 6), "node": node, "event": event.name}
        record.update(event.fields)
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._measure(node, event)

    def _measure(self, node: str, event: TraceEvent) -> None:
        name = event.name
        if name == "report_sent" and event.fields.get("code") == "join":
            if event.fields.get("attempt") == 1:
                self.first_report.setdefault(node, event.time)
            else:
                self.retransmissions += 1
        elif name == "key_installed":
            self.keyed.setdefault(node, event.time)
            if event.fields.get("via") == "rekey":
                self.rekeyed.setdefault(node, event.time)
        elif name == "rekey_sent" and self.rekey_sent is None:
            self.rekey_sent = event.time
        elif name == "data_sent" and self.data_sent is None:
            self.data_sent = event.time
        elif name == "data_received":
            self.data_received[node] += 1
            self.data_last = max(self.data_last, event.time)
        elif name == "join_timeout":
            self.timeouts.add(node)
        elif name == "acl_accepted":
            self.acl_accepted = True

    def close(self) -> None:
        self._file.close()


class AgentTrace:
    """One agent's view of the shared trace; the agent's stop leaves it open."""

    def __init__(self, shared: SharedTrace, node: str):
        self._shared = shared
        self._node = node

    def write(self, event: TraceEvent) -> None:
        self._shared.write(self._node, event)

    def close(self) -> None:
        return None


# the worker


@dataclass(frozen=True)
class WorkerSpec:
    """The nodes, agent config files and trace file of one worker process.

    ``configs`` maps each node to its agent config; the worker starts them in
    that order, so the bench lists cores before the initiator.
    """

    index: int
    configs: dict[str, Path]
    trace_path: Path
    group: str = "G"
    joins_per_turn: int = JOINS_PER_TURN
    log_path: Path | None = None
    profile_path: Path | None = None


@dataclass
class _Snapshot:
    operations: dict[str, Counter[str]]
    messages: dict[str, Counter[str]]
    cpu: float
    wall: float


@dataclass
class Worker:
    spec: WorkerSpec
    conn: Connection
    agents: dict[str, Agent] = field(default_factory=dict)
    operations: dict[str, Counter[str]] = field(default_factory=dict)
    directories: dict[str, CountingDirectory] = field(default_factory=dict)
    mark: _Snapshot | None = None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    join_task: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.trace = SharedTrace(self.spec.trace_path)
        self.captures = CaptureRegistry()

    # starting

    def load(self) -> None:
        for name, path in self.spec.configs.items():
            config = _bench_config(load_agent_config(path))
            agent = Agent(config, self.captures)
            operations: Counter[str] = Counter()
            machine = agent.machine
            machine.identity = CountingIdentity(machine.identity, operations)
            directory = CountingDirectory(machine.directory, operations)
            machine.directory = directory
            agent.trace = AgentTrace(self.trace, name)
            self.agents[name] = agent
            self.operations[name] = operations
            self.directories[name] = directory

    async def start(self) -> None:
        for agent in self.agents.values():
            await agent.start()

    # commands from the bench process

    def on_readable(self) -> None:
        while self.conn.poll():
            try:
                command = self.conn.recv()
            except EOFError:
                # the bench process is gone, so no stop command will come
                self.stopped.set()
                return
            self.conn.send(self.handle(command))

    def handle(self, command: str | tuple[Any, ...]) -> dict[str, Any]:
        if isinstance(command, tuple):
            return self.handle_group_command(*command)
        if command == "status":
            return self.status()
        if command == "mark":
            self.mark = self.snapshot()
            return {}
        if command == "join":
            self.join_task = asyncio.get_running_loop().create_task(self.join_all())
            return {}
        if command == "collect":
            return self.collect()
        if command == "phases":
            return self.phases()
        if command == "stop":
            self.stop()
            return {}
        raise ValueError(f"unknown worker command {command!r}")

    def handle_group_command(
        self, name: str, node: str, fields: dict[str, Any]
    ) -> dict[str, Any]:
        """Pass ``rekey`` or ``send`` to the agent of ``node``, as its control socket would."""
        if name not in ("rekey", "send"):
            raise ValueError(f"unknown worker command {name!r}")
        request = {"cmd": name, "group": self.spec.group, **fields}
        answer = self.agents[node].handle_command(json.dumps(request).encode())
        if not answer["ok"]:
            log.warning("%s: %s failed: %s", node, name, answer["error"])
        return answer

    def status(self) -> dict[str, Any]:
        return {
            "acl_accepted": self.trace.acl_accepted,
            "reported": len(self.trace.first_report),
            "keyed": len(self.trace.keyed),
            "timeouts": len(self.trace.timeouts),
            "rekeyed": len(self.trace.rekeyed),
            "data_received": dict(self.trace.data_received),
        }

    def phases(self) -> dict[str, Any]:
        """Return the times of the re-key and data phases, for the bench to merge."""
        return {
            "rekey_sent": self.trace.rekey_sent,
            "rekeyed": dict(self.trace.rekeyed),
            "data_sent": self.trace.data_sent,
            "data_received": dict(self.trace.data_received),
            "data_last": self.trace.data_last,
        }

    async def join_all(self) -> None:
        """Make every host join, ``joins_per_turn`` hosts per turn of the event loop.

        A turn takes as long as the work that is ready, so joins start only as
        fast as the agents take them in, and no report waits behind thousands
        of others. The hosts go round-robin over the LANs, so every DR's first
        join starts early.
        """
        command = _JOIN_COMMAND % self.spec.group.encode()
        hosts = [a for a in self.agents.values() if a.config.node.role == "host"]
        hosts.sort(key=lambda agent: _join_order(agent.name))
        batch = max(1, self.spec.joins_per_turn)
        for number, agent in enumerate(hosts, start=1):
            answer = agent.handle_command(command)
            if not answer["ok"]:
                log.warning("%s: join failed: %s", agent.name, answer["error"])
            if number % batch == 0:
                await asyncio.sleep(0)

    def snapshot(self) -> _Snapshot:
        operations = {}
        messages = {}
        for name, agent in self.agents.items():
            counted = Counter(self.operations[name])
            counted["cert_verify"] = self.directories[name].verifications
            operations[name] = counted
            messages[name] = Counter(agent.machine.counters)
        return _Snapshot(operations, messages, _cpu_seconds(), time.time())

    def collect(self) -> dict[str, Any]:
        """Return what each node did since the mark, and the hosts' join times."""
        assert self.mark is not None, "collect needs a mark first"
        now = self.snapshot()
        nodes = {}
        for name, agent in self.agents.items():
            operations = now.operations[name] - self.mark.operations[name]
            counters = now.messages[name] - self.mark.messages[name]
            sent = sum(v for k, v in counters.items() if k.startswith("sent:"))
            drops = sum(v for k, v in counters.items() if k.startswith("drop:"))
            nodes[name] = {
                "role": agent.config.node.role,
                "operations": dict(operations),
                "sent": sent,
                "received": counters["received"],
                "drops": drops,
            }
        return {
            "nodes": nodes,
            "first_report": dict(self.trace.first_report),
            "keyed": dict(self.trace.keyed),
            "timeouts": sorted(self.trace.timeouts),
            "retransmissions": self.trace.retransmissions,
            "cpu_seconds": now.cpu - self.mark.cpu,
            "wall_seconds": now.wall - self.mark.wall,
            "max_rss_kib": peak_resident_kib(),
        }

    def stop(self) -> None:
        if self.join_task is not None:
            self.join_task.cancel()
        for agent in self.agents.values():
            agent.stop()
        self.captures.close()
        self.trace.close()
        self.stopped.set()


def _bench_config(config: AgentConfig) -> AgentConfig:
    """Drop the control socket, trace file and captures that ``smkd run`` uses.

    The bench talks to agents in-process and writes one trace per worker, so
    each agent keeps one file descriptor: its UDP socket.
    """
    links = tuple(dataclasses.replace(link, capture=None) for link in config.links)
    return dataclasses.replace(
        config, control_path=None, trace_path=None, unicast_capture=None, links=links
    )


def _address_in_use(error: BaseException) -> bool:
    """Return whether ``error`` comes from a bind to an address already in use.

    The agent raises ConfigError from None, which keeps the OSError as the
    exception's context.
    """
    context = error.__context__
    return isinstance(context, OSError) and context.errno == errno.EADDRINUSE


def _join_order(host: str) -> tuple[int, str]:
    """Sort key that takes the first host of every LAN, then the second, and so on.

    Importer host names end in their number on the LAN, as in ``h-Paris-3``.
    """
    prefix, _, number = host.rpartition("-")
    return (int(number), prefix) if number.isdigit() else (0, host)


def peak_resident_kib() -> int:
    """Return this process's peak resident memory in KiB.

    Linux keeps ``ru_maxrss`` across exec, so a spawned worker would report
    at least the bench process's memory at the fork. VmHWM in
    /proc/self/status starts afresh with the new program. Falls back to
    ``ru_maxrss`` where that file does not exist.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


async def _serve(spec: WorkerSpec, conn: Connection) -> None:
    worker = Worker(spec, conn)
    worker.load()
    await worker.start()
    conn.send({"started": len(worker.agents)})
    loop = asyncio.get_running_loop()
    loop.add_reader(conn.fileno(), worker.on_readable)
    await worker.stopped.wait()
    loop.remove_reader(conn.fileno())


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """Run one worker process until the bench sends ``stop``."""
    raise_open_file_limit()
    # the agents log every first drop per peer and reason, which at 10,000
    # agents would bury the progress display, so the log goes to a file
    logging.basicConfig(
        level=logging.WARNING,
        filename=spec.log_path,
        format=f"%(asctime)s worker {spec.index} %(levelname)s %(message)s",
    )
    profiler = None
    if spec.profile_path is not None:
        profiler = cProfile.Profile()
        profiler.enable()
    try:
        asyncio.run(_serve(spec, conn))
    except Exception as error:
        # the bench process waits on the pipe, so it gets the error to report
        log.exception("worker %d failed", spec.index)
        conn.send({
            "error": f"worker {spec.index} failed: {error}",
            "address_in_use": _address_in_use(error),
        })
    finally:
        if profiler is not None and spec.profile_path is not None:
            profiler.disable()
            profiler.dump_stats(spec.profile_path)
        conn.close()
