"""The Mininet backend: its network plan, and real runs where root and Mininet are.

The plan tests need neither. The rest build real namespaces, so they skip on
a machine without root or Mininet, and fail instead in CI.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from backend_support import require

import smkd.backends.mininet as backend_module
from node.capture import read_pcap
from node.errors import ConfigError
from smkd.backends import get_backend
from smkd.backends.mininet import (
    MininetBackend,
    NetworkPlan,
    kernel_routes,
    qdisc_commands,
)
from smkd.cli import main
from smkd.configs import ROUTER_ROLES, LinkAddressing, prepare_pki
from smkd.model import Impairment, Topology, load_topology

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "scenarios"
TOPOLOGIES = ROOT / "topologies"

# interface names the backend uses, all inside namespaces
OUR_INTERFACES = re.compile(r"eth\d+|p\d+|br0")


def figure1() -> Topology:
    return load_topology(TOPOLOGIES / "figure1.yaml")


def abilene() -> Topology:
    return load_topology(TOPOLOGIES / "abilene.yaml")


# the plan, without root


def test_plan_names_interfaces_per_node():
    plan = NetworkPlan.build(figure1(), LinkAddressing.assign(figure1()))

    assert [(i.name, i.segment, i.address) for i in plan.interfaces["A"]] == [
        ("eth0", "A-B", "10.0.0.2/24"),
        ("eth1", "lan-A", "10.0.3.2/24"),
    ]
    assert [(i.name, i.address) for i in plan.interfaces["h"]] == [
        ("eth0", "10.0.3.3/24"),
    ]


def test_plan_puts_each_lan_on_a_bridge():
    plan = NetworkPlan.build(figure1(), LinkAddressing.assign(figure1()))

    assert plan.bridges == {"lan-A": "lan-A"}
    ports = [end for end in plan.segment_interfaces("lan-A") if end.node == "lan-A"]
    assert [port.name for port in ports] == ["p0", "p1", "p2"]
    assert all(port.address is None for port in ports)
    assert plan.captures["lan-A"] == ("lan-A", "br0")
    assert plan.captures["A-B"] == ("A", "eth0")


def test_bridge_name_avoids_node_names(tmp_path):
    source = (TOPOLOGIES / "figure1.yaml").read_text()
    path = tmp_path / "clash.yaml"
    path.write_text(source.replace("name: lan-A", "name: h2"))
    topology = load_topology(path)

    plan = NetworkPlan.build(topology, LinkAddressing.assign(topology))

    assert plan.bridges == {"h2": "h2-br"}


def follow_routes(topology: Topology, node: str, segment: str) -> list[str]:
    """Return the nodes a datagram from ``node`` to ``segment`` passes, in order."""
    addressing = LinkAddressing.assign(topology)
    routes = kernel_routes(topology, addressing)
    owners = {address: name for (name, _), address in addressing.addresses.items()}
    subnet = str(addressing.subnets[segment])
    path = [node]
    while segment not in addressing.interfaces(path[-1]):
        here = path[-1]
        matching = [r for r in routes[here] if r.subnet == subnet]
        assert len(matching) == 1, f"{here} has {len(matching)} routes to {subnet}"
        via = ipaddress.ip_address(matching[0].via)
        attached = [addressing.subnets[s] for s in addressing.interfaces(here)]
        assert any(via in net for net in attached), f"{here}: {via} is not on a link"
        path.append(owners[str(via)])
        assert len(path) <= len(topology.nodes), f"routing loop: {path}"
    return path


@pytest.mark.parametrize("load", [figure1, abilene])
def test_routes_reach_every_subnet_through_routers(load):
    topology = load()
    for name in topology.nodes:
        for segment in [*topology.links, *topology.lans]:
            path = follow_routes(topology, name, segment.name)

            roles = {topology.nodes[hop].role for hop in path[1:]}
            assert roles <= set(ROUTER_ROLES), f"{name} -> {segment.name}: {path}"


@pytest.mark.parametrize("load", [figure1, abilene])
def test_routes_leave_from_first_address(load):
    topology = load()
    addressing = LinkAddressing.assign(topology)
    for name, routes in kernel_routes(topology, addressing).items():
        first = next(iter(addressing.interfaces(name).values()))
        assert {route.source for route in routes} <= {first}, name


def test_host_routes_go_through_its_router():
    topology = figure1()
    routes = kernel_routes(topology, LinkAddressing.assign(topology))

    assert {route.via for route in routes["h"]} == {"10.0.3.2"}
    assert len(routes["h"]) == 3
    assert routes["h"][0].command() == (
        "ip route replace 10.0.0.0/24 via 10.0.3.2 src 10.0.3.3"
    )


def test_qdisc_without_netem_shapes_bandwidth_only():
    impairment = Impairment(delay=0.005, jitter=0.001, loss=0.1, bandwidth=2_000_000)

    commands = qdisc_commands("eth0", impairment, netem=False)

    rate = "rate 2000000bit ceil 2000000bit"
    assert commands == [
        "tc qdisc add dev eth0 root handle 1: htb default 1",
        f"tc class add dev eth0 parent 1: classid 1:1 htb {rate}",
    ]


def test_qdisc_with_netem_does_everything():
    impairment = Impairment(delay=0.005, jitter=0.001, loss=0.1, bandwidth=2_000_000)

    commands = qdisc_commands("eth1", impairment, netem=True)

    options = "delay 5000us 1000us loss 10% rate 2000000bit"
    assert commands == [f"tc qdisc add dev eth1 root netem {options}"]


def test_qdisc_unimpaired_link_needs_none():
    assert qdisc_commands("eth0", Impairment(), netem=True) == []
    assert qdisc_commands("eth0", Impairment(delay=0.01), netem=False) == []


def test_configs_leave_bandwidth_to_htb(tmp_path, monkeypatch):
    monkeypatch.setattr(backend_module, "netem_available", lambda: False)
    path = tmp_path / "bandwidth.yaml"
    source = (TOPOLOGIES / "figure1.yaml").read_text()
    path.write_text(source.replace("delay: 5ms", "delay: 5ms\n    bandwidth: 1Mbit", 1))

    configs = MininetBackend.write_configs(load_topology(path), tmp_path, 1, tmp_path)

    document = json.loads(configs["A"].read_text())
    egress = {link["name"]: link["egress"] for link in document["links"]}
    assert egress["A-B"]["bandwidth"] is None
    assert egress["A-B"]["delay"] == pytest.approx(0.005)
    assert document["bind"] == "0.0.0.0"
    assert document.get("emulate_links", True) is True
    assert all(link["capture"] is None for link in document["links"])


def test_configs_leave_everything_to_netem(tmp_path, monkeypatch):
    monkeypatch.setattr(backend_module, "netem_available", lambda: True)

    configs = MininetBackend.write_configs(figure1(), tmp_path, 1, tmp_path)

    document = json.loads(configs["A"].read_text())
    assert document["emulate_links"] is False


def test_configs_let_every_node_reach_cores(tmp_path):
    configs = MininetBackend.write_configs(figure1(), tmp_path, 1, tmp_path)

    host = json.loads(configs["h"].read_text())["peer_addresses"]
    core = json.loads(configs["C"].read_text())["peer_addresses"]
    # C's first link is B-C, the second link in the file
    assert host["C"] == "10.0.1.3"
    assert core["h"] == "10.0.3.3"
    assert set(core) == {"h", "h2", "A", "B", "init"}


def test_registered_as_mininet():
    assert get_backend("mininet") is MininetBackend


def test_unavailable_without_root(monkeypatch):
    monkeypatch.setattr(backend_module.os, "geteuid", lambda: 1000)

    with pytest.raises(ConfigError, match="needs root.*sudo"):
        MininetBackend.check_available()


def test_unavailable_without_mininet(monkeypatch):
    monkeypatch.setattr(backend_module, "Mininet", None)

    with pytest.raises(ConfigError, match="apt-get install --no-install-recommends "
                                          "mininet"):
        MininetBackend.check_available()


def test_unavailable_without_tcpdump(monkeypatch):
    which = shutil.which
    monkeypatch.setattr(backend_module.shutil, "which",
                        lambda tool: None if tool == "tcpdump" else which(tool))

    with pytest.raises(ConfigError, match="tcpdump is not on PATH"):
        MininetBackend.check_available()


def test_run_exits_2_when_unavailable(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backend_module.os, "geteuid", lambda: 1000)
    out = tmp_path / "run"

    code = main(["run", "-q", str(SCENARIOS / "figure1.yaml"), "--backend", "mininet",
                 "--out", str(out)])

    assert code == 2
    assert "needs root" in capsys.readouterr().err
    assert not out.exists()


# real networks, where root and Mininet are present


def require_mininet() -> None:
    try:
        MininetBackend.check_available()
    except ConfigError as error:
        require(False, str(error))


def snapshot() -> dict[str, set[str]]:
    """Return the root namespace's interfaces and the named namespaces."""
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True,
                           text=True, check=True).stdout
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    return {
        "interfaces": {line.split(":")[1].strip().split("@")[0]
                       for line in links.splitlines()},
        "netns": set(netns.split()),
    }


@pytest.fixture
def marker(monkeypatch) -> str:
    """Mark every process this test starts, through an environment variable.

    Other test runs may use Mininet at the same time, so a process counts as
    left behind only if it inherited this test's mark.
    """
    value = uuid.uuid4().hex
    monkeypatch.setenv("SMKD_TEST_RUN", value)
    return value


def marked_processes(marker: str) -> list[str]:
    needle = f"SMKD_TEST_RUN={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or entry.name == str(os.getpid()):
            continue
        try:
            environment = (entry / "environ").read_bytes()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in environment.split(b"\0"):
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def assert_nothing_left(before: dict[str, set[str]], marker: str) -> None:
    after = snapshot()
    new_interfaces = after["interfaces"] - before["interfaces"]
    assert not {i for i in new_interfaces if OUR_INTERFACES.fullmatch(i)}
    assert after["netns"] <= before["netns"]
    assert marked_processes(marker) == []


def run_scenario_file(scenario: Path, out: Path) -> int:
    return main(["run", "-q", str(scenario), "--backend", "mininet",
                 "--out", str(out)])


@pytest.mark.parametrize("name", ["figure1", "denied-host", "abilene"])
def test_scenario_passes(name, tmp_path, marker):
    require_mininet()
    before = snapshot()
    out = tmp_path / "run"

    code = run_scenario_file(SCENARIOS / f"{name}.yaml", out)

    summary = json.loads((out / "summary.json").read_text())
    failed = [e["detail"] for e in summary["expectations"] if not e["passed"]]
    assert code == 0, (summary["ready_error"], summary["action_errors"], failed)
    assert_nothing_left(before, marker)


# the test runs this scenario while scenarios/link-failure.yaml does not
# exist: Chicago's tree link to the core Indianapolis fails, and Chicago
# re-joins the tree through New York
ABILENE_LINK_FAILURE = """\
name: abilene-link-failure
description: a tree link on Abilene fails after the joins
topology: {topology}
seed: 1
duration: 8
timeline:
  - {{at: 0.0, action: join, node: h-New-York-1, group: G}}
  - {{at: 0.2, action: join, node: h-Chicago-1, group: G}}
  - {{at: 0.4, action: join, node: h-Seattle-1, group: G}}
  - {{at: 0.6, action: join, node: h-Denver-1, group: G}}
  - {{at: 3.0, action: link_down, link: Chicago-Indianapolis}}
expect:
  - {{type: event, event: rejoined, node: Chicago, min: 1}}
  - {{type: all_members_hold_key, group: G, within: 5}}
  - {{type: no_key_in_clear}}
"""


def test_link_failure_scenario_passes(tmp_path, marker):
    require_mininet()
    scenario = SCENARIOS / "link-failure.yaml"
    if not scenario.exists():
        scenario = tmp_path / "link-failure.yaml"
        topology = TOPOLOGIES / "abilene.yaml"
        scenario.write_text(ABILENE_LINK_FAILURE.format(topology=topology))
    before = snapshot()
    out = tmp_path / "run"

    code = run_scenario_file(scenario, out)

    summary = json.loads((out / "summary.json").read_text())
    failed = [e["detail"] for e in summary["expectations"] if not e["passed"]]
    assert code == 0, (summary["ready_error"], summary["action_errors"], failed)
    assert_nothing_left(before, marker)


FLAP = """\
name: flap
description: A-B goes down and up again; h2's agent restarts
topology: {topology}
seed: 1
timeline:
  - {{at: 0, action: link_down, link: A-B}}
  - {{at: 0.5, action: join, node: h, group: G}}
  - {{at: 2, action: link_up, link: A-B}}
  - {{at: 3, action: node_stop, node: h2}}
  - {{at: 3.5, action: node_start, node: h2}}
  - {{at: 4, action: join, node: h2, group: G}}
expect:
  - {{type: holds_key, node: h, group: G, within: 6}}
  - {{type: holds_key, node: h2, group: G, within: 3}}
  - {{type: no_key_in_clear}}
"""


@pytest.fixture(scope="module")
def flap_run(tmp_path_factory) -> tuple[int, Path, dict[str, set[str]], str]:
    require_mininet()
    directory = tmp_path_factory.mktemp("flap")
    scenario = directory / "flap.yaml"
    scenario.write_text(FLAP.format(topology=TOPOLOGIES / "figure1.yaml"))
    before = snapshot()
    out = directory / "run"
    mark = uuid.uuid4().hex
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SMKD_TEST_RUN", mark)
        code = run_scenario_file(scenario, out)
    return code, out, before, mark


def test_flap_passes(flap_run):
    code, out, _, _ = flap_run

    assert code == 0, (out / "summary.json").read_text()


def test_flap_key_waits_for_link_up(flap_run):
    _, out, _, _ = flap_run
    actions = [json.loads(line) for line in (out / "runner.jsonl").read_text()
               .splitlines()]
    link_up = next(a["t"] for a in actions if a.get("action") == "link_up")
    traces = [json.loads(line) for line in (out / "traces" / "h.jsonl").read_text()
              .splitlines()]
    installed = [e["t"] for e in traces if e["event"] == "key_installed"]

    assert installed
    assert installed[0] > link_up


def test_flap_restarts_agent_process(flap_run):
    _, out, _, _ = flap_run
    lines = (out / "traces" / "h2.jsonl").read_text().splitlines()
    starts = [line for line in lines if json.loads(line)["event"] == "agent_started"]

    assert len(starts) == 2
    assert (out / "logs" / "h2.log").stat().st_size > 0


def test_flap_captures_are_real_pcaps(flap_run):
    _, out, _, _ = flap_run
    for segment in ("A-B", "B-C", "init-C", "lan-A"):
        datagrams = read_pcap(out / "captures" / f"{segment}.pcap")

        assert datagrams, segment
        assert all(d.src.startswith("10.") for d in datagrams), segment
        assert all(d.dport == 7777 for d in datagrams), segment


def test_flap_summary_names_link_emulation(flap_run):
    _, out, _, _ = flap_run
    records = [json.loads(line) for line in (out / "runner.jsonl").read_text()
               .splitlines()]
    started = next(r for r in records if r["event"] == "started")

    assert started["backend"]["backend"] == "mininet"
    assert "htb" in started["backend"]["link_emulation"]


def test_flap_leaves_nothing(flap_run):
    _, _, before, mark = flap_run

    assert_nothing_left(before, mark)


@pytest.fixture
def prepared(tmp_path) -> MininetBackend:
    require_mininet()
    topology = figure1()
    run_dir = tmp_path / "run"
    (run_dir / "logs").mkdir(parents=True)
    prepare_pki(topology, run_dir)
    configs = MininetBackend.write_configs(topology, run_dir, 1, run_dir / "ctl")
    return MininetBackend(topology, run_dir, configs, run_dir / "ctl")


def test_backend_configures_namespaces(prepared, marker):
    before = snapshot()
    seen: dict[str, str] = {}

    async def exercise() -> None:
        await prepared.start()
        net = prepared.net
        seen["h addresses"] = net["h"].cmd("ip -o addr show dev eth0")
        seen["h routes"] = net["h"].cmd("ip route")
        seen["A forwarding"] = net["A"].cmd("sysctl -n net.ipv4.ip_forward")
        seen["h forwarding"] = net["h"].cmd("sysctl -n net.ipv4.ip_forward")
        seen["A mtu"] = net["A"].cmd("ip -o link show dev eth0")
        await prepared.set_link("A-B", up=False)
        seen["A-B down"] = net["B"].cmd("ip -o link show dev eth0")
        seen["A routes down"] = net["A"].cmd("ip route")
        await prepared.set_link("A-B", up=True)
        seen["A routes up"] = net["A"].cmd("ip route")
        await prepared.set_link("lan-A", impairment=Impairment(bandwidth=1_000_000))
        seen["h qdisc"] = net["h"].cmd("tc qdisc show dev eth0")
        await prepared.stop_node("h2")
        seen["h2 socket after stop"] = str((prepared.control_dir / "h2.sock").exists())
        await prepared.start_node("h2")
        seen["h2 status"] = json.dumps(await prepared.command("h2", {"cmd": "status"}))

    try:
        asyncio.run(exercise())
    finally:
        prepared.stop_now()

    assert "inet 10.0.3.3/24" in seen["h addresses"]
    assert "10.0.0.0/24 via 10.0.3.2 dev eth0 src 10.0.3.3" in seen["h routes"]
    assert seen["A forwarding"].strip() == "1"
    assert seen["h forwarding"].strip() == "0"
    assert "mtu 65000" in seen["A mtu"]
    assert ",UP" not in seen["A-B down"]
    assert "10.0.1.0/24" not in seen["A routes down"]
    assert "10.0.1.0/24 via 10.0.0.3 dev eth0 src 10.0.0.2" in seen["A routes up"]
    assert "qdisc htb 1: root" in seen["h qdisc"]
    assert seen["h2 socket after stop"] == "False"
    assert '"ok": true' in seen["h2 status"]
    assert_nothing_left(before, marker)


def test_failed_agent_cleans_up(prepared, marker):
    before = snapshot()
    prepared.configs["h"].write_text("{not json")

    try:
        with pytest.raises(ConfigError, match="agent h exited with status 2"):
            asyncio.run(prepared.start())
    finally:
        prepared.stop_now()

    assert_nothing_left(before, marker)


def test_interrupt_stops_everything(tmp_path, marker):
    require_mininet()
    before = snapshot()
    out = tmp_path / "run"
    code = (
        "import sys; from smkd.cli import main; "
        f"sys.exit(main(['run', {str(SCENARIOS / 'figure1.yaml')!r}, "
        f"'--backend', 'mininet', '--out', {str(out)!r}]))"
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert process.stdout is not None
    for line in process.stdout:
        if "join h G" in line:
            process.send_signal(signal.SIGINT)
            break
    output = line + process.communicate(timeout=60)[0]

    assert process.returncode == 130, output
    assert "interrupted" in output
    assert_nothing_left(before, marker)


CLI_COMMANDS = "smkd_join h G\nsh sleep 1\nsmkd_keys G\nsmkd_status init\nexit\n"


def test_topology_script_opens_cli(tmp_path, marker):
    require_mininet()
    before = snapshot()
    out = tmp_path / "run"
    command = [sys.executable, str(TOPOLOGIES / "mininet_topo.py"),
               str(TOPOLOGIES / "figure1.yaml"), "--run-dir", str(out)]

    result = subprocess.run(command, input=CLI_COMMANDS, capture_output=True,
                            text=True, timeout=120, check=False)

    assert result.returncode == 0, result.stderr
    assert "h: key_installed group=G epoch=1" in result.stdout
    assert '"accepted": true' in result.stdout
    assert_nothing_left(before, marker)


def test_mn_custom_opens_cli(tmp_path, marker):
    require_mininet()
    require(shutil.which("mn") is not None, "mn is not installed")
    before = snapshot()
    command = ["mn", "--custom", str(TOPOLOGIES / "mininet_topo.py"),
               "--topo", f"smkd,{TOPOLOGIES / 'figure1.yaml'}", "--controller", "none"]
    # mn runs Debian's python3, which finds smkd's packages through the venv
    environment = {**os.environ, "SMKD_VENV": str(Path(sys.prefix))}

    result = subprocess.run(command, input=CLI_COMMANDS, capture_output=True,
                            text=True, timeout=120, check=False, cwd=tmp_path,
                            env=environment)

    assert result.returncode == 0, result.stderr
    assert "h: key_installed group=G epoch=1" in result.stdout
    assert len(list((tmp_path / "runs").iterdir())) == 1
    assert_nothing_left(before, marker)
