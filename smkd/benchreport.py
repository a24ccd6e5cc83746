"""The outputs of ``smkd bench``: results.csv, latencies.csv, plots and summary.md."""

from __future__ import annotations

import csv
import os
import platform
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# percentiles use the nearest-rank method, so p99 is an observed latency
PERCENTILES = (50, 99)

CSV_COLUMNS = (
    "topology", "mode", "target_hosts", "routers", "hosts", "hosts_keyed", "workers",
    "core_messages", "core_sign", "core_verify", "core_seal", "core_open",
    "core_cert_verify", "core_crypto_ops",
    "busiest_node", "busiest_messages", "busiest_crypto_ops",
    "join_p50_s", "join_p99_s", "join_max_s", "all_keyed_s",
    "rekey_s", "rekeyed_hosts", "data_packets", "data_packets_per_s",
    "data_deliveries", "data_deliveries_per_s",
    "peak_memory_mib", "agents_memory_mib", "cpu_per_join_ms", "crypto_floor_ms", "cpu_to_floor",
    "sign_per_join", "verify_per_join", "seal_per_join", "open_per_join",
    "cert_verify_per_join",
    "sign_us", "verify_us", "seal_us", "open_us", "cert_verify_us",
    "report_retransmissions", "join_timeouts", "drops", "socket_drops",
    "start_s", "join_phase_s", "cpu_share", "load_average_1m",
)


@dataclass
class RunResult:
    """The metrics of one mode on one network; times in seconds."""

    topology: str
    mode: str
    target_hosts: int
    routers: int
    hosts: int
    hosts_keyed: int
    workers: int
    core: dict[str, int]
    busiest_node: str
    busiest: dict[str, int]
    latencies: list[float]
    all_keyed_seconds: float | None
    peak_memory_mib: float
    cpu_per_join: float | None
    crypto_floor: float | None
    operations_per_join: dict[str, float]
    operation_seconds: dict[str, float]
    report_retransmissions: int
    join_timeouts: int
    drops: int
    socket_drops: int
    start_seconds: float
    join_phase_seconds: float
    # the workers' CPU time over the join phase as a fraction of what the
    # machine's CPUs could give them, low when other processes took the CPUs
    cpu_share: float = 0.0
    # the machine's 1-minute load average at the end of the join phase,
    # which counts the bench's own busy workers too
    load_average: float = 0.0
    # the sum of the worker processes' peak resident memory; peak_memory_mib
    # adds the bench process's resident memory at the end of the run
    agents_memory_mib: float = 0.0
    # the re-key after the joins: from the primary core's notice to the last
    # member's install, when every member installed it
    rekey_seconds: float | None = None
    rekeyed_hosts: int = 0
    # one member's burst of data packets after the re-key: packets per second
    # when every other member received them all, and deliveries per second
    data_packets: int = 0
    data_packets_per_second: float | None = None
    data_deliveries: int = 0
    data_deliveries_per_second: float | None = None

    def percentile(self, percent: float) -> float | None:
        if not self.latencies:
            return None
        rank = max(1, -(-len(self.latencies) * percent // 100))
        return self.latencies[int(rank) - 1]

    @property
    def cpu_to_floor(self) -> float | None:
        if not self.cpu_per_join or not self.crypto_floor:
            return None
        return self.cpu_per_join / self.crypto_floor

    def describe(self) -> str:
        """Summarise the run on one line for the progress display."""
        p50 = _format(self.percentile(50), 1000, "ms")
        p99 = _format(self.percentile(99), 1000, "ms")
        done = _format(self.all_keyed_seconds, 1, "s")
        ratio = _format(self.cpu_to_floor, 1, "x")
        rekey = _format(self.rekey_seconds, 1000, "ms")
        rate = _format(self.data_packets_per_second, 1, "pkt/s")
        return (
            f"{self.hosts_keyed:,}/{self.hosts:,} hold the key, all in {done}; "
            f"join p50 {p50}, p99 {p99}; primary core {self.core['crypto_ops']:,} "
            f"crypto ops; CPU/join {ratio} the floor; "
            f"{self.peak_memory_mib:,.0f} MiB; re-key {rekey}; data {rate}"
        )

    def row(self) -> dict[str, Any]:
        """Return the CSV row: empty cells where a metric is not available."""
        row: dict[str, Any] = {
            "topology": self.topology, "mode": self.mode,
            "target_hosts": self.target_hosts, "routers": self.routers,
            "hosts": self.hosts, "hosts_keyed": self.hosts_keyed,
            "workers": self.workers,
            "busiest_node": self.busiest_node,
            "busiest_messages": self.busiest["messages"],
            "busiest_crypto_ops": self.busiest["crypto_ops"],
            "join_p50_s": _round(self.percentile(50)),
            "join_p99_s": _round(self.percentile(99)),
            "join_max_s": _round(self.latencies[-1] if self.latencies else None),
            "all_keyed_s": _round(self.all_keyed_seconds),
            "rekey_s": _round(self.rekey_seconds),
            "rekeyed_hosts": self.rekeyed_hosts,
            "data_packets": self.data_packets,
            "data_packets_per_s": _round(self.data_packets_per_second, 1),
            "data_deliveries": self.data_deliveries,
            "data_deliveries_per_s": _round(self.data_deliveries_per_second, 1),
            "peak_memory_mib": round(self.peak_memory_mib, 1),
            "agents_memory_mib": round(self.agents_memory_mib, 1),
            "cpu_per_join_ms": _round(_scale(self.cpu_per_join, 1000)),
            "crypto_floor_ms": _round(_scale(self.crypto_floor, 1000)),
            "cpu_to_floor": _round(self.cpu_to_floor, 2),
            "report_retransmissions": self.report_retransmissions,
            "join_timeouts": self.join_timeouts,
            "drops": self.drops,
            "socket_drops": self.socket_drops,
            "start_s": _round(self.start_seconds, 2),
            "join_phase_s": _round(self.join_phase_seconds, 2),
            "cpu_share": round(self.cpu_share, 2),
            "load_average_1m": round(self.load_average, 2),
        }
        for name, value in self.core.items():
            row[f"core_{name}"] = value
        for name, value in self.operations_per_join.items():
            row[f"{name}_per_join"] = round(value, 3)
        for name, value in self.operation_seconds.items():
            row[f"{name}_us"] = round(value * 1e6, 1)
        return row


def _scale(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def _round(value: float | None, digits: int = 4) -> float | str:
    return "" if value is None else round(value, digits)


def _format(value: float | None, factor: float, unit: str) -> str:
    if value is None:
        return "n/a"
    if unit == "x":
        return f"{value:.1f}x"
    return f"{value * factor:,.1f} {unit}"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.1f}"


def apply_phases(result: RunResult, phases: dict[str, Any]) -> None:
    """Fill in the re-key and data metrics from the workers' phase records."""
    records = phases.get("records")
    if not records:
        return
    members = phases["members"]

    rekey_starts = [r["rekey_sent"] for r in records if r["rekey_sent"] is not None]
    rekeyed: dict[str, float] = {}
    for record in records:
        rekeyed.update(record["rekeyed"])
    result.rekeyed_hosts = len(rekeyed)
    if rekey_starts and len(rekeyed) >= members:
        result.rekey_seconds = max(rekeyed.values()) - min(rekey_starts)

    count = phases["count"]
    received: Counter[str] = Counter()
    for record in records:
        received.update(record["data_received"])
    result.data_packets = count
    result.data_deliveries = sum(received.values())
    data_starts = [r["data_sent"] for r in records if r["data_sent"] is not None]
    last = max(record["data_last"] for record in records)
    if not data_starts or last <= min(data_starts):
        return

    # the sender never receives its own packets, so members - 1 receive them
    duration = last - min(data_starts)
    result.data_deliveries_per_second = result.data_deliveries / duration
    if sum(1 for n in received.values() if n >= count) >= members - 1:
        result.data_packets_per_second = count / duration


# files


def write_outputs(
    results: list[RunResult], out: Path, command: str, failures: list[str]
) -> None:
    """Write every output for the runs so far; a later call overwrites them."""
    write_csv(results, out / "results.csv")
    write_latencies(results, out / "latencies.csv")
    plots = write_plots(results, out / "plots")
    summary = summary_markdown(results, command, plots, failures)
    (out / "summary.md").write_text(summary)


def write_csv(results: list[RunResult], path: Path) -> None:
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for result in results:
            writer.writerow(result.row())


def write_latencies(results: list[RunResult], path: Path) -> None:
    """Write each host's join latency, one row per host, for CDFs elsewhere."""
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(("topology", "mode", "hosts", "latency_s"))
        for result in results:
            for latency in result.latencies:
                writer.writerow(
                    (result.topology, result.mode, result.hosts, round(latency, 6))
                )


def write_plots(results: list[RunResult], directory: Path) -> list[Path]:
    """Draw the primary-core load and the join latency CDFs; return the files.

    Returns no files when matplotlib is missing (``pip install smkd[bench]``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    directory.mkdir(parents=True, exist_ok=True)
    topologies = list(dict.fromkeys(r.topology for r in results))
    if not topologies:
        return []
    paths = [
        _plot_core_load(plt, results, topologies, directory / "core-load.png"),
        _plot_latency_cdf(plt, results, topologies, directory / "join-latency-cdf.png"),
    ]
    return paths


def _plot_core_load(plt, results, topologies, path: Path) -> Path:
    figure, axes = plt.subplots(
        1, len(topologies), figsize=(4.2 * len(topologies), 3.6), squeeze=False
    )
    for axis, topology in zip(axes[0], topologies, strict=True):
        for mode in dict.fromkeys(r.mode for r in results):
            runs = sorted(
                (r for r in results if r.topology == topology and r.mode == mode),
                key=lambda r: r.hosts,
            )
            if runs:
                axis.plot([r.hosts for r in runs], [r.core["crypto_ops"] for r in runs],
                          marker="o", label=mode)
        axis.set_title(topology)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("hosts")
        axis.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("primary-core crypto operations")
    axes[0][0].legend()
    figure.suptitle("Primary-core signature, verification, seal and open operations")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _plot_latency_cdf(plt, results, topologies, path: Path) -> Path:
    figure, axes = plt.subplots(
        1, len(topologies), figsize=(4.2 * len(topologies), 3.6), squeeze=False
    )
    for axis, topology in zip(axes[0], topologies, strict=True):
        runs = [r for r in results if r.topology == topology]
        largest = max(r.hosts for r in runs)
        for run in runs:
            if run.hosts != largest or not run.latencies:
                continue
            # a fraction of all hosts, so a run that keyed only some of them
            # levels off below 1
            fractions = [(i + 1) / run.hosts for i in range(len(run.latencies))]
            axis.plot(run.latencies, fractions,
                      label=f"{run.mode} ({run.hosts_keyed:,}/{run.hosts:,})")
        axis.set_title(f"{topology}, {largest:,} hosts")
        axis.set_xscale("log")
        axis.set_xlabel("join latency, report to key installed (s)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    axes[0][0].set_ylabel("fraction of all hosts holding the key")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# the Markdown summary


def machine_description() -> str:
    """Describe the CPU, core count, memory and software the bench ran on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.1f} GiB RAM"
    except (ValueError, OSError):
        pass
    from cryptography import __version__ as cryptography_version
    from cryptography.hazmat.backends.openssl.backend import backend

    return (
        f"{cpu}, {os.cpu_count()} CPUs{memory}; {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}; cryptography "
        f"{cryptography_version} with {backend.openssl_version_text()}"
    )


def summary_markdown(
    results: list[RunResult], command: str, plots: list[Path], failures: list[str]
) -> str:
    lines = [
        "# smkd bench results",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine_description()}",
        "",
        markdown_table(results),
    ]
    if failures:
        lines += ["", "Failed runs:", "", *[f"- {failure}" for failure in failures]]
    if plots:
        lines += ["", *[f"![{p.stem}](plots/{p.name})" for p in plots]]
    return "\n".join(lines) + "\n"


def markdown_table(results: list[RunResult]) -> str:
    """Return the results as a Markdown table, one row per run."""
    header = (
        "| network | mode | hosts | keyed | primary core: msgs / crypto ops "
        "| busiest node: crypto ops | join p50 | join p99 | all keyed "
        "| peak memory | CPU per join | crypto floor | ratio | re-key "
        "| data pkt/s |"
    )
    lines = [header, "|" + "---|" * 15]
    for r in results:
        lines.append(
            f"| {r.topology} | {r.mode} | {r.hosts:,} | {r.hosts_keyed:,} "
            f"| {r.core['messages']:,} / {r.core['crypto_ops']:,} "
            f"| {r.busiest_node}: {r.busiest['crypto_ops']:,} "
            f"| {_format(r.percentile(50), 1000, 'ms')} "
            f"| {_format(r.percentile(99), 1000, 'ms')} "
            f"| {_format(r.all_keyed_seconds, 1, 's')} "
            f"| {r.peak_memory_mib:,.0f} MiB "
            f"| {_format(r.cpu_per_join, 1000, 'ms')} "
            f"| {_format(r.crypto_floor, 1000, 'ms')} "
            f"| {_format(r.cpu_to_floor, 1, 'x')} "
            f"| {_format(r.rekey_seconds, 1000, 'ms')} "
            f"| {_number(r.data_packets_per_second)} |"
        )
    return "\n".join(lines)
