"""Backends start and stop a topology's agents and apply link and node faults.

Every backend implements :class:`Backend`; the runner uses nothing else, so a
new backend (Mininet, Docker, a cluster engine) plugs in without changes to
the runner.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any

from node.errors import ConfigError

from ..configs import write_node_configs
from ..control import send_command
from ..model import Impairment, Topology


class Backend(abc.ABC):
    name: str = "?"

    @classmethod
    def check_available(cls) -> None:
        """Raise ConfigError saying what is missing and how to install it."""

    @classmethod
    def place(cls, topology: Topology) -> Topology:
        """Return the topology with the identity addresses this backend will use."""
        return topology

    @classmethod
    def write_configs(
        cls, topology: Topology, run_dir: Path, seed: int, control_dir: Path
    ) -> dict[str, Path]:
        """Write the agents' configs in the addressing this backend needs."""
        return write_node_configs(topology, run_dir, seed, control_dir)

    def __init__(
        self,
        topology: Topology,
        run_dir: Path,
        configs: dict[str, Path],
        control_dir: Path,
    ):
        self.topology = topology
        self.run_dir = run_dir
        self.configs = configs
        self.control_dir = control_dir

    @abc.abstractmethod
    async def start(self) -> None:
        """Start every agent; return once each has bound its sockets."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Stop every agent and release everything the backend created."""

    @abc.abstractmethod
    async def stop_node(self, name: str) -> None: ...

    @abc.abstractmethod
    async def start_node(self, name: str) -> None: ...

    @abc.abstractmethod
    async def set_link(
        self, segment: str, up: bool | None = None, impairment: Impairment | None = None
    ) -> None:
        """Bring a link or LAN up or down, or change its impairments."""

    async def set_direction(
        self,
        segment: str,
        sender: str,
        up: bool | None = None,
        impairment: Impairment | None = None,
    ) -> None:
        """Change only what member ``sender`` sends on a link or LAN."""
        raise ConfigError(
            f"the {self.name} backend cannot change one direction of a link; "
            "drop 'from' from the action"
        )

    async def command(self, node: str, request: dict[str, Any]) -> dict[str, Any]:
        return await send_command(self.control_dir / f"{node}.sock", request)

    def describe(self) -> dict[str, Any]:
        """Facts for the run summary, such as how links are emulated."""
        return {"backend": self.name}


def get_backend(name: str) -> type[Backend]:
    if name == "local":
        from .local import LocalBackend

        return LocalBackend
    if name == "docker":
        from .docker import DockerBackend

        return DockerBackend
    if name == "compose":
        from ..compose import ComposeBackend

        return ComposeBackend
    if name == "mininet":
        from .mininet import MininetBackend

        return MininetBackend
    raise ConfigError(f"unknown backend {name!r}; available: local, mininet, docker")
