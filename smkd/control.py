"""Client side of the agents' control socket: one JSON request, one JSON response."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from node.errors import SmkdError


class ControlError(SmkdError):
    """An agent could not be reached, or rejected a command."""


async def send_command(
    path: Path, request: dict[str, Any], timeout: float = 5.0
) -> dict[str, Any]:
    """Send ``request`` to the agent listening on ``path`` and return its answer.

    Raises ``ControlError`` when the socket is missing or silent, or when the
    agent answers ``ok: false``.
    """
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_unix_connection(str(path)), timeout
        )
    except (OSError, asyncio.TimeoutError) as error:
        raise ControlError(f"cannot reach the agent at {path}: {error}") from None
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, asyncio.TimeoutError) as error:
        raise ControlError(f"no answer from the agent at {path}: {error!r}") from None
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
    if not line:
        raise ControlError(f"the agent at {path} closed the connection")
    response = json.loads(line)
    if not response.get("ok"):
        raise ControlError(response.get("error", "command failed"))
    return response
