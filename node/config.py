"""An agent's config file: everything one node needs, in one JSON document.

The runner writes one per node; ``python -m node CONFIG`` reads it. Paths in
it are relative to the config file's directory unless absolute, so a run
directory can be bind-mounted anywhere (a container sees the same layout).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .documents import AclMode, GroupAcl
from .errors import ConfigError
from .linkemu import Impairment
from .machine import GroupConfig, NodeConfig, Timers


@dataclass(frozen=True)
class LinkConfig:
    """One emulated attachment: a point-to-point link or a LAN, seen from this node.

    ``peers`` maps each node reachable over it (address -> name); ``egress``
    is the impairment of datagrams this node sends over it.
    """

    name: str
    peers: dict[str, str]
    egress: Impairment = field(default_factory=Impairment)
    capture: Path | None = None


@dataclass(frozen=True)
class AgentConfig:
    node: NodeConfig
    port: int
    pki_dir: Path
    suites: tuple[str, ...]
    links: tuple[LinkConfig, ...]
    trace_path: Path | None
    control_path: Path | None
    unicast_capture: Path | None = None
    seed: int | None = None
    emulate_links: bool = True
    bind: str | None = None


def load_agent_config(path: str | Path) -> AgentConfig:
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"agent config {path} not found") from None
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigError(f"cannot read agent config {path}: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"invalid agent config {path}: expected a JSON object")
    try:
        return parse_agent_config(document, path.parent)
    except KeyError as error:
        raise ConfigError(
            f"invalid agent config {path}: missing key {error.args[0]!r}"
        ) from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"invalid agent config {path}: {error}") from None


def parse_agent_config(document: dict[str, Any], base: Path) -> AgentConfig:
    def resolve(value: str | None) -> Path | None:
        if value is None:
            return None
        candidate = Path(value)
        return candidate if candidate.is_absolute() else base / candidate

    node = NodeConfig(
        name=document["name"],
        role=document["role"],
        address=document["address"],
        groups=tuple(_group(g) for g in document.get("groups", [])),
        neighbours=dict(document.get("neighbours", {})),
        peer_addresses=dict(document.get("peer_addresses", {})),
        routes=dict(document.get("routes", {})),
        gateway=document.get("gateway"),
        token_window=float(document.get("token_window", 30.0)),
        replay_cache_size=int(document.get("replay_cache_size", 100_000)),
        timers=_timers(document.get("timers", {})),
        routing=document.get("routing", "static"),
        link_costs={k: int(v) for k, v in document.get("link_costs", {}).items()},
        routing_suite=document.get("routing_suite", "default"),
    )
    links = tuple(
        LinkConfig(
            name=link["name"],
            peers=dict(link["peers"]),
            egress=Impairment(**link.get("egress", {})),
            capture=resolve(link.get("capture")),
        )
        for link in document.get("links", [])
    )
    return AgentConfig(
        node=node,
        port=int(document.get("port", 7777)),
        pki_dir=resolve(document["pki"]),
        suites=tuple(document.get("suites", ["default"])),
        links=links,
        trace_path=resolve(document.get("trace")),
        control_path=resolve(document.get("control")),
        unicast_capture=resolve(document.get("unicast_capture")),
        seed=document.get("seed"),
        emulate_links=bool(document.get("emulate_links", True)),
        bind=document.get("bind"),
    )


def _timers(document: dict[str, Any]) -> Timers:
    known = {f.name for f in fields(Timers)}
    unknown = set(document) - known
    if unknown:
        raise ValueError(f"unknown timers {sorted(unknown)}")
    return Timers(**document)


def _group(document: dict[str, Any]) -> GroupConfig:
    acl = document.get("acl")
    return GroupConfig(
        name=document["name"],
        address=document["address"],
        cores=tuple(document["cores"]),
        core_addresses=tuple(document["core_addresses"]),
        initiator=document["initiator"],
        suite=document.get("suite", "default"),
        acl=_acl(acl, document) if acl is not None else None,
        seal_acl=bool(document.get("seal_acl", False)),
    )


def _acl(acl: dict[str, Any], group: dict[str, Any]) -> GroupAcl:
    from .crypto import suite_by_name

    trusted = acl.get("trusted_routers")
    return GroupAcl(
        group=group["address"],
        serial=int(acl["serial"]),
        mode=AclMode[acl["mode"].upper()],
        hosts=tuple(acl["hosts"]),
        not_before=int(acl["not_before"]),
        not_after=int(acl["not_after"]),
        initiator=group["initiator"],
        suite=suite_by_name(group.get("suite", "default")).code,
        key_lifetime=int(acl["key_lifetime"]),
        strict=bool(acl.get("strict", False)),
        trusted_routers=tuple(trusted) if trusted is not None else None,
        central=bool(acl.get("central", False)),
    )
