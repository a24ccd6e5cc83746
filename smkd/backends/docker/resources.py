"""Docker containers and networks of a run, and of runs whose process has died.

Every container and network of a run carries two labels: ``smkd.run``, the
run's id, and ``smkd.owner``, the host name and process id. A run removes
its own resources by the first, and a later run finds those that a killed
run left by the second.
"""

from __future__ import annotations

import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from typing import Any

log = logging.getLogger("smkd.docker")

RUN_LABEL = "smkd.run"
OWNER_LABEL = "smkd.owner"

# parallel Docker API calls, below the SDK's pool of 10 connections per client
WORKERS = 8


def owner_label() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def remove_resources(client: Any, label: str) -> None:
    """Remove every container, then every network, that carries ``label``."""
    containers = client.containers.list(all=True, filters={"label": label})
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda c: _remove(c, "container", force=True), containers))
    networks = client.networks.list(filters={"label": label})
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda n: _remove(n, "network"), networks))


def _remove(resource: Any, kind: str, **options: Any) -> None:
    import docker

    try:
        resource.remove(**options)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as error:
        log.warning("docker: cannot remove %s %s: %s", kind, resource.name, error)


def remove_stale_resources(client: Any) -> None:
    """Remove resources left by runs on this host whose process has died."""
    host = socket.gethostname()
    owners = set()
    for container in client.containers.list(all=True, filters={"label": OWNER_LABEL}):
        owners.add(container.labels.get(OWNER_LABEL, ""))
    for network in client.networks.list(filters={"label": OWNER_LABEL}):
        owners.add((network.attrs.get("Labels") or {}).get(OWNER_LABEL, ""))
    for owner in owners:
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not _process_alive(int(pid)):
            log.info("docker: removing containers and networks of dead run %s", owner)
            remove_resources(client, f"{OWNER_LABEL}={owner}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def probe_netem(client: Any, image: str) -> bool:
    """Return whether a container of ``image`` can add a tc netem qdisc."""
    import docker

    try:
        client.containers.run(
            image,
            entrypoint=["tc"],
            command=["qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            network_mode="none",
            cap_add=["NET_ADMIN"],
            remove=True,
            labels={OWNER_LABEL: owner_label()},
        )
    except docker.errors.ContainerError:
        return False
    return True
