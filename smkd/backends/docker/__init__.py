"""The Docker backend: one container per node, one internal network per link or LAN.

Every link or LAN becomes a Docker bridge network created ``internal``, so
that no container reaches beyond the machine, with the subnet that
:class:`~smkd.configs.LinkAddressing` assigns; each member is attached at
its fixed address. Agents bind 0.0.0.0 and reach their peers at these link
addresses. The run directory (and the control directory, if it lies
elsewhere) is bind-mounted at the same path inside every container, so the
configs' paths and the agents' Unix control sockets work on both sides.

Faults: a link goes down when its network is disconnected from every
member, and comes back when they are connected again. A node stops and
starts with its container. Delay, jitter, loss and bandwidth come from tc
netem inside the containers where the kernel has netem, else from the
agents where they send.

End-to-end messages (the ACL upload and the sender key exchange) may pass
between nodes that share no link. Docker drops routed traffic between
internal networks, so they travel on one more internal network, ``unicast``,
that joins every node. The local backend, too, sends them outside the
emulated links.

Captures: tcpdump in each container records what the node sends on each
link (see docker/entrypoint.py). When the run ends, the backend merges these
parts into one ``captures/SEGMENT.pcap`` per link or LAN, plus
``captures/unicast.pcap`` for the end-to-end messages.

Containers and networks carry labels (see resources.py):
:meth:`DockerBackend.stop` removes them, and the next run on the same host
removes those of runs whose process has died.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from node.errors import ConfigError, SmkdError

from ...configs import (
    LinkAddressing,
    segment_members,
    segment_peers,
    write_node_configs,
)
from ...control import send_command
from ...model import Impairment, Topology
from .. import Backend
from .captures import merge_capture_parts
from .resources import (
    OWNER_LABEL,
    RUN_LABEL,
    WORKERS,
    owner_label,
    probe_netem,
    remove_resources,
    remove_stale_resources,
)

log = logging.getLogger("smkd.docker")

DEFAULT_IMAGE = "smkd-node:latest"

# seconds a container has to stop after SIGTERM before Docker kills it
STOP_TIMEOUT = 5

# seconds to wait for agents to respond on their control sockets
START_TIMEOUT = 30.0

# seconds to wait for stopped agents to remove their control sockets
AGENT_STOP_TIMEOUT = 5.0

# seconds to wait for a container's capture to restart after a link comes up
CAPTURE_RESTART_TIMEOUT = 3.0

# the network for end-to-end messages, beside LinkAddressing's 10.x.y.0/24s
UNICAST = "unicast"
UNICAST_SUBNET = ipaddress.IPv4Network("10.255.0.0/16")


def image_name() -> str:
    """Return the node image: ``$SMKD_IMAGE``, else smkd-node:latest."""
    return os.environ.get("SMKD_IMAGE", DEFAULT_IMAGE)


def connect_engine() -> Any:
    """Return a Docker SDK client for a reachable engine, or raise ConfigError."""
    try:
        import docker
    except ImportError:
        docker = None
    # without the SDK, the repository's docker/ folder imports as an empty package
    if not hasattr(docker, "from_env"):
        raise ConfigError(
            "the Docker backend needs the Docker SDK for Python; install it with "
            "pip install 'smkd[docker]' (or pip install docker)"
        )
    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except docker.errors.DockerException as error:
        raise ConfigError(
            f"cannot reach the Docker engine: {error}. Start it (systemctl start "
            "docker, or run dockerd) or point DOCKER_HOST at it"
        ) from None
    return client


class DockerBackend(Backend):
    name = "docker"

    # netem availability per image, probed once per process
    _netem: dict[str, bool] = {}

    @classmethod
    def check_available(cls) -> None:
        client = connect_engine()
        import docker

        image = image_name()
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            raise ConfigError(
                f"Docker image {image} not found; build it with docker/build "
                "(docker/build --offline where no registry can be reached), or set "
                "SMKD_IMAGE to an image built from docker/Dockerfile"
            ) from None

    @classmethod
    def write_configs(
        cls, topology: Topology, run_dir: Path, seed: int, control_dir: Path
    ) -> dict[str, Path]:
        paths = write_node_configs(
            topology,
            run_dir,
            seed,
            control_dir,
            addressing=LinkAddressing.assign(topology),
            agent_captures=False,
        )
        use_unicast_network(topology, paths)
        if cls.netem_available(connect_engine()):
            # the containers' netem emulates the links, so the agents must not
            for path in paths.values():
                document = json.loads(path.read_text())
                document["emulate_links"] = False
                path.write_text(json.dumps(document, indent=1))
        return paths

    @classmethod
    def netem_available(cls, client: Any) -> bool:
        """Probe whether containers can use tc netem on this kernel.

        ``SMKD_LINK_EMULATION=agent`` skips the probe and keeps agent-side
        emulation, which draws loss and jitter from the scenario's seed.
        """
        if os.environ.get("SMKD_LINK_EMULATION") == "agent":
            return False
        image = image_name()
        if image not in cls._netem:
            cls._netem[image] = probe_netem(client, image)
        return cls._netem[image]

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.client = connect_engine()
        self.image = image_name()
        self.run_id = secrets.token_hex(4)
        self.addressing = LinkAddressing.assign(self.topology)
        self.subnets = {**self.addressing.subnets, UNICAST: UNICAST_SUBNET}
        unicast = unicast_addresses(self.topology)
        self.interfaces = {
            name: {**self.addressing.interfaces(name), UNICAST: unicast[name]}
            for name in self.topology.nodes
        }
        self.netem = any(
            json.loads(path.read_text()).get("emulate_links") is False
            for path in self.configs.values()
        )
        self.networks: dict[str, Any] = {}
        self.containers: dict[str, Any] = {}
        self.down: set[str] = set()

    # lifecycle

    async def start(self) -> None:
        remove_stale_resources(self.client)
        segments = list(self.subnets)
        self.networks = dict(
            zip(segments, self._parallel(self._create_network, segments))
        )
        created = self._parallel(self._create_container, self.configs)
        self.containers = dict(zip(self.configs, created))
        self._parallel(lambda name: self.containers[name].start(), self.containers)
        await self._wait_answering(list(self.containers), START_TIMEOUT)

    async def stop(self) -> None:
        # every agent stops within milliseconds, as on the local backend, so
        # that none reacts to neighbours whose containers are still stopping
        await stop_agents(self.control_dir, self.containers)
        # blocking from here on: a second Ctrl-C must not cut the cleanup short
        try:
            self._parallel(self._stop_container, self.containers)
            self._save_logs()
        finally:
            self._remove_resources()
        merge_capture_parts(self.run_dir / "captures")

    async def stop_node(self, name: str) -> None:
        container = self._container(name)
        container.reload()
        if container.status != "running":
            raise ConfigError(f"node {name} is not running")
        await asyncio.to_thread(container.stop, timeout=STOP_TIMEOUT)

    async def start_node(self, name: str) -> None:
        container = self._container(name)
        container.reload()
        if container.status == "running":
            raise ConfigError(f"node {name} is already running")
        await asyncio.to_thread(container.start)
        missing = await self._wait_answering([name], START_TIMEOUT)
        if missing:
            raise ConfigError(
                f"node {name} did not respond within {START_TIMEOUT:g} s "
                "of its container starting"
            )

    async def set_link(
        self, segment: str, up: bool | None = None, impairment: Impairment | None = None
    ) -> None:
        found = self.topology.segment(segment)
        if found is None:
            raise ConfigError(f"no link or LAN named {segment!r}")
        members = segment_members(found)
        if up is not None:
            await asyncio.to_thread(self._set_link_state, segment, members, up)
        if impairment is None:
            return
        if self.netem:
            await asyncio.to_thread(self._set_netem, segment, members, impairment)
            return

        # each end emulates its own sending direction, so tell every member
        request = {"cmd": "link", "link": segment, "impairment": asdict(impairment)}
        for member in members:
            if segment_peers(self.topology, found, member):
                await self.command(member, request)

    async def set_direction(
        self,
        segment: str,
        sender: str,
        up: bool | None = None,
        impairment: Impairment | None = None,
    ) -> None:
        """Change only what ``sender`` sends on a link or LAN.

        A network cannot be disconnected for one direction, so the sender's
        agent, or its netem, drops what it sends while the direction is down.
        """
        found = self.topology.segment(segment)
        if found is None:
            raise ConfigError(f"no link or LAN named {segment!r}")
        if sender not in segment_members(found):
            raise ConfigError(f"{sender} is not on {segment}")
        if self.netem:
            await asyncio.to_thread(self._set_netem, segment, [sender], impairment, up)
            return

        request: dict[str, Any] = {"cmd": "link", "link": segment}
        if up is not None:
            request["up"] = up
        if impairment is not None:
            request["impairment"] = asdict(impairment)
        await self.command(sender, request)

    def describe(self) -> dict[str, Any]:
        if self.netem:
            emulation = "tc netem in each container (delay, jitter, loss, rate)"
        else:
            emulation = "agent-side (delay, jitter, loss, bandwidth); no netem here"
        return {
            "backend": self.name,
            "image": self.image,
            "link_emulation": emulation,
            "link_down": "the link's Docker network is disconnected from its members",
            "captures": "tcpdump in each container, merged per link or LAN",
        }

    # networks and containers

    def _labels(self) -> dict[str, str]:
        return {RUN_LABEL: self.run_id, OWNER_LABEL: owner_label()}

    def _create_network(self, segment: str) -> Any:
        import docker

        subnet = self.subnets[segment]
        ipam = docker.types.IPAMConfig(
            pool_configs=[
                docker.types.IPAMPool(
                    subnet=str(subnet), gateway=str(subnet.network_address + 1)
                )
            ]
        )
        name = f"smkd-{self.run_id}-{segment}"
        try:
            return self.client.networks.create(
                name, driver="bridge", internal=True, ipam=ipam, labels=self._labels()
            )
        except docker.errors.APIError as error:
            raise ConfigError(
                f"cannot create Docker network {name} with subnet {subnet}: "
                f"{error.explanation or error}. Another run or compose project may "
                "use that subnet; remove it with docker network rm"
            ) from None

    def _create_container(self, name: str) -> Any:
        api = self.client.api
        interfaces = self.interfaces[name]
        segments = list(interfaces)
        first = segments[0]
        networking = api.create_networking_config(
            {
                self.networks[first].name: api.create_endpoint_config(
                    ipv4_address=interfaces[first]
                )
            }
        )
        environment = {}
        if os.getuid() != 0:
            # files and sockets the agent creates then belong to this user
            environment["SMKD_USER"] = f"{os.getuid()}:{os.getgid()}"
        host_config = api.create_host_config(
            binds=self._binds(),
            cap_add=["NET_ADMIN"] if self.netem else None,
            network_mode=self.networks[first].name,
        )
        created = api.create_container(
            self.image,
            command=[str(self.configs[name].resolve())],
            name=f"smkd-{self.run_id}-{name}",
            hostname=name,
            labels=self._labels(),
            environment=environment,
            host_config=host_config,
            networking_config=networking,
        )
        container = self.client.containers.get(created["Id"])

        # every network is attached before the start, in any order: the
        # entrypoint finds each link by address, not by interface name
        for segment in segments[1:]:
            self.networks[segment].connect(container, ipv4_address=interfaces[segment])
        return container

    def _binds(self) -> dict[str, dict[str, str]]:
        run_dir = str(self.run_dir.resolve())
        binds = {run_dir: {"bind": run_dir, "mode": "rw"}}
        control_dir = self.control_dir.resolve()
        if not control_dir.is_relative_to(self.run_dir.resolve()):
            binds[str(control_dir)] = {"bind": str(control_dir), "mode": "rw"}
        return binds

    def _container(self, name: str) -> Any:
        container = self.containers.get(name)
        if container is None:
            raise ConfigError(f"no node named {name!r}")
        return container

    def _stop_container(self, name: str) -> None:
        import docker

        try:
            self.containers[name].stop(timeout=STOP_TIMEOUT)
        except docker.errors.APIError as error:
            log.warning("docker: cannot stop the container of %s: %s", name, error)

    def _save_logs(self) -> None:
        """Append each container's output to logs/agents.log, one prefix per node."""
        import docker

        path = self.run_dir / "logs" / "agents.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as log_file:
            for name, container in self.containers.items():
                try:
                    output = container.logs(stdout=True, stderr=True)
                except docker.errors.APIError as error:
                    log.warning("docker: cannot read the log of %s: %s", name, error)
                    continue
                for line in output.decode(errors="replace").splitlines():
                    log_file.write(f"[{name}] {line}\n")

    def _remove_resources(self) -> None:
        """Remove this run's containers and networks, found by label."""
        label = f"{RUN_LABEL}={self.run_id}"
        remove_resources(self.client, label)
        self.containers = {}
        self.networks = {}

    def _parallel(
        self, function: Callable[[str], Any], names: Iterable[str]
    ) -> list[Any]:
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(function, names))

    async def _wait_answering(self, names: list[str], timeout: float) -> list[str]:
        """Wait until the named agents respond; return those that do not."""
        deadline = time.monotonic() + timeout
        waiting = list(names)
        while waiting and time.monotonic() < deadline:
            still = []
            for name in waiting:
                try:
                    await send_command(
                        self.control_dir / f"{name}.sock",
                        {"cmd": "status"},
                        timeout=1.0,
                    )
                except SmkdError:
                    still.append(name)
                _raise_if_cancelled()
            waiting = [name for name in still if self._is_running(name)]
            if waiting:
                await asyncio.sleep(0.2)
        return waiting

    def _is_running(self, name: str) -> bool:
        container = self.containers[name]
        container.reload()
        if container.status in ("exited", "dead"):
            log.warning(
                "docker: the container of %s exited with status %s",
                name,
                container.attrs["State"].get("ExitCode"),
            )
            return False
        return True

    # link faults

    def _set_link_state(self, segment: str, members: Iterable[str], up: bool) -> None:
        import docker

        # a link that is already in the requested state needs nothing
        if (segment in self.down) != up:
            return
        try:
            if up:
                self._connect(segment, members)
            else:
                self._disconnect(segment, members)
        except docker.errors.APIError as error:
            state = "up" if up else "down"
            raise ConfigError(f"cannot bring {segment} {state}: {error}") from None

    def _disconnect(self, segment: str, members: Iterable[str]) -> None:
        network = self.networks[segment]
        self.down.add(segment)
        for member in members:
            network.disconnect(self.containers[member], force=True)

    def _connect(self, segment: str, members: Iterable[str]) -> None:
        network = self.networks[segment]
        parts = self.run_dir / "captures" / "parts" / segment
        for member in members:
            before = _part_count(parts, member)
            address = self.addressing.addresses[(member, segment)]
            network.connect(self.containers[member], ipv4_address=address)
            if self._is_running(member):
                _wait_for_part(parts, member, before)
        self.down.discard(segment)

    def _set_netem(
        self,
        segment: str,
        members: Iterable[str],
        impairment: Impairment | None,
        up: bool | None = None,
    ) -> None:
        # NOTE: netem has not run here, because the kernel this backend was
        # tested on lacks it; only agent-side emulation has run end to end.
        for member in members:
            self._write_netem_state(member, segment, impairment, up)
            if segment in self.down or not self._is_running(member):
                continue
            config = str(self.configs[member].resolve())
            result = self.containers[member].exec_run(
                ["smkd-entrypoint", "netem", config, segment]
            )
            if result.exit_code != 0:
                raise ConfigError(
                    f"cannot set netem on {member} for {segment}: "
                    f"{result.output.decode(errors='replace').strip()}"
                )

    def _write_netem_state(
        self, member: str, segment: str, impairment: Impairment | None, up: bool | None
    ) -> None:
        """Record what ``member`` sends with on ``segment``, for the entrypoint.

        The entrypoint applies it now and again when the interface comes back.
        """
        path = self.run_dir / "netem" / member / f"{segment}.json"
        if path.exists():
            state = json.loads(path.read_text())
        else:
            config = json.loads(self.configs[member].read_text())
            egress = {link["name"]: link["egress"] for link in config["links"]}
            state = dict(egress.get(segment, {}))
        if impairment is not None:
            state.update(asdict(impairment))
        if up is not None:
            state["up"] = up
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state))


async def stop_agents(control_dir: Path, names: Iterable[str]) -> None:
    """Ask each agent to stop and wait until its control socket is gone."""
    sockets = [control_dir / f"{name}.sock" for name in names]
    for path in sockets:
        if not path.exists():
            continue
        try:
            await send_command(path, {"cmd": "stop"}, timeout=2.0)
        except SmkdError as error:
            log.warning("docker: cannot stop the agent at %s: %s", path, error)
    deadline = time.monotonic() + AGENT_STOP_TIMEOUT
    while any(path.exists() for path in sockets) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def unicast_addresses(topology: Topology) -> dict[str, str]:
    """Return each node's address on the unicast network, in topology order."""
    subnets = LinkAddressing.assign(topology).subnets
    if UNICAST in subnets:
        raise ConfigError(
            f"a link or LAN is named {UNICAST!r}, the name of the "
            "network for end-to-end messages; rename it"
        )
    if any(subnet.overlaps(UNICAST_SUBNET) for subnet in subnets.values()):
        raise ConfigError(
            f"{len(subnets)} links and LANs reach into {UNICAST_SUBNET}, which "
            "the Docker backend keeps for end-to-end messages"
        )
    first = UNICAST_SUBNET.network_address + 2
    return {name: str(first + index) for index, name in enumerate(topology.nodes)}


def use_unicast_network(topology: Topology, paths: dict[str, Path]) -> None:
    """Send end-to-end messages to peers without a shared link over ``unicast``.

    Each config then lists every such peer's unicast address under
    ``peer_addresses``, and its own under ``interfaces`` for the entrypoint.
    """
    addresses = unicast_addresses(topology)
    graph = topology.graph()
    for name, path in paths.items():
        document = json.loads(path.read_text())
        neighbours = set(graph.neighbors(name))
        for peer in topology.nodes:
            if peer != name and peer not in neighbours:
                document["peer_addresses"][peer] = addresses[peer]
        document["interfaces"][UNICAST] = addresses[name]
        path.write_text(json.dumps(document, indent=1))


def _raise_if_cancelled() -> None:
    """Raise CancelledError if Ctrl-C cancelled this task.

    Before Python 3.12, asyncio.wait_for returns the result of an operation
    that has already failed (a missing control socket) and drops a pending
    cancellation, so a loop of such calls would not end on Ctrl-C.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _part_count(directory: Path, node: str) -> int:
    return len(list(directory.glob(f"{node}-*.pcap")))


def _wait_for_part(directory: Path, node: str, before: int) -> None:
    """Wait until the node's capture on a reconnected interface has restarted."""
    deadline = time.monotonic() + CAPTURE_RESTART_TIMEOUT
    while _part_count(directory, node) <= before:
        if time.monotonic() > deadline:
            log.warning(
                "docker: %s did not restart its capture on %s within %g s",
                node,
                directory.name,
                CAPTURE_RESTART_TIMEOUT,
            )
            return
        time.sleep(0.05)
