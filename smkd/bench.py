"""``smkd bench``: measure how key distribution scales, distributed against central.

RFC 1949 claims that handing GKDC duty to every authenticated tree router
makes key distribution scale where a central KDC does not. The bench runs
the same joins in three modes on Topology Zoo networks of growing size:

- ``distributed``: the RFC's model, every router a join-ack reaches holds keys;
- ``strict``: section 7, only cores hold keys and authenticate joins;
- ``central``: section 4's baseline, the primary core keys every host itself.

Each run starts every agent on the local backend's loopback addresses, spread
over worker processes (smkd.benchagents), makes every host join at once and
measures the work at the primary core and at the busiest node, the join
latency, memory and CPU time against the crypto floor. smkd.benchreport
writes the CSV, the plots and a Markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from node.errors import ConfigError
from node.machine import Timers
from node.pki import Directory, Identity

from .backends.local import PORT
from .benchagents import (
    CRYPTO_OPERATIONS,
    JOINS_PER_TURN,
    WorkerSpec,
    raise_open_file_limit,
    worker_main,
)
from .benchnet import (
    TOPOLOGIES,
    AddressInUse,
    BenchError,
    BenchNetwork,
    build_network,
    initiator_config,
    partition,
)
from .benchreport import RunResult, apply_phases, markdown_table, write_outputs

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130

MODES = ("distributed", "strict", "central")
SIZES = (100, 1_000, 10_000)
QUICK_TOPOLOGIES = ("abilene",)
QUICK_SIZES = (20, 60)

# how often the bench asks the workers for progress, in seconds
POLL_INTERVAL = 0.25

# seconds the re-key or the data burst may take before the run moves on
PHASE_TIMEOUT = 60.0

# data packets one member sends after the re-key, fewer on large groups so
# that packets times receivers stays within the budget
DATA_PACKETS = 50
DATA_DELIVERY_BUDGET = 100_000


@dataclass(frozen=True)
class Study:
    """The runs of one ``smkd bench`` call: topologies x sizes x modes."""

    topologies: tuple[str, ...]
    sizes: tuple[int, ...]
    modes: tuple[str, ...]
    workers: int
    join_timeout: float
    stall_timeout: float
    seed: int
    out: Path
    profile: bool = False
    joins_per_turn: int = JOINS_PER_TURN

    @property
    def run_count(self) -> int:
        return len(self.topologies) * len(self.sizes) * len(self.modes)


# running one mode on one network


@dataclass
class _Worker:
    spec: WorkerSpec
    process: multiprocessing.process.BaseProcess
    conn: Connection


class Progress:
    """Prints each step; on a terminal one line also shows live join progress."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.live = sys.stdout.isatty() and not quiet
        self.last_update = 0.0

    def step(self, message: str) -> None:
        if self.quiet:
            return
        if self.live:
            print("\r\033[K", end="")
        print(message, flush=True)

    def update(self, message: str) -> None:
        if self.quiet:
            return
        if self.live:
            print(f"\r\033[K{message}", end="", flush=True)
            return
        # without a terminal, one line every 5 s keeps logs short
        now = time.monotonic()
        if now - self.last_update >= 5.0:
            self.last_update = now
            print(message, flush=True)


def run_mode(
    network: BenchNetwork, mode: str, study: Study, progress: Progress, label: str
) -> RunResult:
    """Run every host's join in ``mode`` and measure it."""
    initiator = initiator_config(network, mode)
    mode_dir = network.directory / mode
    (mode_dir / "logs").mkdir(parents=True, exist_ok=True)
    specs = partition(
        network, initiator, study.workers, mode_dir, study.profile,
        study.joins_per_turn,
    )
    hosts = len(network.hosts)
    context = multiprocessing.get_context("spawn")
    workers: list[_Worker] = []
    try:
        started = time.monotonic()
        for spec in specs:
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(spec, child), daemon=True)
            process.start()
            child.close()
            workers.append(_Worker(spec, process, parent))
        progress.update(f"{label}: starting {len(network.topology.nodes):,} agents")
        _expect_all(workers, timeout=120.0 + 0.02 * len(network.topology.nodes))
        _wait_for_acl(workers[0])
        start_seconds = time.monotonic() - started

        _command_all(workers, "mark")
        _command_all(workers, "join")
        _watch(
            workers, lambda statuses: sum(s["keyed"] for s in statuses), hosts,
            f"{label}: hosts that hold the key", study.join_timeout, study, progress,
        )
        collected = _command_all(workers, "collect")
        # read while the agents' sockets are still open
        socket_drops = _socket_drops(network)
        load_average = os.getloadavg()[0]
        members = sorted(host for part in collected for host in part["keyed"])
        phases = _run_phases(workers, network, members, study, progress, label)
    finally:
        _stop(workers)

    floor = measure_crypto(network)
    result = summarize(network, mode, collected, floor, start_seconds, socket_drops)
    result.load_average = load_average
    apply_phases(result, phases)
    return result


def _send(worker: _Worker, command: str | tuple[Any, ...]) -> None:
    try:
        worker.conn.send(command)
    except (BrokenPipeError, OSError) as error:
        raise BenchError(f"worker {worker.spec.index} is gone: {error}") from None


def _receive(worker: _Worker, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not worker.conn.poll(0.1):
        if not worker.process.is_alive():
            raise BenchError(
                f"worker {worker.spec.index} exited with code {worker.process.exitcode}"
            )
        if time.monotonic() > deadline:
            raise BenchError(
                f"worker {worker.spec.index} did not respond within {timeout:g} s"
            )
    try:
        answer = worker.conn.recv()
    except EOFError:
        raise BenchError(f"worker {worker.spec.index} closed its pipe") from None
    if "error" in answer:
        if answer.get("address_in_use"):
            raise AddressInUse(answer["error"])
        raise BenchError(answer["error"])
    return answer


def _expect_all(workers: list[_Worker], timeout: float) -> list[dict[str, Any]]:
    return [_receive(worker, timeout) for worker in workers]


def _command_all(
    workers: list[_Worker], command: str, timeout: float = 120.0
) -> list[dict[str, Any]]:
    for worker in workers:
        _send(worker, command)
    return _expect_all(workers, timeout)


def _wait_for_acl(worker: _Worker, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _send(worker, "status")
        if _receive(worker, timeout)["acl_accepted"]:
            return
        time.sleep(0.05)
    raise BenchError(f"the primary core did not accept the ACL within {timeout:g} s")


def _watch(
    workers: list[_Worker],
    measure: Callable[[list[dict[str, Any]]], int],
    target: int,
    what: str,
    timeout: float,
    study: Study,
    progress: Progress,
) -> None:
    """Poll the workers until ``measure`` reaches ``target``, stalls or times out.

    ``measure`` turns the workers' statuses into a count, such as the hosts
    that hold the key; ``what`` names it in the progress display.
    """
    started = time.monotonic()
    last, last_change = -1, started
    while True:
        time.sleep(POLL_INTERVAL)
        done = measure(_command_all(workers, "status"))
        now = time.monotonic()
        progress.update(
            f"{what}: {done:,} of {target:,} ({100 * done // max(1, target)}%), "
            f"{now - started:.1f} s"
        )
        if done >= target:
            return
        if done != last:
            last, last_change = done, now
        if now - last_change > study.stall_timeout or now - started > timeout:
            return


# the re-key and data phases, after the joins


def data_packet_count(members: int) -> int:
    """Return how many data packets the sender sends to ``members`` members.

    Each delivery costs a receiver a signature check, and every receiver
    runs on this one machine, so large groups get fewer packets.
    """
    return max(5, min(DATA_PACKETS, DATA_DELIVERY_BUDGET // max(1, members)))


def _run_phases(
    workers: list[_Worker], network: BenchNetwork, members: list[str], study: Study,
    progress: Progress, label: str,
) -> dict[str, Any]:
    """Re-key the group, then have one member send a burst of data.

    Returns the members, the packet count and the workers' phase records.
    """
    if len(members) < 2:
        return {"members": len(members)}

    # the primary core runs in worker 0, with the other core and the initiator
    _send(workers[0], ("rekey", network.primary_core, {}))
    _receive(workers[0], 30.0)
    _watch(
        workers, lambda statuses: sum(s["rekeyed"] for s in statuses), len(members),
        f"{label}: members that hold the new key", PHASE_TIMEOUT, study, progress,
    )

    # a member sends under the previous key for rekey_activation seconds
    # after the notice, and a receiver drops that key rekey_grace seconds
    # later. Waiting keeps a late packet of the burst from finding its key
    # erased, since the bench configs leave both timers at the node defaults
    time.sleep(Timers().rekey_activation)

    sender = members[0]
    count = data_packet_count(len(members))
    owner = next(worker for worker in workers if sender in worker.spec.configs)
    _send(owner, ("send", sender, {"count": count, "size": 100, "interval": 0.0}))
    _receive(owner, 30.0)

    def complete(statuses: list[dict[str, Any]]) -> int:
        return sum(
            1 for status in statuses
            for received in status["data_received"].values() if received >= count
        )

    _watch(
        workers, complete, len(members) - 1,
        f"{label}: members that received all {count} data packets", PHASE_TIMEOUT,
        study, progress,
    )
    records = _command_all(workers, "phases")
    return {"members": len(members), "count": count, "records": records}


def _stop(workers: list[_Worker]) -> None:
    for worker in workers:
        if worker.process.is_alive():
            try:
                worker.conn.send("stop")
            except (BrokenPipeError, OSError):
                pass
    for worker in workers:
        worker.process.join(timeout=30.0)
        if worker.process.is_alive():
            # a worker stuck in its loop; it is ours, so end it by its handle
            worker.process.kill()
            worker.process.join()
        worker.conn.close()


def _socket_drops(network: BenchNetwork) -> int:
    """Return how many datagrams the kernel dropped at the agents' sockets.

    Linux lists each UDP socket in /proc/net/udp with the datagrams it
    dropped, mostly for a full receive buffer. Returns 0 where that file
    does not exist.
    """
    addresses = {node.address for node in network.topology.nodes.values()}
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return 0
    drops = 0
    for line in lines:
        fields = line.split()
        address, port = _proc_address(fields[1])
        if port == PORT and address in addresses:
            drops += int(fields[-1])
    return drops


def _proc_address(field: str) -> tuple[str, int]:
    """Decode ``0100007F:1E61``, the host-order hex of /proc/net/udp."""
    address, port = field.split(":")
    packed = int(address, 16).to_bytes(4, sys.byteorder)
    return socket.inet_ntoa(packed), int(port, 16)


# the crypto floor


def measure_crypto(network: BenchNetwork, repeats: int = 200) -> dict[str, float]:
    """Return the CPU seconds of one operation of each kind, measured here and now.

    Each operation works on a message of typical size with the keys of the
    run's own PKI; cert_verify is a directory's first lookup of a node.
    """
    suite = next(iter(network.topology.groups.values())).suite
    pki = network.directory / "pki"
    hosts = network.hosts
    identity = Identity.load(pki, hosts[0], [suite])
    directory = Directory(pki)
    peer = directory.lookup(hosts[0], suite, time.time(), ("host",))
    data = os.urandom(300)
    bundle = os.urandom(140)
    info = b"smkd bench"

    signature = identity.sign(suite, data)
    sealed = peer.seal(bundle, info)
    cases = {
        "sign": lambda: identity.sign(suite, data),
        "verify": lambda: peer.verify(signature, data),
        "seal": lambda: peer.seal(bundle, info),
        "open": lambda: identity.open(suite, sealed, info),
    }
    seconds = {name: _cpu_time(case, repeats) for name, case in cases.items()}

    # a fresh directory verifies each node certificate once, CA loaded first
    names = iter(hosts[1 : 1 + repeats] or hosts)
    fresh = Directory(pki)
    fresh.lookup(network.primary_core, suite, time.time(), ("core",))
    count = min(repeats, max(1, len(hosts) - 1))
    seconds["cert_verify"] = _cpu_time(
        lambda: fresh.lookup(next(names), suite, time.time(), ("host",)), count
    )
    return seconds


def _cpu_time(case, repeats: int) -> float:
    begin = time.process_time()
    for _ in range(repeats):
        case()
    return (time.process_time() - begin) / repeats


# metrics


def summarize(
    network: BenchNetwork,
    mode: str,
    collected: list[dict[str, Any]],
    floor: dict[str, float],
    start_seconds: float,
    socket_drops: int,
) -> RunResult:
    """Merge the workers' results into one run's metrics."""
    nodes: dict[str, dict[str, Any]] = {}
    first_report: dict[str, float] = {}
    keyed: dict[str, float] = {}
    for part in collected:
        nodes.update(part["nodes"])
        first_report.update(part["first_report"])
        keyed.update(part["keyed"])

    latencies = sorted(
        keyed[host] - first_report[host] for host in keyed if host in first_report
    )
    totals: Counter[str] = Counter()
    for node in nodes.values():
        totals.update(node["operations"])
    joins = len(keyed)
    per_join = {op: totals[op] / joins if joins else 0.0 for op in CRYPTO_OPERATIONS}
    floor_seconds = sum(per_join[op] * floor[op] for op in CRYPTO_OPERATIONS)
    cpu = sum(part["cpu_seconds"] for part in collected)
    join_phase = max(part["wall_seconds"] for part in collected)
    usable_cpus = min(len(collected), os.cpu_count() or 1)

    busiest = max(nodes, key=lambda name: _crypto_ops(nodes[name]))
    agents_kib = sum(part["max_rss_kib"] for part in collected)
    all_keyed = None
    if joins == len(network.hosts) and first_report:
        all_keyed = max(keyed.values()) - min(first_report.values())
    return RunResult(
        topology=network.name,
        mode=mode,
        target_hosts=network.target_hosts,
        routers=len(network.routers),
        hosts=len(network.hosts),
        hosts_keyed=joins,
        workers=len(collected),
        core=_node_metrics(nodes[network.primary_core]),
        busiest_node=busiest,
        busiest=_node_metrics(nodes[busiest]),
        latencies=latencies,
        all_keyed_seconds=all_keyed,
        peak_memory_mib=(agents_kib + _resident_kib()) / 1024,
        agents_memory_mib=agents_kib / 1024,
        cpu_per_join=cpu / joins if joins else None,
        crypto_floor=floor_seconds if joins else None,
        operations_per_join=per_join,
        operation_seconds=floor,
        report_retransmissions=sum(p["retransmissions"] for p in collected),
        join_timeouts=sum(len(p["timeouts"]) for p in collected),
        drops=sum(node["drops"] for node in nodes.values()),
        socket_drops=socket_drops,
        start_seconds=start_seconds,
        join_phase_seconds=join_phase,
        cpu_share=cpu / (join_phase * usable_cpus) if join_phase > 0 else 0.0,
    )


def _resident_kib() -> int:
    """Return this process's resident memory now, in KiB.

    The bench process's peak would carry over from the largest run before,
    so the run adds what the bench holds now. Falls back to that peak where
    /proc does not exist.
    """
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _crypto_ops(node: dict[str, Any]) -> int:
    return sum(node["operations"].get(op, 0) for op in CRYPTO_OPERATIONS)


def _node_metrics(node: dict[str, Any]) -> dict[str, int]:
    metrics = {"messages": node["sent"] + node["received"]}
    for op in CRYPTO_OPERATIONS:
        metrics[op] = node["operations"].get(op, 0)
    metrics["crypto_ops"] = _crypto_ops(node)
    return metrics


# the study


def run_study(study: Study, progress: Progress) -> tuple[list[RunResult], list[str]]:
    """Run every topology, size and mode; return the results and the failures."""
    results: list[RunResult] = []
    failures: list[str] = []
    number = 0
    for name in study.topologies:
        for size in study.sizes:
            begin = time.monotonic()
            network = build_network(name, size, study.out, study.seed)
            progress.step(
                f"{name}: {len(network.hosts):,} hosts on {len(network.routers)} "
                f"routers ({network.hosts_per_router} per LAN), PKI and configs in "
                f"{time.monotonic() - begin:.1f} s"
            )
            for mode in study.modes:
                number += 1
                label = f"[{number}/{study.run_count}] {name} {size:,} {mode}"
                try:
                    result, network = _run_placed(network, mode, study, progress, label)
                except BenchError as error:
                    failures.append(f"{label}: {error}")
                    progress.step(f"{label}: FAILED: {error}")
                    continue
                results.append(result)
                progress.step(f"{label}: {result.describe()}")
            write_outputs(results, study.out, study_command(study), failures)
    return results, failures


def _run_placed(
    network: BenchNetwork, mode: str, study: Study, progress: Progress, label: str,
    attempts: int = 3,
) -> tuple[RunResult, BenchNetwork]:
    """Run one mode, moving the network to another block if its addresses are taken.

    Another process may bind an address between the placement and the run.
    Returns the result and the network as it was last placed.
    """
    for attempt in range(1, attempts + 1):
        try:
            return run_mode(network, mode, study, progress, label), network
        except AddressInUse as error:
            if attempt == attempts:
                raise
            progress.step(f"{label}: {error}; moving the network to another block")
            network = build_network(
                network.name, network.target_hosts, study.out, study.seed
            )
    raise AssertionError("unreachable")


def study_command(study: Study) -> str:
    """Return the command line that repeats this study."""
    parts = ["smkd bench"]
    if study.topologies != tuple(TOPOLOGIES):
        parts.append(f"--topologies {','.join(study.topologies)}")
    if study.sizes != SIZES:
        parts.append(f"--sizes {','.join(str(s) for s in study.sizes)}")
    if study.modes != MODES:
        parts.append(f"--modes {','.join(study.modes)}")
    parts.append(f"--workers {study.workers}")
    if study.joins_per_turn != JOINS_PER_TURN:
        parts.append(f"--joins-per-turn {study.joins_per_turn}")
    return " ".join(parts)


# command line


def add_bench_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="measure key distribution at scale: distributed, strict and central",
        description=(
            "Run every host's secure join on Topology Zoo networks (Abilene, "
            "Geant2012, Cogentco) with 100, 1,000 and 10,000 hosts in three modes "
            "(distributed GKDCs, strict, central KDC), and write results.csv, "
            "latencies.csv, plots and summary.md to the output directory. "
            "Exits with 0 when every run finished, 1 when a run failed and 2 for "
            "invalid options."
        ),
    )
    parser.add_argument("--quick", action="store_true",
                        help="a short study: Abilene with 20 and 60 hosts, every "
                             "mode (under two minutes)")
    parser.add_argument("--topologies",
                        help=f"comma-separated networks from {', '.join(TOPOLOGIES)} "
                             "(default all)")
    parser.add_argument("--sizes",
                        help="comma-separated host counts (default 100,1000,10000)")
    parser.add_argument("--modes",
                        help=f"comma-separated modes from {', '.join(MODES)} "
                             "(default all)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for the routers and hosts of a run, "
                             "besides one for the cores (default: one per CPU)")
    parser.add_argument("--join-timeout", type=float, default=120.0,
                        help="seconds to wait for every host to hold the key "
                             "(default 120)")
    parser.add_argument("--stall-timeout", type=float, default=30.0,
                        help="end a run when no host gained the key for this many "
                             "seconds (default 30)")
    parser.add_argument("--joins-per-turn", type=int, default=JOINS_PER_TURN,
                        help="hosts per worker that start their join in one turn "
                             f"of its event loop (default {JOINS_PER_TURN})")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the link emulation (default 1)")
    parser.add_argument("--out", help="output directory to create "
                                      "(default runs/bench-YYYYMMDD-HHMMSS)")
    parser.add_argument("--profile", action="store_true",
                        help="profile each worker with cProfile into "
                             "runs/NETWORK/MODE/worker-N.prof")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="print only the summary table")
    parser.set_defaults(handler=bench_command)


def parse_study(args: argparse.Namespace) -> Study:
    """Turn the options into a study; raise ConfigError for an invalid one."""
    topologies = _choices(args.topologies, TOPOLOGIES, "network")
    modes = _choices(args.modes, MODES, "mode")
    if args.quick:
        topologies = topologies if args.topologies else QUICK_TOPOLOGIES
    sizes = QUICK_SIZES if args.quick and not args.sizes else _sizes(args.sizes)
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers} is invalid; use 1 or more")
    if args.joins_per_turn < 1:
        raise ConfigError(
            f"--joins-per-turn {args.joins_per_turn} is invalid; use 1 or more"
        )
    for option in ("join_timeout", "stall_timeout"):
        if getattr(args, option) <= 0:
            raise ConfigError(f"--{option.replace('_', '-')} must be positive")
    return Study(topologies, sizes, modes, args.workers, args.join_timeout,
                 args.stall_timeout, args.seed, _out_dir(args.out), args.profile,
                 args.joins_per_turn)


def _choices(value: str | None, known, what: str) -> tuple[str, ...]:
    if value is None:
        return tuple(known)
    chosen = tuple(part.strip().lower() for part in value.split(",") if part.strip())
    unknown = [name for name in chosen if name not in known]
    if unknown or not chosen:
        raise ConfigError(
            f"invalid {what} {', '.join(unknown) or repr(value)}; "
            f"choose from {', '.join(known)}"
        )
    return chosen


def _sizes(value: str | None) -> tuple[int, ...]:
    if value is None:
        return SIZES
    try:
        sizes = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise ConfigError(f"invalid --sizes {value!r}; write numbers such as "
                          "100,1000") from None
    if not sizes or min(sizes) < 1:
        raise ConfigError(f"invalid --sizes {value!r}; each size must be at least 1")
    return sizes


def _out_dir(out: str | None) -> Path:
    if out is None:
        return Path("runs") / time.strftime("bench-%Y%m%d-%H%M%S")
    path = Path(out)
    if path.exists() and any(path.iterdir()):
        raise ConfigError(f"output directory {path} exists and is not empty; "
                          "choose another --out or remove it")
    return path


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def bench_command(args: argparse.Namespace) -> int:
    try:
        study = parse_study(args)
    except ConfigError as error:
        print(f"smkd bench: {error}", file=sys.stderr)
        return EXIT_INVALID
    study.out.mkdir(parents=True, exist_ok=True)
    limit = raise_open_file_limit()
    # a TERM stops the workers as Ctrl-C does, instead of orphaning them
    signal.signal(signal.SIGTERM, _interrupt)
    progress = Progress(args.quiet)
    progress.step(
        f"smkd bench: {study.run_count} runs, {study.workers} workers, open-file "
        f"limit {limit:,} per process, output in {study.out}"
    )
    try:
        results, failures = run_study(study, progress)
    except KeyboardInterrupt:
        print("smkd bench: interrupted; workers stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ConfigError as error:
        print(f"smkd bench: {error}", file=sys.stderr)
        return EXIT_INVALID
    print()
    print(markdown_table(results))
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    print(f"results: {study.out / 'results.csv'}, {study.out / 'summary.md'}")
    return EXIT_FAILED if failures else EXIT_OK
