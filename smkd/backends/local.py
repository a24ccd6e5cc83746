"""The local backend: every agent in this process, on its own 127.x.y.z address.

It needs no root, containers or Mininet. Links are emulated by the agents
where they send, and captures are written by the agents as datagrams cross
each emulated link.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import socket
from typing import Any

from node.agent import Agent
from node.capture import CaptureRegistry
from node.config import load_agent_config
from node.errors import ConfigError

from ..configs import segment_members, segment_peers
from ..model import Impairment, Topology
from . import Backend

PORT = 7777


class LocalBackend(Backend):
    name = "local"

    @classmethod
    def place(cls, topology: Topology) -> Topology:
        """Move the topology to a free 127.k.0.0/16 block if its addresses are taken.

        Another run on this machine may hold the addresses; shifting the
        second octet keeps each node's last two octets.
        """
        if _all_free(n.address for n in topology.nodes.values()):
            return topology
        for block in range(2, 255):
            nodes = {
                name: dataclasses.replace(node, address=_in_block(node.address, block))
                for name, node in topology.nodes.items()
            }
            if _all_free(n.address for n in nodes.values()):
                return dataclasses.replace(topology, nodes=nodes)
        raise ConfigError(
            f"no free 127.k.0.0/16 block has UDP port {PORT} free for all "
            f"{len(topology.nodes)} nodes; stop other smkd runs and try again"
        )

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.captures = CaptureRegistry()
        self.agents: dict[str, Agent] = {}

    async def start(self) -> None:
        for name in self.configs:
            await self.start_node(name)

    async def start_node(self, name: str) -> None:
        if name in self.agents:
            raise ConfigError(f"node {name} is already running")
        agent = Agent(load_agent_config(self.configs[name]), self.captures)
        self.agents[name] = agent
        await agent.start()

    async def stop_node(self, name: str) -> None:
        agent = self.agents.pop(name, None)
        if agent is None:
            raise ConfigError(f"node {name} is not running")
        agent.stop()

    async def stop(self) -> None:
        for name in list(self.agents):
            self.agents.pop(name).stop()
        self.captures.close()

    async def set_link(
        self, segment: str, up: bool | None = None, impairment: Impairment | None = None
    ) -> None:
        found = self.topology.segment(segment)
        if found is None:
            raise ConfigError(f"no link or LAN named {segment!r}")
        request = _link_request(segment, up, impairment)
        # each end emulates its own sending direction, so tell every member
        for member in segment_members(found):
            agent = self.agents.get(member)
            if agent is not None and segment_peers(self.topology, found, member):
                agent.handle_command(json.dumps(request).encode())

    async def set_direction(
        self,
        segment: str,
        sender: str,
        up: bool | None = None,
        impairment: Impairment | None = None,
    ) -> None:
        # the sender's agent emulates its own sending direction alone
        agent = self.agents.get(sender)
        if agent is None:
            raise ConfigError(f"node {sender} is not running")
        request = _link_request(segment, up, impairment)
        answer = agent.handle_command(json.dumps(request).encode())
        if not answer.get("ok"):
            raise ConfigError(f"{sender} could not change {segment}: {answer['error']}")

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "link_emulation": "agent-side (delay, jitter, loss, bandwidth)",
            "captures": "written by the agents, one pcap per link or LAN",
        }


def _link_request(
    segment: str, up: bool | None, impairment: Impairment | None
) -> dict[str, Any]:
    request: dict[str, Any] = {"cmd": "link", "link": segment}
    if up is not None:
        request["up"] = up
    if impairment is not None:
        request["impairment"] = dataclasses.asdict(impairment)
    return request


def _in_block(address: str, block: int) -> str:
    octets = ipaddress.IPv4Address(address).packed
    return str(ipaddress.IPv4Address(bytes([127, block]) + octets[2:]))


def _all_free(addresses) -> bool:
    for address in addresses:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind((address, PORT))
        except OSError:
            return False
        finally:
            probe.close()
    return True
