"""gossipfl nodes across real NAT (gossipfl/scenario/natlab.py): two public members, one of them a
circuit relay v2 (``[relay] serve = true``), and two private members at two NATed sites
that reserve on it and announce only their relayed addresses. One private member is told so
(``reachable = "private"``); the other, and the public member, are not (``reachable = "auto"``):
they ask the relay to dial them back (gossipfl/gossip/dialback.py) and find out.

The e2e test runs real node processes (``python -m gossipfl node``) under ``ip netns exec`` (root,
iproute2, iptables; else it skips). Every node process has a hard timeout; the lab is gone
afterwards, which the test checks. The private sites' NAT answers unsolicited SYNs with a reset
(``drop_unsolicited=False``) and gives every connection a random public port (``random_ports``, a
"symmetric" NAT), so no hole punch can make a direct link between them (the private members run
DCUtR, ``hole_punch = true``, which tries and fails): the two private members can only exchange
through the relay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gossipfl.config_io import dump_toml
from gossipfl.crypto.identity import load_or_create_identity
from gossipfl.gossip.circuit import circuit_addr
from gossipfl.node.checkpoint import load_checkpoint
from gossipfl.scenario.natlab import NatPlan, nat_lab

ROOT = Path(__file__).resolve().parent.parent
PORT = 4001
ROUNDS = 4
NODE_TIMEOUT = 150  # seconds a node process may run (each is killed after it)


def _left_behind(plan: NatPlan) -> list[str]:
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                           check=True).stdout
    return [line for line in names.splitlines() if line.startswith(plan.prefix)]


def _node_config(index: int, folder: Path, listen: str, bootstrap: list[str],
                 relay: dict[str, Any]) -> dict[str, Any]:
    return {
        "federation": "natlab", "key_file": str(folder / "node.key"),
        "out_dir": str(folder), "listen": [listen], "bootstrap": bootstrap,
        "node_index": index, "node_count": 4, "expected_members": 4, "rounds": ROUNDS,
        "seed": 1, "keep_round_models": False,
        "data": {"dataset": "digits", "partition": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"optimizer": "momentum", "learning_rate": 0.05, "local_epochs": 2},
        "topology": {"kind": "full"},
        "protocol": {"round_timeout": 30.0, "heartbeat_interval": 0.5, "member_timeout": 8.0,
                     "consensus_tolerance": 1e-4, "max_consensus_rounds": 60},
        "relay": relay,
    }


def _await_listening(proc: subprocess.Popen[bytes], folder: Path) -> None:
    """Until the node writes node.json (it listens, its relay role serves), it exits, or
    NODE_TIMEOUT passes: a private member reserves on the relay once, as it starts, and gives
    up if the relay is not up yet (a loaded machine starts the relay's process late)."""
    for _ in range(int(NODE_TIMEOUT / 0.2)):
        if (folder / "node.json").exists() or proc.poll() is not None:
            return
        time.sleep(0.2)


def _run_nodes(plan: NatPlan, out: Path) -> list[Path]:
    """Relay (node 0) and a public member (node 1) on the public host, a private member at
    each site (nodes 2, 3); every process waited for (or killed) here."""
    public = plan.public_ip
    folders = [out / f"node-{i}" for i in range(4)]
    for folder in folders:
        folder.mkdir(parents=True)
    relay_id = load_or_create_identity(folders[0] / "node.key")[0].peer_id
    relay_addr = f"/ip4/{public}/tcp/{PORT}/p2p/{relay_id}"
    configs = [
        (plan.public, _node_config(0, folders[0], f"/ip4/{public}/tcp/{PORT}", [],
                                   {"serve": True, "circuit_bytes": 64 << 20})),
        # node 1 and node 3 are not told whether peers can dial them: they ask (dial-back)
        (plan.public, _node_config(1, folders[1], f"/ip4/{public}/tcp/{PORT + 1}",
                                   [relay_addr], {"reachable": "auto"})),
        *[(site.host, _node_config(2 + i, folders[2 + i], f"/ip4/{site.host_ip}/tcp/{PORT}",
                                   [relay_addr], {"reachable": ("private", "auto")[i],
                                                  "hole_punch": True}))
          for i, site in enumerate(plan.sites)],
    ]
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    procs = []
    try:
        for namespace, config in configs:
            folder = Path(config["out_dir"])
            (folder / "node.toml").write_text(dump_toml(config))
            with open(folder / "stderr.txt", "wb") as err:
                procs.append(subprocess.Popen(
                    ["ip", "netns", "exec", namespace, "timeout", "-k", "5", str(NODE_TIMEOUT),
                     sys.executable, "-m", "gossipfl", "node", "--config",
                     str(folder / "node.toml"), "--log-level", "INFO"],
                    stdout=subprocess.DEVNULL, stderr=err, env=env))
            if len(procs) == 1:  # the relay serves before a private member tries to reserve
                _await_listening(procs[0], folder)
        for proc in procs:
            proc.wait(timeout=NODE_TIMEOUT + 20)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return folders


def _read(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    assert path.exists(), f"{path} missing; stderr: {(folder / 'stderr.txt').read_text()[-3000:]}"
    return json.loads(path.read_text())


@pytest.mark.e2e
def test_private_members_behind_nat_learn_with_public_ones_through_a_relay(
        can_make_nat: None, tmp_path: Path) -> None:
    with nat_lab(2, drop_unsolicited=False, random_ports=True) as plan:
        folders = _run_nodes(plan, tmp_path)
    assert _left_behind(plan) == []
    summaries = [_read(f, "summary.json") for f in folders]
    relays = [_read(f, "relay.json") for f in folders]
    infos = [_read(f, "node.json") for f in folders]
    ids = [s["peer_id"] for s in summaries]
    assert [s["status"] for s in summaries] == ["done"] * 4
    assert min(s["final_accuracy"] for s in summaries) > 0.8
    # one model: the final estimates agree
    finals = [load_checkpoint(f / "final.npz").model for f in folders]
    assert max(float(np.max(np.abs(p - finals[0]))) for p in finals) < 1e-3
    # the members that asked were found as they are: node 1 public (the relay's dial-back
    # arrived), node 3 private (its NAT let no dial-back in); the relay answered both
    assert relays[1]["reachable"] == "public" and relays[1]["dialback"] == {ids[0]: "dialled"}
    assert relays[1]["reserved_on"] == []
    assert infos[1]["addrs"] == [f"/ip4/{plan.public_ip}/tcp/{PORT + 1}/p2p/{ids[1]}"]
    assert relays[3]["reachable"] == "private" and relays[3]["dialback"] == {ids[0]: "failed"}
    assert relays[0]["dialbacks_answered"] == {"dialled": 1, "failed": 1, "refused": 0}
    # each private member reserved on the relay and announced (signed) its relayed address only
    relay_addr = f"/ip4/{plan.public_ip}/tcp/{PORT}/p2p/{ids[0]}"
    for i in (2, 3):
        assert relays[i]["reserved_on"] == [ids[0]]
        assert infos[i]["addrs"] == [circuit_addr(relay_addr, ids[i])]
    # the private members exchanged with each other through the relay (their NATs let no
    # direct connection in), and the relay carried bytes for them
    for me, other in ((2, 3), (3, 2)):
        assert relays[me]["link_streams"][ids[other]].get("relayed", 0) > 0
        assert relays[me]["link_streams"][ids[other]].get("direct", 0) == 0
        # DCUtR tried (where it had finished an attempt by the end) and failed: symmetric NATs
        assert relays[me]["hole_punch"].get(ids[other]) in (None, False)
    assert relays[0]["serve"] is True and relays[0]["relayed_bytes"] > 0
    assert relays[0]["reservations_held"] == 2
    # every member counted the others as neighbours (full topology): no one trained alone; and
    # noted when it first exchanged with each (seconds from its start: time to first contact)
    for i, summary in enumerate(summaries):
        assert set(summary["neighbours"]) == set(ids) - {ids[i]}
        assert set(ids) - {ids[i]} <= set(relays[i]["first_contact"])
        assert all(relays[i]["first_contact"][p] >= 0 for p in set(ids) - {ids[i]})
