"""Build a smkd topology in Mininet, start its agents and open the Mininet CLI.

Run either command as root from the repository:

    sudo mn --custom topologies/mininet_topo.py \\
        --topo smkd,topologies/figure1.yaml --controller none
    sudo .venv/bin/python topologies/mininet_topo.py topologies/figure1.yaml

Both write a run directory under runs/ (PKI, agent configs, traces, pcaps,
logs), start one agent per node as the Mininet backend of ``smkd run`` does,
and add these commands to the Mininet CLI:

    smkd_join HOST GROUP      smkd_status [NODE ...]    smkd_link LINK up|down
    smkd_leave HOST GROUP     smkd_keys [GROUP]         smkd_stop NODE
    smkd_trace NODE [COUNT]                             smkd_start NODE

``mn`` runs Debian's python3, which lacks smkd's packages, so this file puts
the checkout and its venv (``.venv``, or ``$SMKD_VENV``) at the front of
``sys.path``. ``mn --custom`` copies every top-level name of this file into
its own globals, which is why they are private except ``topos`` and ``CLI``.
"""

import argparse as _argparse
import asyncio as _asyncio
import inspect as _inspect
import json as _json
import os as _os
import sys as _sys
import tempfile as _tempfile
import time as _time
from pathlib import Path as _Path

import mininet.cli as _mininet_cli

# ``mn --custom`` executes this file without setting __file__
_HERE = _Path(_inspect.currentframe().f_code.co_filename).resolve().parent
_ROOT = _HERE.parent
_VENV = _Path(_os.environ.get("SMKD_VENV", _ROOT / ".venv"))

# Unix socket paths are limited to 107 bytes on Linux
_MAX_SOCKET_PATH = 100

_ACL_TIMEOUT = 10.0

_KEY_EVENTS = ("key_installed", "became_gkdc", "keys_updated", "key_erased")


def _use_project_packages() -> None:
    """Put this checkout and its venv's packages ahead of the system's."""
    version = f"python{_sys.version_info.major}.{_sys.version_info.minor}"
    site_packages = _VENV / "lib" / version / "site-packages"
    for path in (site_packages, _ROOT):
        if path.is_dir() and str(path) not in _sys.path[:2]:
            _sys.path.insert(0, str(path))


_use_project_packages()
try:
    from node.errors import SmkdError as _SmkdError
    from smkd.backends.mininet import MininetBackend as _MininetBackend
    from smkd.backends.mininet import SmkdTopo as _SmkdTopo
    from smkd.configs import prepare_pki as _prepare_pki
    from smkd.model import load_topology as _load_topology
except ImportError as _error:
    raise SystemExit(
        f"cannot import smkd ({_error}); create its venv with 'python3 -m venv "
        f"--system-site-packages {_VENV}' and '{_VENV}/bin/pip install -e {_ROOT}', "
        "or set SMKD_VENV to an existing one"
    ) from None


class _Session:
    """One topology's run directory, configs and Mininet backend."""

    def __init__(self, topology_path: str, run_dir: str | None = None):
        topology = _load_topology(topology_path)
        self.run_dir = _make_run_dir(topology.name, run_dir)
        control_dir = _control_dir(self.run_dir, topology.nodes)
        _prepare_pki(topology, self.run_dir)
        configs = _MininetBackend.write_configs(topology, self.run_dir, 1, control_dir)
        python = _VENV / "bin" / "python"
        self.backend = _MininetBackend(
            topology, self.run_dir, configs, control_dir,
            python=str(python) if python.exists() else None,
        )
        self.topo = _SmkdTopo(self.backend.plan)
        self.topo.session = self
        self.started = False

    def start(self, net) -> None:
        """Start captures and agents in a network that Mininet has started."""
        self.backend.net = net
        self.backend.prepare_network()
        self.backend.launch_agents()
        _asyncio.run(self.backend.wait_for_agents(list(self.backend.configs)))
        self.started = True
        self.wait_for_acls()

    def wait_for_acls(self) -> None:
        """Wait until every group's primary core has accepted its ACL.

        Joins before that are rejected, and an initiator whose first upload
        reached a core that had not bound its socket yet retries after a
        second.
        """
        deadline = _time.monotonic() + _ACL_TIMEOUT
        groups = self.backend.topology.groups.values()
        pending = [g.name for g in groups]
        while pending and _time.monotonic() < deadline:
            _time.sleep(0.1)
            pending = [g.name for g in groups if not self._accepted(g)]
        if not pending:
            return
        print(f"*** the ACLs of {', '.join(pending)} are not accepted after "
              f"{_ACL_TIMEOUT:g} s; see smkd_trace and the logs in {self.run_dir}")

    def _accepted(self, group) -> bool:
        try:
            answer = self.command(group.initiator, {"cmd": "status"})
        except _SmkdError:
            return False
        return bool(answer["status"]["groups"].get(group.name, {}).get("accepted"))

    def stop(self) -> None:
        self.backend.stop_processes()
        self.started = False

    def command(self, node: str, request: dict) -> dict:
        return _asyncio.run(self.backend.command(node, request))


def _make_run_dir(name: str, path: str | None) -> _Path:
    if path is None:
        stamp = _time.strftime("%Y%m%d-%H%M%S")
        path = _os.path.join("runs", f"mininet-{name}-{stamp}")
    run_dir = _Path(path).resolve()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    return run_dir


def _control_dir(run_dir: _Path, nodes) -> _Path:
    candidate = run_dir / "ctl"
    if len(str(candidate / f"{max(nodes, key=len)}.sock")) <= _MAX_SOCKET_PATH:
        candidate.mkdir(exist_ok=True)
        return candidate
    # the run directory is too deep for a Unix socket path
    return _Path(_tempfile.mkdtemp(prefix="smkd-ctl-"))


def _smkd_topo(topology_path: str) -> _SmkdTopo:
    """Build the Mininet topology for ``mn --topo smkd,FILE``."""
    return _Session(str(topology_path)).topo


class SmkdCLI(_mininet_cli.CLI):
    """The Mininet CLI plus smkd_* commands that drive the agents."""

    def __init__(self, mininet, stdin=_sys.stdin, script=None, session=None,
                 **kwargs):
        self.session = session or getattr(mininet.topo, "session", None)
        # scripts given to mn with --pre run before the network has started
        owner = self.session is not None and script is None and not self.session.started
        if owner:
            self.session.start(mininet)
            _print_intro(self.session)
        try:
            super().__init__(mininet, stdin=stdin, script=script, **kwargs)
        finally:
            if owner:
                self.session.stop()

    def do_smkd_join(self, line: str) -> None:
        """smkd_join HOST GROUP: the host joins the group through its DR.

        The DR is the host's designated router: its LAN's or its link's router.
        """
        self._host_command("join", line)

    def do_smkd_leave(self, line: str) -> None:
        """smkd_leave HOST GROUP: the host leaves the group."""
        self._host_command("leave", line)

    def do_smkd_status(self, line: str) -> None:
        """smkd_status [NODE ...]: each agent's protocol state and counters."""
        session = self._session()
        if session is None:
            return
        names = line.split() or list(session.backend.configs)
        for name in names:
            answer = self._ask(name, {"cmd": "status"})
            if answer is None:
                continue
            groups = _json.dumps(answer["status"]["groups"], sort_keys=True)
            print(f"{name} ({answer['status']['role']}): {groups}")
            if len(names) == 1:
                print(f"  counters: {_json.dumps(answer['counters'], sort_keys=True)}")

    def do_smkd_keys(self, line: str) -> None:
        """smkd_keys [GROUP]: the latest group key event of each node.

        Keys appear by epoch, SPI and fingerprint only, never in clear.
        """
        session = self._session()
        if session is None:
            return
        group = line.strip() or None
        for name in session.backend.configs:
            events = [e for e in _read_trace(session.run_dir, name)
                      if e["event"] in _KEY_EVENTS
                      and (group is None or e.get("group") == group)]
            if events:
                print(f"{name}: {_describe_key_event(events[-1])}")

    def do_smkd_trace(self, line: str) -> None:
        """smkd_trace NODE [COUNT]: the node's last trace events (default 10)."""
        session = self._session()
        words = line.split()
        if session is None or not words:
            print("usage: smkd_trace NODE [COUNT]")
            return
        count = int(words[1]) if len(words) > 1 and words[1].isdigit() else 10
        for event in _read_trace(session.run_dir, words[0])[-count:]:
            print(_json.dumps(event, sort_keys=True))

    def do_smkd_link(self, line: str) -> None:
        """smkd_link LINK up|down: bring a link or LAN's interfaces up or down."""
        words = line.split()
        if len(words) != 2 or words[1] not in ("up", "down"):
            print("usage: smkd_link LINK up|down")
            return
        if self._backend_call(lambda b: b.set_link(words[0], up=words[1] == "up")):
            print(f"{words[0]} is {words[1]}")

    def do_smkd_stop(self, line: str) -> None:
        """smkd_stop NODE: stop the node's agent process."""
        if self._backend_call(lambda b: b.stop_node(line.strip())):
            print(f"{line.strip()} stopped")

    def do_smkd_start(self, line: str) -> None:
        """smkd_start NODE: start the node's agent again, without its CBT state."""
        if self._backend_call(lambda b: b.start_node(line.strip())):
            print(f"{line.strip()} started")

    def _host_command(self, command: str, line: str) -> None:
        words = line.split()
        if len(words) != 2:
            print(f"usage: smkd_{command} HOST GROUP")
            return
        if self._ask(words[0], {"cmd": command, "group": words[1]}) is not None:
            print(f"{words[0]}: {command} {words[1]} sent; see smkd_status {words[0]}")

    def _ask(self, node: str, request: dict) -> dict | None:
        session = self._session()
        if session is None:
            return None
        if node not in session.backend.configs:
            known = ", ".join(session.backend.configs)
            print(f"no node named {node!r}; nodes: {known}")
            return None
        try:
            return session.command(node, request)
        except _SmkdError as error:
            print(f"{node}: {error}")
            return None

    def _backend_call(self, call) -> bool:
        session = self._session()
        if session is None:
            return False
        try:
            _asyncio.run(call(session.backend))
        except (_SmkdError, KeyError) as error:
            print(f"failed: {error}")
            return False
        return True

    def _session(self):
        if self.session is None or not self.session.started:
            print("smkd agents are not running in this network")
            return None
        return self.session


def _read_trace(run_dir: _Path, node: str) -> list[dict]:
    path = run_dir / "traces" / f"{node}.jsonl"
    if not path.exists():
        return []
    return [_json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _describe_key_event(event: dict) -> str:
    fields = {k: event[k] for k in ("group", "epoch", "spi", "group_key_fp")
              if k in event}
    return f"{event['event']} " + " ".join(f"{k}={v}" for k, v in fields.items())


def _print_intro(session: _Session) -> None:
    print(f"*** smkd agents are running; run directory {session.run_dir}")
    print("*** commands: smkd_join HOST GROUP, smkd_leave HOST GROUP, "
          "smkd_status [NODE ...], smkd_keys [GROUP], smkd_trace NODE [COUNT], "
          "smkd_link LINK up|down, smkd_stop NODE, smkd_start NODE")


def _main(argv: list[str] | None = None) -> int:
    parser = _argparse.ArgumentParser(
        description="Build a smkd topology in Mininet, start its agents and open "
                    "the Mininet CLI with smkd_* commands. Needs root.",
    )
    parser.add_argument("topology", help="topology YAML file")
    parser.add_argument("--run-dir", help="run directory to create "
                                          "(default runs/mininet-NAME-YYYYMMDD-HHMMSS)")
    args = parser.parse_args(argv)
    try:
        _MininetBackend.check_available()
        session = _Session(args.topology, args.run_dir)
    except _SmkdError as error:
        print(f"mininet_topo: {error}", file=_sys.stderr)
        return 2
    backend = session.backend
    try:
        _asyncio.run(backend.start())
        session.started = True
        session.wait_for_acls()
        _print_intro(session)
        SmkdCLI(backend.net, session=session)
    finally:
        backend.stop_now()
    return 0


# the names that ``mn --custom`` reads
topos = {"smkd": _smkd_topo}
CLI = SmkdCLI

if globals().get("__name__") == "__main__":
    _sys.exit(_main())
