"""``smkd run``: bring a topology up, drive a scenario's timeline, check, tear down.

Exit codes: 0 when every expectation holds, 1 when one fails (or the
topology never became ready, or an action could not be carried out), 2 for
invalid input, 130 after Ctrl-C. Teardown always runs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import ConfigError, SmkdError

from .backends import Backend, get_backend
from .configs import prepare_pki, segment_members
from .expect import Outcome, RunRecord, evaluate, plural
from .model import Action, Impairment, Scenario, ValidationError, load_file
from .outputs import write_junit, write_summary
from .report import REPORT_NAME, write_report

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERRUPTED = 130

# Unix socket paths are limited to 107 bytes on Linux
MAX_SOCKET_PATH = 100

log = logging.getLogger("smkd.runner")


class NotReady(SmkdError):
    """The topology did not become ready within the scenario's timeout."""


@dataclass
class RunResult:
    scenario: Scenario
    run_dir: Path
    backend: str
    outcomes: list[Outcome] = field(default_factory=list)
    action_errors: list[str] = field(default_factory=list)
    ready_error: str | None = None
    started: float = 0.0
    finished: float = 0.0
    # Backend.describe(), such as how the backend emulates links
    backend_details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return (
            self.ready_error is None
            and not self.action_errors
            and all(o.passed for o in self.outcomes)
        )


class Progress:
    """Prints one line per step of a run, with the time since the run began."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.start = time.monotonic()

    def __call__(self, message: str) -> None:
        if not self.quiet:
            elapsed = time.monotonic() - self.start
            print(f"  {elapsed:7.2f}s  {message}", flush=True)


class Runner:
    def __init__(
        self, scenario: Scenario, run_dir: Path, backend_name: str, progress: Progress
    ):
        self.scenario = scenario
        self.run_dir = run_dir
        self.backend_name = backend_name
        self.progress = progress
        self.result = RunResult(scenario, run_dir, backend_name)
        self.actions: list[dict[str, Any]] = []
        self.ready_at: float | None = None
        # the impairment last set per (link, sending member or None)
        self.impairments: dict[tuple[str, str | None], Impairment] = {}
        self.trace_file = None
        self.backend: Backend | None = None

    async def run(self) -> RunResult:
        self.result.started = time.time()
        self.trace_file = open(self.run_dir / "runner.jsonl", "a", buffering=1)
        control_dir = _control_dir(self.run_dir, self.scenario)
        try:
            self.backend = self._prepare(control_dir)
            await self._bring_up()
            await self._drive_timeline()
            self.node_status = await self._collect_status()
        except NotReady as error:
            self.result.ready_error = str(error)
            self.progress(f"not ready: {error}")
        finally:
            await self._tear_down(control_dir)
        self._check()
        self.result.finished = time.time()
        return self.result

    def _prepare(self, control_dir: Path) -> Backend:
        backend_class = get_backend(self.backend_name)
        topology = backend_class.place(self.scenario.topology)
        if topology is not self.scenario.topology:
            first = next(iter(topology.nodes.values())).address
            self.progress(
                f"default addresses are busy (another run?); using {first} on"
            )
            self.scenario = dataclasses.replace(self.scenario, topology=topology)
        self.progress(f"preparing {len(topology.nodes)} nodes in {self.run_dir}")
        prepare_pki(topology, self.run_dir)
        configs = backend_class.write_configs(
            topology, self.run_dir, self.scenario.seed, control_dir
        )
        return backend_class(topology, self.run_dir, configs, control_dir)

    async def _bring_up(self) -> None:
        assert self.backend is not None
        self.progress(f"starting agents ({self.backend_name} backend)")
        await self.backend.start()
        self.result.backend_details = self.backend.describe()
        self.record("started", backend=self.result.backend_details)
        deadline = time.monotonic() + self.scenario.ready_timeout
        missing: list[str] = []
        while time.monotonic() < deadline:
            missing = await self._not_ready()
            if not missing:
                self.ready_at = time.time()
                self.record("ready")
                self.progress("ready: every agent answers and every ACL is installed")
                return
            await asyncio.sleep(0.1)
        shown = ", ".join(missing[:5])
        raise NotReady(f"not ready after {self.scenario.ready_timeout:g} s: {shown}")

    async def _not_ready(self) -> list[str]:
        """Return what is still missing before the timeline may start."""
        assert self.backend is not None
        missing = []
        topology = self.scenario.topology
        for name in topology.nodes:
            try:
                answer = await self.backend.command(name, {"cmd": "status"})
            except SmkdError:
                missing.append(f"{name} does not answer")
                continue
            routing = answer["status"].get("routing", {})
            if not routing.get("reaches_cores", True):
                missing.append(f"{name} has no route to every core yet")
        for group in topology.groups.values():
            try:
                answer = await self.backend.command(group.initiator, {"cmd": "status"})
            except SmkdError:
                continue
            if not answer["status"]["groups"].get(group.name, {}).get("accepted"):
                missing.append(f"the ACL of {group.name} is not accepted yet")
        return missing

    async def _drive_timeline(self) -> None:
        assert self.ready_at is not None
        shift = 0.0
        for action in self.scenario.timeline:
            due = self.ready_at + action.at + shift
            await asyncio.sleep(max(0.0, due - time.time()))
            if action.kind == "wait":
                shift += action.params["seconds"]
                self.progress(f"wait {action.params['seconds']:g} s")
                continue
            await self._perform(action)
        end = (
            self.ready_at
            + shift
            + (self.scenario.timeline[-1].at if self.scenario.timeline else 0.0)
        )
        remaining = end + self.scenario.duration - time.time()
        if remaining > 0:
            self.progress(f"running {remaining:.1f} s more")
            await asyncio.sleep(remaining)

    async def _perform(self, action: Action) -> None:
        description = _describe(action)
        self.progress(description)
        record = {
            "action": action.kind,
            "node": action.node,
            "group": action.group,
            "link": action.link,
            "from": action.params.get("from"),
            "line": action.line,
        }
        self.record("action", **record)
        self.actions.append({"t": time.time(), **record})
        try:
            await self._apply(action)
        except SmkdError as error:
            message = f"line {action.line}: {description} failed: {error}"
            self.result.action_errors.append(message)
            self.record("action_failed", line=action.line, error=str(error))
            self.progress(f"FAILED: {error}")

    async def _apply(self, action: Action) -> None:
        backend = self.backend
        assert backend is not None
        kind = action.kind
        if kind in ("join", "leave"):
            await backend.command(action.node, {"cmd": kind, "group": action.group})
        elif kind == "send":
            await backend.command(
                action.node, {"cmd": "send", "group": action.group, **action.params}
            )
        elif kind == "rekey":
            group = self.scenario.topology.groups[action.group]
            await backend.command(
                group.cores[0], {"cmd": "rekey", "group": action.group}
            )
        elif kind == "acl_update":
            group = self.scenario.topology.groups[action.group]
            command = {"cmd": "acl_update", "group": action.group}
            for key in ("remove", "add"):
                command[key] = list(action.params.get(key, ()))
            await backend.command(group.initiator, command)
        elif kind in ("link_down", "link_up", "link_set"):
            await self._set_link(backend, action)
        elif kind == "node_stop":
            await backend.stop_node(action.node)
        elif kind == "node_start":
            await backend.start_node(action.node)
        else:
            raise ConfigError(f"unknown action {kind!r}")

    async def _set_link(self, backend: Backend, action: Action) -> None:
        """Change a whole link or LAN, or only what its member ``from`` sends."""
        up = None if action.kind == "link_set" else action.kind == "link_up"
        impairment = self._impairment(action) if action.kind == "link_set" else None
        sender = action.params.get("from")
        if sender is None:
            await backend.set_link(action.link, up=up, impairment=impairment)
            return
        segment = self.scenario.topology.segment(action.link)
        assert segment is not None
        if sender not in segment_members(segment):
            raise ConfigError(f"{sender} does not send on {action.link}")
        await backend.set_direction(action.link, sender, up=up, impairment=impairment)

    def _impairment(self, action: Action) -> Impairment:
        segment = self.scenario.topology.segment(action.link)
        assert segment is not None
        sender = action.params.get("from")
        key = (action.link, sender)
        base = segment.impairment_from(sender) if sender else segment.impairment
        current = self.impairments.get(key, base)
        changes = {
            k: v
            for k, v in action.params.items()
            if k in ("delay", "jitter", "loss", "bandwidth")
        }
        updated = dataclasses.replace(current, **changes)
        self.impairments[key] = updated
        return updated

    async def _collect_status(self) -> dict[str, Any]:
        assert self.backend is not None
        status = {}
        for name in self.scenario.topology.nodes:
            try:
                answer = await self.backend.command(name, {"cmd": "status"})
                status[name] = {"counters": answer["counters"], **answer["status"]}
            except SmkdError as error:
                status[name] = {"error": str(error)}
        return status

    async def _tear_down(self, control_dir: Path) -> None:
        if self.backend is not None:
            self.progress("tearing down")
            try:
                await self.backend.stop()
            finally:
                self.record("stopped")
        if control_dir.parent == Path(tempfile.gettempdir()):
            shutil.rmtree(control_dir, ignore_errors=True)
        if self.trace_file is not None:
            self.trace_file.close()
            self.trace_file = None

    def _check(self) -> None:
        if self.ready_at is None:
            return
        record = RunRecord.load(self.run_dir, self.ready_at, self.actions)
        self.result.outcomes = evaluate(self.scenario, record)

    def record(self, event: str, **fields: Any) -> None:
        if self.trace_file is not None:
            entry = {
                "t": round(time.time(), 6),
                "node": "runner",
                "event": event,
                **fields,
            }
            self.trace_file.write(json.dumps(entry) + "\n")


def _describe(action: Action) -> str:
    parts = [action.kind.replace("_", " ")]
    for value in (action.node, action.group, action.link):
        if value:
            parts.append(value)
    extra = {
        k: v for k, v in action.params.items() if k not in ("node", "group", "link")
    }
    if extra:
        parts.append(" ".join(f"{k}={v}" for k, v in extra.items()))
    return " ".join(parts)


def _control_dir(run_dir: Path, scenario: Scenario) -> Path:
    longest = max(scenario.topology.nodes, key=len)
    candidate = run_dir.resolve() / "ctl"
    if len(str(candidate / f"{longest}.sock")) <= MAX_SOCKET_PATH:
        candidate.mkdir(parents=True, exist_ok=True)
        return candidate
    # the run directory is too deep for a Unix socket path
    return Path(tempfile.mkdtemp(prefix="smkd-ctl-"))


def make_run_dir(scenario: Scenario, out: str | None) -> Path:
    if out is not None:
        run_dir = Path(out)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ConfigError(
                f"output directory {run_dir} exists and is not empty; "
                "choose another --out or remove it"
            )
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{scenario.name}-{stamp}"
        suffix = 1
        while run_dir.exists():
            suffix += 1
            run_dir = Path("runs") / f"{scenario.name}-{stamp}-{suffix}"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "logs").mkdir(exist_ok=True)
    return run_dir


def _log_to_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "logs" / "agents.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger = logging.getLogger("smkd")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return handler


def run_scenario(
    path: str | Path,
    backend: str = "local",
    out: str | None = None,
    quiet: bool = False,
) -> RunResult:
    """Run one scenario file end to end; raise ValidationError for invalid input."""
    loaded = load_file(path)
    if not isinstance(loaded, Scenario):
        raise ConfigError(
            f"{path} is a topology, not a scenario; pass a scenario file "
            "that names it under topology: (see scenarios/)"
        )
    scenario = loaded
    get_backend(backend).check_available()
    run_dir = make_run_dir(scenario, out)
    handler = _log_to_file(run_dir)
    progress = Progress(quiet)
    progress(
        f"scenario {scenario.name}: {plural(len(scenario.timeline), 'action')}, "
        f"{plural(len(scenario.expect), 'expectation')} and the tree invariant"
    )
    runner = Runner(scenario, run_dir, backend, progress)
    try:
        result = asyncio.run(runner.run())
    finally:
        logging.getLogger("smkd").removeHandler(handler)
        handler.close()
    write_summary(result, getattr(runner, "node_status", {}))
    write_junit(result)
    write_report(result)
    return result


def add_run_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a scenario and check its expectations",
        description=(
            "Bring the scenario's topology up, drive its timeline, check its "
            "expectations against the agents' traces and tear everything down. "
            "Exits with 0 when every expectation holds, 1 when one fails, "
            "2 for invalid input and 130 after Ctrl-C."
        ),
    )
    parser.add_argument("scenario", help="scenario YAML file")
    parser.add_argument(
        "--backend",
        default="local",
        help="where agents run: local (default, one process on loopback), "
        "mininet (as root, one network namespace per node) or docker (one "
        "container per node)",
    )
    parser.add_argument(
        "--out", help="run directory to create (default runs/NAME-YYYYMMDD-HHMMSS)"
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print only the summary, not each step",
    )
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    # SIGTERM tears the run down exactly like Ctrl-C
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return _run_command(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_command(args: argparse.Namespace) -> int:
    try:
        result = run_scenario(args.scenario, args.backend, args.out, args.quiet)
    except ValidationError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    except ConfigError as error:
        print(f"smkd run: {error}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        print(
            "smkd run: interrupted; agents stopped and sockets removed", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    print_summary(result)
    return EXIT_OK if result.passed else EXIT_FAILED


def print_summary(result: RunResult) -> None:
    held = sum(o.passed for o in result.outcomes)
    total = len(result.outcomes)
    verdict = "PASSED" if result.passed else "FAILED"
    seconds = result.finished - result.started
    print(
        f"\n{result.scenario.name}: {verdict} ({held} of {total} expectations hold) "
        f"in {seconds:.1f} s"
    )
    if result.ready_error:
        print(f"  FAIL  topology ready: {result.ready_error}")
    for error in result.action_errors:
        print(f"  FAIL  action {error}")
    for outcome in result.outcomes:
        mark = "ok  " if outcome.passed else "FAIL"
        line = f" (line {outcome.expectation.line})" if outcome.expectation.line else ""
        print(f"  {mark}  {outcome.expectation.name}{line}: {outcome.detail}")
    captures = len(list((result.run_dir / "captures").glob("*.pcap")))
    print(f"run directory: {result.run_dir}")
    print(f"  traces in traces/, {plural(captures, 'capture')} in captures/, "
          "summary.json, junit.xml, logs/agents.log")
    print(f"report: {result.run_dir / REPORT_NAME}")
