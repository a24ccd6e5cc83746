"""``smkd compose``: a Docker Compose file that runs a topology and a scenario on it.

The file has one service per node and one internal network per link or LAN,
with the subnets and addresses of :class:`~smkd.configs.LinkAddressing`, the
``unicast`` network for end-to-end messages (as the Docker backend has), and
a ``runner`` service. The runner writes the run directory (PKI and configs)
into a bind mount and then reports healthy, so that compose starts the
agents. With a scenario it drives the timeline through the agents' control
sockets in the same bind mount, writes the verdict, stops the agents and
exits with 0 when every expectation holds, else 1. Without a scenario it
keeps the agents running until it is stopped.

The runner has no access to the Docker engine, so a scenario for compose
may not stop nodes or change links; ``smkd run --backend docker`` can.

``python -m smkd.compose run RUN_DIR SCENARIO`` and ``python -m smkd.compose
serve RUN_DIR TOPOLOGY`` are the runner service's two commands.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import yaml

from node.errors import ConfigError

from .backends import Backend
from .backends.docker import (
    DEFAULT_IMAGE,
    UNICAST,
    UNICAST_SUBNET,
    stop_agents,
    unicast_addresses,
    use_unicast_network,
)
from .backends.docker.captures import merge_capture_parts
from .configs import LinkAddressing, prepare_pki, write_node_configs
from .model import Impairment, Scenario, Topology, ValidationError, load_scenario
from .model import load_topology

EXIT_INVALID = 2

RUNNER = "runner"

# paths inside the containers
RUN_DIR = "/smkd/run"
SOURCE_DIR = "/smkd/src"

# actions that need the Docker engine, which the runner service cannot reach
ENGINE_ACTIONS = ("link_down", "link_up", "link_set", "node_stop", "node_start")

# set on the runner service, the only place where ComposeBackend works
COMPOSE_ENV = "SMKD_COMPOSE"

# the runner's check gates the agents' start, so it runs often; an agent's
# check is for people and starts a Python process each time
RUNNER_HEALTH_INTERVAL = "1s"
AGENT_HEALTH_INTERVAL = "5s"

# lists of plain values up to this many characters are written on one line
FLOW_LIST_WIDTH = 60


# the compose file


def compose_document(
    topology: Topology,
    scenario: Scenario | None,
    base_dir: Path,
    image: str = DEFAULT_IMAGE,
) -> dict[str, Any]:
    """Build the compose file for ``topology``, with paths relative to ``base_dir``."""
    addressing = LinkAddressing.assign(topology)
    unicast = unicast_addresses(topology)
    host_run_dir = relative_path(
        base_dir / "runs" / f"compose-{run_name(topology, scenario)}", base_dir
    )
    run_volume = f"{host_run_dir}:{RUN_DIR}"
    build = _build_section(base_dir)

    sources = (
        [topology.source] if scenario is None else [scenario.source, topology.source]
    )
    source_volumes, container_paths = source_mounts(sources, base_dir)
    if scenario is None:
        command = ["serve", RUN_DIR, container_paths[topology.source.resolve()]]
    else:
        command = ["run", RUN_DIR, container_paths[scenario.source.resolve()]]

    services: dict[str, Any] = {
        RUNNER: {
            "image": image,
            **build,
            "entrypoint": ["python3", "-m", "smkd.compose"],
            "command": command,
            "environment": {COMPOSE_ENV: "1"},
            # the runner reaches agents only through their Unix control sockets
            "network_mode": "none",
            "volumes": [run_volume, *source_volumes],
            "healthcheck": _healthcheck(
                ["smkd-entrypoint", "setup-done", RUN_DIR],
                RUNNER_HEALTH_INTERVAL,
                retries=120,
            ),
        }
    }
    for name in topology.nodes:
        interfaces = {**addressing.interfaces(name), UNICAST: unicast[name]}
        services[name] = _node_service(name, interfaces, image, build, run_volume)

    subnets = {**addressing.subnets, UNICAST: UNICAST_SUBNET}
    networks = {
        segment: {"internal": True, "ipam": {"config": [{"subnet": str(subnet)}]}}
        for segment, subnet in subnets.items()
    }
    return {"services": services, "networks": networks}


def _node_service(
    name: str,
    interfaces: dict[str, str],
    image: str,
    build: dict[str, Any],
    run_volume: str,
) -> dict[str, Any]:
    config = f"{RUN_DIR}/configs/{name}.json"
    service: dict[str, Any] = {
        "image": image,
        **build,
        "hostname": name,
        "command": [config],
        "depends_on": {RUNNER: {"condition": "service_healthy"}},
        "volumes": [run_volume],
        "networks": {
            segment: {"ipv4_address": address}
            for segment, address in interfaces.items()
        },
    }
    service["healthcheck"] = _healthcheck(
        ["smkd-entrypoint", "health", config], AGENT_HEALTH_INTERVAL, retries=3
    )
    return service


def _healthcheck(test: list[str], interval: str, retries: int) -> dict[str, Any]:
    return {
        "test": ["CMD", *test],
        "interval": interval,
        "timeout": "3s",
        "retries": retries,
    }


def _build_section(base_dir: Path) -> dict[str, Any]:
    """Return how compose builds the image when it is missing, if it can."""
    project = Path(__file__).resolve().parent.parent
    if not (project / "docker" / "Dockerfile").is_file():
        # an installed smkd without its source tree cannot build the image
        return {}
    return {
        "build": {
            "context": relative_path(project, base_dir),
            "dockerfile": "docker/Dockerfile",
        }
    }


def source_mounts(
    files: list[Path], base_dir: Path
) -> tuple[list[str], dict[Path, str]]:
    """Mount the directories of ``files`` read-only under /smkd/src.

    The directories keep their layout relative to each other, so that a
    scenario's relative ``topology:`` path still leads to its topology.
    Returns the volumes and each file's path inside the container.
    """
    files = [file.resolve() for file in files]
    directories = sorted({file.parent for file in files})
    common = Path(os.path.commonpath(directories))
    volumes = []
    for directory in directories:
        inside = (Path(SOURCE_DIR) / directory.relative_to(common)).as_posix()
        volumes.append(f"{relative_path(directory, base_dir)}:{inside}:ro")
    paths = {
        file: (Path(SOURCE_DIR) / file.relative_to(common)).as_posix() for file in files
    }
    return volumes, paths


def relative_path(path: Path, base_dir: Path) -> str:
    """Return ``path`` as compose expects it: relative, starting with . or .."""
    relative = Path(os.path.relpath(path.resolve(), base_dir.resolve())).as_posix()
    if relative == "." or relative == ".." or relative.startswith("../"):
        return relative
    return f"./{relative}"


def run_name(topology: Topology, scenario: Scenario | None) -> str:
    return scenario.name if scenario is not None else topology.name


class _ComposeDumper(yaml.SafeDumper):
    """Writes lists of plain values on one line and repeats shared values."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    plain = all(isinstance(item, (str, int, float)) for item in data)
    flow = plain and sum(len(str(item)) + 2 for item in data) <= FLOW_LIST_WIDTH
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ComposeDumper.add_representer(list, _represent_list)


def render(document: dict[str, Any], header: str) -> str:
    comments = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = yaml.dump(
        document,
        Dumper=_ComposeDumper,
        sort_keys=False,
        default_flow_style=False,
        width=88,
    )
    return comments + "\n" + body


def header_text(
    topology_arg: str,
    scenario_arg: str | None,
    output_arg: str,
    run_dir: str,
    scenario: Scenario | None,
) -> str:
    command = f"smkd compose {topology_arg}"
    if scenario_arg is not None:
        command += f" --scenario {scenario_arg}"
    lines = [
        "Generated by:",
        f"  {command} -o {output_arg}",
        "Edit the topology or scenario and generate this file again.",
        "",
    ]
    if scenario is None:
        lines.append("`docker compose up` starts the agents and keeps them running.")
    else:
        lines += [
            f"`docker compose up` runs scenario {scenario.name} and exits. The "
            "verdict is in",
            f"{run_dir}/summary.json.",
        ]
    lines.append(f"Traces, captures and configs are written to {run_dir}/.")
    return "\n".join(lines)


def check_compose_scenario(scenario: Scenario) -> list[str]:
    """Return the problems that keep ``scenario`` from running under compose."""
    problems = []
    for action in scenario.timeline:
        if action.kind in ENGINE_ACTIONS:
            problems.append(
                f"{scenario.source}:{action.line}: {action.kind} needs the Docker "
                "engine, which the compose runner does not have; run this scenario "
                "with smkd run --backend docker"
            )
    return problems


# the command line


def add_compose_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compose",
        help="write a Docker Compose file for a topology and scenario",
        description=(
            "Write a Docker Compose file with one service per node, one internal "
            "network per link or LAN and a runner service. With --scenario, "
            "`docker compose up` runs the scenario and exits; without, it keeps "
            "the agents running. Results go to runs/compose-NAME/ beside the "
            "file. Exits with 2 for invalid input."
        ),
    )
    parser.add_argument("topology", help="topology YAML file")
    parser.add_argument("--scenario", help="scenario YAML file on that topology")
    parser.add_argument(
        "-o",
        "--output",
        help="compose file to write (default: standard output, with "
        "paths relative to the current directory)",
    )
    parser.add_argument(
        "--image", default=DEFAULT_IMAGE, help=f"node image (default {DEFAULT_IMAGE})"
    )
    parser.set_defaults(handler=run_compose_command)


def run_compose_command(args: argparse.Namespace) -> int:
    try:
        text = compose_text(args.topology, args.scenario, args.output, args.image)
    except ValidationError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    except ConfigError as error:
        print(f"smkd compose: {error}", file=sys.stderr)
        return EXIT_INVALID

    if args.output is None:
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text)
        print(
            f"wrote {args.output}; run it with docker compose -f {args.output} up",
            file=sys.stderr,
        )
    return 0


def compose_text(
    topology_arg: str,
    scenario_arg: str | None,
    output_arg: str | None,
    image: str = DEFAULT_IMAGE,
) -> str:
    """Return the compose file that ``smkd compose`` writes for these arguments."""
    topology = load_topology(topology_arg)
    scenario = None
    if scenario_arg is not None:
        scenario = load_scenario(scenario_arg)
        if scenario.topology.source.resolve() != topology.source.resolve():
            raise ConfigError(
                f"scenario {scenario_arg} runs on {scenario.topology.source}, not on "
                f"{topology_arg}; pass its own topology"
            )
        problems = check_compose_scenario(scenario)
        if problems:
            raise ConfigError("\n".join(problems))
    if RUNNER in topology.nodes:
        raise ConfigError(
            f"a node is named {RUNNER!r}, the name of the runner "
            "service; rename the node"
        )

    base_dir = Path(output_arg).resolve().parent if output_arg else Path.cwd()
    document = compose_document(topology, scenario, base_dir, image)
    run_dir = f"runs/compose-{run_name(topology, scenario)}"
    header = header_text(
        topology_arg, scenario_arg, output_arg or "FILE", run_dir, scenario
    )
    return render(document, header)


# the runner service


class ComposeBackend(Backend):
    """Agents that compose started, driven from the runner service.

    It writes the run directory and marks it done, so that compose starts
    the agents, and it stops them at the end. It cannot stop nodes or change
    links, because the runner service has no access to the Docker engine.
    """

    name = "compose"

    @classmethod
    def check_available(cls) -> None:
        if os.environ.get(COMPOSE_ENV) != "1":
            raise ConfigError(
                "the compose backend runs only in the runner service of a file "
                "written by smkd compose; use --backend docker to start containers"
            )

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
        return paths

    async def start(self) -> None:
        mark_setup_done(self.run_dir)

    async def stop(self) -> None:
        await stop_agents(self.control_dir, self.configs)
        merge_capture_parts(self.run_dir / "captures")

    async def stop_node(self, name: str) -> None:
        raise _engine_needed("node_stop")

    async def start_node(self, name: str) -> None:
        raise _engine_needed("node_start")

    async def set_link(
        self, segment: str, up: bool | None = None, impairment: Impairment | None = None
    ) -> None:
        raise _engine_needed("link_down, link_up and link_set")

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "link_emulation": "agent-side (delay, jitter, loss, bandwidth)",
            "captures": "tcpdump in each container, merged per link or LAN",
        }


def _engine_needed(actions: str) -> ConfigError:
    return ConfigError(
        f"{actions} need the Docker engine, which the compose runner "
        "does not have; run the scenario with smkd run --backend docker"
    )


def mark_setup_done(run_dir: Path) -> None:
    """Mark the run directory complete for ``smkd-entrypoint setup-done``.

    The marker contains this container's host name, so that a marker left
    by an earlier run does not count.
    """
    (run_dir / ".setup-done").write_text(socket.gethostname() + "\n")


def clear_run_dir(run_dir: Path) -> None:
    """Empty the bind-mounted run directory, which only compose runs use."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for entry in run_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def serve(run_dir: Path, topology_path: str) -> int:
    """Write the run directory, then keep the agents up until SIGTERM or SIGINT."""
    topology = load_topology(topology_path)
    control_dir = run_dir / "ctl"
    prepare_pki(topology, run_dir)
    configs = ComposeBackend.write_configs(topology, run_dir, 1, control_dir)
    mark_setup_done(run_dir)
    print(
        f"smkd compose: {len(configs)} agents configured in {run_dir}; "
        "stop with docker compose down",
        flush=True,
    )

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    asyncio.run(stop_agents(control_dir, configs))
    merge_capture_parts(run_dir / "captures")
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli import main as smkd_main

    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or argv[0] not in ("run", "serve"):
        print(
            "usage: python -m smkd.compose run RUN_DIR SCENARIO\n"
            "       python -m smkd.compose serve RUN_DIR TOPOLOGY",
            file=sys.stderr,
        )
        return EXIT_INVALID
    command, run_dir, source = argv
    clear_run_dir(Path(run_dir))
    if command == "serve":
        return serve(Path(run_dir), source)
    return smkd_main(["run", source, "--backend", "compose", "--out", run_dir])


if __name__ == "__main__":
    sys.exit(main())
