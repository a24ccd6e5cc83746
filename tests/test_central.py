"""Tests of the central KDC policy: the primary core keys every joining host.

RFC 1949 section 4 describes the central key distribution centre that its
distributed GKDCs replace. smkd runs it as a group policy, so that the two can
be measured on the same network.
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import pytest
from harness import (
    GROUP_ADDRESS,
    Delivery,
    Network,
    Spec,
    build,
    figure1_spec,
    make_acl,
)

from node.config import load_agent_config
from node.documents import GroupAcl
from node.errors import MalformedMessage
from node.messages import MessageType as T
from smkd.configs import write_node_configs
from smkd.model import ValidationError, load_topology


@pytest.fixture(scope="module")
def pki_dirs() -> dict[tuple, Path]:
    """PKI directories by node set, so that each set's keys are made once."""
    return {}


@pytest.fixture
def network(pki_dirs, tmp_path_factory):
    """Build a central-KDC network (Figure 1 unless a spec is given) with its ACL."""

    def make(spec: Spec | None = None, **changes) -> Network:
        if spec is None:
            spec = figure1_spec(central=True, **changes)
        key = tuple(sorted(spec.roles.items()))
        if key not in pki_dirs:
            pki_dirs[key] = tmp_path_factory.mktemp("pki-central")
        net = build(spec, pki_dirs[key])
        net.run()
        return net

    return make


def join(net: Network, host: str) -> None:
    net.machines[host].join("G", net.now)
    net.run()


def delivered(
    net: Network, message_type: T, source: str | None = None,
    destination: str | None = None,
) -> list[Delivery]:
    """Return the deliveries of one message type, optionally on one hop."""
    return [
        delivery for delivery in net.deliveries
        if delivery.message.header.type is message_type
        and source in (None, delivery.source)
        and destination in (None, delivery.destination)
    ]


def secondary_core_spec(**changes) -> Spec:
    """h behind DR A, then the secondary core S, then the primary core C."""
    spec = Spec(
        roles={"h": "host", "h2": "host", "A": "router", "S": "core", "C": "core",
               "init": "initiator"},
        links=[("h", "A"), ("h2", "A"), ("A", "S"), ("S", "C"), ("init", "C")],
        cores=("C", "S"),
        central=True,
    )
    return dataclasses.replace(spec, **changes)


# the ACL document


def test_central_acl_round_trip():
    acl = dataclasses.replace(make_acl(figure1_spec()), central=True)

    decoded = GroupAcl.decode(acl.encode())

    assert decoded == acl
    assert decoded.central is True


def test_central_flag_is_last_byte():
    plain = make_acl(figure1_spec())
    central = dataclasses.replace(plain, central=True)

    assert central.encode()[:-1] == plain.encode()[:-1]
    assert plain.encode()[-1] == 0
    assert central.encode()[-1] == 1


def test_bad_central_flag_is_malformed():
    body = bytearray(make_acl(figure1_spec()).encode())
    body[-1] = 2

    with pytest.raises(MalformedMessage, match="neither 0 nor 1"):
        GroupAcl.decode(bytes(body))


def test_acl_without_central_flag_is_malformed():
    body = make_acl(figure1_spec()).encode()[:-1]

    with pytest.raises(MalformedMessage):
        GroupAcl.decode(body)


def test_central_acl_lets_no_router_hold_keys():
    acl = dataclasses.replace(
        make_acl(figure1_spec()), central=True, trusted_routers=("A", "C")
    )

    assert not acl.may_hold_keys("A", "router")
    assert not acl.may_hold_keys("C", "core")
    assert not acl.may_hold_keys("S", "core")


# joins under a central KDC


def test_central_join_walks_to_primary_core(network):
    net = network()

    join(net, "h")

    assert net.flow()[2:] == [
        ("h", "A", "MEMBERSHIP_REPORT"),
        ("A", "B", "JOIN_REQUEST"),
        ("B", "C", "JOIN_REQUEST"),
        ("C", "B", "JOIN_ACK"),
        ("B", "A", "JOIN_ACK"),
        ("A", "h", "KEY_DELIVERY"),
    ]
    assert net.machines["h"].holds_key("G")


def test_central_acks_carry_no_hop_bundle(network):
    net = network()

    join(net, "h")

    acks = delivered(net, T.JOIN_ACK)
    assert len(acks) == 2
    for ack in acks:
        assert ack.message.hop_bundle is None


def test_central_routers_stay_without_keys(network):
    net = network()

    join(net, "h")

    for name in ("A", "B"):
        router = net.machines[name]
        state = router.groups[GROUP_ADDRESS]
        assert state.on_tree
        assert not router.holds_keys("G")
        assert not router.is_gkdc(state)
        assert not net.trace(name, "became_gkdc")
    core = net.machines["C"]
    assert core.is_gkdc(core.groups[GROUP_ADDRESS])


def test_central_second_join_reaches_core(network):
    net = network()
    join(net, "h")
    before = len(net.deliveries)

    join(net, "h2")

    assert net.flow()[before:] == [
        ("h2", "A", "MEMBERSHIP_REPORT"),
        ("A", "B", "JOIN_REQUEST"),
        ("B", "C", "JOIN_REQUEST"),
        ("C", "B", "JOIN_ACK"),
        ("B", "A", "JOIN_ACK"),
        ("A", "h2", "KEY_DELIVERY"),
    ]
    assert net.machines["h2"].holds_key("G")


def test_central_core_authenticates_every_host(network):
    net = network()

    join(net, "h")
    join(net, "h2")

    verified = [e.fields["host"] for e in net.trace("C", "token_verified")]
    served = [e.fields["host"] for e in net.trace("C", "served")]
    assert verified == ["h", "h2"]
    assert served == ["h", "h2"]


def test_central_hosts_share_core_key(network):
    net = network()

    join(net, "h")
    join(net, "h2")

    created = net.trace("C", "keys_created")[0].fields
    for host in ("h", "h2"):
        installed = net.trace(host, "key_installed")[0].fields
        assert installed["group_key_fp"] == created["group_key_fp"]
        assert installed["spi"] == created["spi"]


def test_central_denied_host_nacked_by_core(network):
    net = network()

    join(net, "h9")

    assert delivered(net, T.JOIN_NACK, "C", "B")
    assert delivered(net, T.JOIN_NACK, "B", "A")
    denied = net.trace("A", "join_denied")
    assert [e.fields["host"] for e in denied] == ["h9"]
    assert denied[0].fields["reason"] == "not-on-acl"
    assert not net.machines["h9"].holds_key("G")


def test_central_overrides_trusted_routers(network):
    net = network(trusted_routers=("A", "B", "C"))

    join(net, "h")

    assert not net.machines["A"].holds_keys("G")
    assert not net.machines["B"].holds_keys("G")
    assert net.machines["h"].holds_key("G")


def test_central_overrides_strict_mode(network):
    net = network(secondary_core_spec(strict=True))

    join(net, "h")

    assert not net.machines["S"].holds_keys("G")
    assert net.machines["h"].holds_key("G")


def test_central_secondary_core_forwards_every_join(network):
    net = network(secondary_core_spec())
    join(net, "h")
    before = len(net.deliveries)

    join(net, "h2")

    assert net.flow()[before:] == [
        ("h2", "A", "MEMBERSHIP_REPORT"),
        ("A", "S", "JOIN_REQUEST"),
        ("S", "C", "JOIN_REQUEST"),
        ("C", "S", "JOIN_ACK"),
        ("S", "A", "JOIN_ACK"),
        ("A", "h2", "KEY_DELIVERY"),
    ]
    assert not net.machines["S"].holds_keys("G")
    assert net.machines["h2"].holds_key("G")


def test_distributed_primary_core_still_gkdc(network):
    # the primary core serves joins even when the trusted-router ACL omits it
    net = network(figure1_spec(trusted_routers=("A",)))

    join(net, "h")

    core = net.machines["C"]
    assert core.is_gkdc(core.groups[GROUP_ADDRESS])
    assert net.machines["A"].holds_keys("G")
    assert net.machines["h"].holds_key("G")


# the topology file and the agent config

TOPOLOGY = textwrap.dedent(
    """\
    name: central
    nodes:
      h: {role: host}
      A: {role: router}
      C: {role: core}
      init: {role: initiator}
    links:
      - between: [h, A]
      - between: [A, C]
      - between: [init, C]
    groups:
      - name: G
        address: 239.1.1.1
        cores: [C]
        initiator: init
        acl: {mode: include, hosts: [h]}
    """
)


def write_topology(directory: Path, extra: str = "") -> Path:
    path = directory / "central.yaml"
    path.write_text(TOPOLOGY + extra)
    return path


def test_model_central_defaults_false(tmp_path):
    topology = load_topology(write_topology(tmp_path))

    assert topology.groups["G"].central is False


def test_model_reads_central_true(tmp_path):
    topology = load_topology(write_topology(tmp_path, "    central: true\n"))

    assert topology.groups["G"].central is True


def test_model_rejects_bad_central_value(tmp_path):
    path = write_topology(tmp_path, "    central: maybe\n")

    with pytest.raises(ValidationError) as raised:
        load_topology(path)

    messages = [str(problem) for problem in raised.value.problems]
    assert len(messages) == 1
    assert "groups[0].central" in messages[0]
    assert "expected true or false" in messages[0]
    assert ":17:" in messages[0]


def test_initiator_config_carries_central(tmp_path):
    topology = load_topology(write_topology(tmp_path, "    central: true\n"))

    paths = write_node_configs(topology, tmp_path, seed=1, control_dir=tmp_path)

    document = json.loads(paths["init"].read_text())
    assert document["groups"][0]["acl"]["central"] is True
    acl = load_agent_config(paths["init"]).node.groups[0].acl
    assert acl is not None
    assert acl.central is True
    host = load_agent_config(paths["h"]).node.groups[0]
    assert host.acl is None


def test_agent_config_without_central_is_distributed(tmp_path):
    topology = load_topology(write_topology(tmp_path))
    paths = write_node_configs(topology, tmp_path, seed=1, control_dir=tmp_path)
    document = json.loads(paths["init"].read_text())
    del document["groups"][0]["acl"]["central"]
    paths["init"].write_text(json.dumps(document))

    acl = load_agent_config(paths["init"]).node.groups[0].acl

    assert acl is not None
    assert acl.central is False
