#!/usr/bin/env python3
"""Entry point of the smkd node image: captures, link emulation, then the agent.

    smkd-entrypoint CONFIG            capture each link, then run the agent
    smkd-entrypoint health CONFIG     exit 0 when the agent responds to ``status``
    smkd-entrypoint setup-done DIR    exit 0 once this container's runner wrote
                                      the run directory DIR (compose)
    smkd-entrypoint netem CONFIG SEG  set SEG's netem impairment again, from
                                      netem/NODE/SEG.json in the run directory

Docker names a container's interfaces eth0, eth1, ... in an order of its
own, which differs from the order of attachment (seen with Docker 20.10),
and a network that is connected again gets a new interface. Nothing here
depends on those names: each link or LAN is found by the node's address on
it, which the config lists under ``interfaces``.

For every such interface a supervisor process runs tcpdump, which records
the datagrams this node sends over it (``src host ADDRESS``) into
``captures/parts/SEGMENT/NODE-N.pcap`` in the run directory. Each datagram
is therefore captured once, at its sender, and the backend merges the parts
into ``captures/SEGMENT.pcap``. When an interface disappears (link down) and
comes back (link up), the supervisor starts a new part. When the config
disables agent-side link emulation, the supervisor also sets each
interface's egress impairment with tc netem, taking it from
``netem/NODE/SEGMENT.json`` in the run directory once the backend has
written that file, else from the config.

Set ``SMKD_USER=UID:GID`` to run the agent as that user, so that a host user
without root can use the files and control socket the agent creates.

This script runs inside the image and uses only the standard library.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# how often the supervisor looks for interfaces that came or went, in seconds
POLL_INTERVAL = 0.1

# how long to wait for tcpdump to start capturing, in seconds
CAPTURE_START_TIMEOUT = 5.0

# tcpdump writes this header as soon as it captures, before any packet
PCAP_HEADER_SIZE = 24

# exit status for an invalid invocation or config, as ``python -m node`` uses
EXIT_INVALID = 2


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "health":
        return check_health(Path(argv[1]))
    if len(argv) == 2 and argv[0] == "setup-done":
        return check_setup_done(Path(argv[1]))
    if len(argv) == 3 and argv[0] == "netem":
        return set_netem(Path(argv[1]), argv[2])
    if len(argv) == 1 and not argv[0].startswith("-"):
        return run_node(Path(argv[0]))
    print(__doc__, file=sys.stderr)
    return EXIT_INVALID


# the node


def run_node(config_path: Path) -> int:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        print(
            f"smkd-entrypoint: cannot read config {config_path}: {error}",
            file=sys.stderr,
        )
        return EXIT_INVALID

    # the run directory contains configs/, captures/ and netem/
    run_dir = config_path.resolve().parent.parent
    owner = parse_owner(os.environ.get("SMKD_USER", ""))
    ready_read, ready_write = os.pipe()
    if os.fork() == 0:
        os.close(ready_read)
        supervise(config, run_dir, owner, ready_write)
        os._exit(0)

    # the agent must not send before every capture is running
    os.close(ready_write)
    os.read(ready_read, 1)
    os.close(ready_read)

    if owner is not None and os.getuid() == 0:
        os.setgroups([])
        os.setgid(owner[1])
        os.setuid(owner[0])
    # the agent replaces this process, so it receives the container's SIGTERM
    os.execvp(sys.executable, [sys.executable, "-m", "node", str(config_path)])


def parse_owner(value: str) -> tuple[int, int] | None:
    if not value:
        return None
    uid, _, gid = value.partition(":")
    return int(uid), int(gid or uid)


# the capture and netem supervisor


class Capture:
    """One tcpdump process recording what this node sends on one interface."""

    def __init__(self, interface: Interface, process: subprocess.Popen[bytes]):
        self.interface = interface
        self.process = process


# an interface's name and index; Docker gives a reconnected network a new index
Interface = tuple[str, int]


def supervise(
    config: dict[str, Any], run_dir: Path, owner: tuple[int, int] | None, ready_fd: int
) -> None:
    """Keep one capture per present interface until the container stops."""
    # the agent stops the container; this process only needs to go quietly
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    node = config["name"]
    interfaces: dict[str, str] = config.get("interfaces", {})
    egress = {link["name"]: link.get("egress", {}) for link in config.get("links", [])}
    netem = config.get("emulate_links", True) is False
    parts_dir = run_dir / "captures" / "parts"
    captures: dict[str, Capture] = {}

    while True:
        present = list_interfaces()
        for segment, address in interfaces.items():
            interface = present.get(address)
            current = captures.pop(segment, None)
            if current is not None and keep_capture(node, segment, current, interface):
                captures[segment] = current
                continue
            if interface is None:
                continue
            if netem:
                impairment = segment_impairment(
                    run_dir, node, segment, egress.get(segment, {})
                )
                apply_netem(interface[0], impairment)
            capture = start_capture(
                parts_dir / segment, node, address, interface, owner
            )
            if capture is not None:
                captures[segment] = capture

        if ready_fd >= 0:
            os.write(ready_fd, b"1")
            os.close(ready_fd)
            ready_fd = -1
        time.sleep(POLL_INTERVAL)


def keep_capture(
    node: str, segment: str, capture: Capture, interface: Interface | None
) -> bool:
    """Return whether ``capture`` still records ``interface``; else stop it."""
    status = capture.process.poll()
    if status is None and capture.interface == interface:
        return True
    if status is not None:
        reason = f"tcpdump exited with status {status}"
    elif interface is None:
        reason = "the interface is gone"
    else:
        reason = f"the interface is now {interface[0]} (index {interface[1]})"
    print(
        f"smkd-entrypoint: {node}: capture on {segment} stopped: {reason}",
        file=sys.stderr,
        flush=True,
    )
    stop_capture(capture)
    return False


def list_interfaces() -> dict[str, Interface]:
    """Return IPv4 address -> the interface that carries it."""
    output = subprocess.run(
        ["ip", "-j", "-4", "addr", "show"], capture_output=True, check=True
    ).stdout
    found = {}
    for interface in json.loads(output or b"[]"):
        for info in interface.get("addr_info", []):
            if info.get("family") == "inet":
                found[info["local"]] = (interface["ifname"], interface["ifindex"])
    return found


def start_capture(
    directory: Path,
    node: str,
    address: str,
    interface: Interface,
    owner: tuple[int, int] | None,
) -> Capture | None:
    directory.mkdir(parents=True, exist_ok=True)
    path = next_part(directory, node)

    # -U writes each packet at once, so the file is complete even after SIGKILL
    process = subprocess.Popen(
        [
            "tcpdump",
            "-i",
            interface[0],
            "-p",
            "-n",
            "-U",
            "-s",
            "0",
            "-Z",
            "root",
            "-w",
            str(path),
            "src",
            "host",
            address,
        ],
        stdout=subprocess.DEVNULL,
    )
    if not wait_listening(process, path):
        print(
            f"smkd-entrypoint: {node}: tcpdump on {interface[0]} ({directory.name}) "
            "did not start; that link is not captured",
            file=sys.stderr,
            flush=True,
        )
        return None
    if owner is not None and path.exists():
        # the backend removes parts/ after merging, as the user who runs it
        for created in (path, directory, directory.parent):
            os.chown(created, *owner)
    return Capture(interface, process)


def next_part(directory: Path, node: str) -> Path:
    """Return the first unused part file, so a restarted capture keeps the old one."""
    number = 1
    while (directory / f"{node}-{number}.pcap").exists():
        number += 1
    return directory / f"{node}-{number}.pcap"


def wait_listening(process: subprocess.Popen[bytes], path: Path) -> bool:
    """Wait until tcpdump has opened the interface and written the file header."""
    deadline = time.monotonic() + CAPTURE_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        if path.exists() and path.stat().st_size >= PCAP_HEADER_SIZE:
            return True
        time.sleep(0.01)
    return False


def stop_capture(capture: Capture) -> None:
    if capture.process.poll() is None:
        capture.process.terminate()
    try:
        capture.process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        capture.process.kill()
        capture.process.wait()


# netem, where the kernel has it


def segment_impairment(
    run_dir: Path, node: str, segment: str, configured: dict[str, Any]
) -> dict[str, Any]:
    """Return what ``node`` last had to send with on ``segment``, else the config's.

    The backend writes ``netem/NODE/SEGMENT.json`` in the run directory when
    a scenario changes a link or one direction of it, so that an interface
    that comes back keeps the change.
    """
    path = run_dir / "netem" / node / f"{segment}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return configured


def set_netem(config_path: Path, segment: str) -> int:
    """Apply the current impairment of ``segment`` to its interface."""
    config = json.loads(config_path.read_text())
    address = config.get("interfaces", {}).get(segment)
    interface = list_interfaces().get(address or "")
    if interface is None:
        print(
            f"smkd-entrypoint: {config['name']} has no interface on {segment}",
            file=sys.stderr,
        )
        return 1
    egress = {link["name"]: link.get("egress", {}) for link in config.get("links", [])}
    run_dir = config_path.resolve().parent.parent
    impairment = segment_impairment(
        run_dir, config["name"], segment, egress.get(segment, {})
    )
    return 0 if apply_netem(interface[0], impairment) else 1


def apply_netem(interface: str, impairment: dict[str, Any]) -> bool:
    command = [
        "tc",
        "qdisc",
        "replace",
        "dev",
        interface,
        "root",
        *netem_arguments(impairment),
    ]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        print(
            f"smkd-entrypoint: {' '.join(command)} failed: "
            f"{result.stderr.decode(errors='replace').strip()}",
            file=sys.stderr,
        )
    return result.returncode == 0


def netem_arguments(impairment: dict[str, Any]) -> list[str]:
    """Return the tc netem arguments for an impairment in seconds, fraction, bit/s.

    ``"up": false`` means that this direction is down: netem drops everything.
    """
    delay = float(impairment.get("delay") or 0.0)
    jitter = float(impairment.get("jitter") or 0.0)
    loss = float(impairment.get("loss") or 0.0)
    if impairment.get("up") is False:
        loss = 1.0
    bandwidth = impairment.get("bandwidth")
    arguments = ["netem", "delay", f"{delay * 1e6:.0f}us"]
    if jitter > 0:
        arguments.append(f"{jitter * 1e6:.0f}us")
    if loss > 0:
        arguments += ["loss", f"{loss * 100:.6g}%"]
    if bandwidth:
        arguments += ["rate", f"{int(bandwidth)}bit"]
    return arguments


# health checks


def check_health(config_path: Path) -> int:
    """Exit 0 when the agent responds to a status request on its control socket."""
    try:
        config = json.loads(config_path.read_text())
        control = Path(config["control"])
        if not control.is_absolute():
            control = config_path.parent / control
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(2.0)
            connection.connect(str(control))
            connection.sendall(b'{"cmd": "status"}\n')
            answer = connection.makefile("rb").readline()
        return 0 if json.loads(answer).get("ok") else 1
    except (OSError, ValueError, KeyError) as error:
        print(f"unhealthy: {error}", file=sys.stderr)
        return 1


def check_setup_done(run_dir: Path) -> int:
    """Exit 0 once the runner in this container has written the run directory.

    The marker contains the writer's host name, which Docker sets to the
    container id, so that a marker left by an earlier run does not count.
    """
    try:
        marker = (run_dir / ".setup-done").read_text().strip()
    except OSError:
        return 1
    return 0 if marker == socket.gethostname() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
