"""python -m node CONFIG: run one smkd agent until stopped.

The agent stops on SIGINT or SIGTERM, or on the control command ``stop``.
Exit status: 0 after a clean stop, 2 for an invalid config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .agent import Agent
from .config import load_agent_config
from .errors import ConfigError


async def _run(config_path: str) -> None:
    agent = Agent(load_agent_config(config_path))
    await agent.start()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, agent.stop)
    await agent.wait_stopped()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m node", description=__doc__)
    parser.add_argument("config", help="the agent's JSON config file")
    parser.add_argument("--log-level", default="INFO",
                        help="logging level (DEBUG, INFO, WARNING); default INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        asyncio.run(_run(args.config))
    except ConfigError as error:
        print(f"smkd agent: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
