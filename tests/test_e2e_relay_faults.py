"""End to end across real NAT: a public relay that tampers with, or drops, what it relays,
through ``gossipfl run``. A ``[[sites]]`` scenario of 4 nodes at 2 private sites and 2 public
relays; relay 0 (the one every node announces first, so every cross-site link starts through
it) stays up but, once the furthest node finished round 2, flips a bit in every chunk it
relays (``tamper``) or forwards nothing while keeping its connections open (``drop``). Runs as
root with iproute2 and iptables, else skips.

What it checks: the relay did misbehave (its relay.json counts the chunks it altered or
swallowed); the nodes caught it (each counts relayed links through relay 0 that failed: Noise
refused the altered bytes, or a silent circuit was closed, ``silent_links_closed``; none
through relay 1); they re-linked through relay 1, which carried the cross-site traffic; every
node finished and learned, kept its three neighbours, none finished without another, and they
hold one model (consensus), their own checks refused no contribution for its content (only,
at times, for its timing): no altered byte got past Noise, let alone into a model. The
re-link time is printed (`-s -p no:xdist`), not asserted.

Timing: as tests/test_e2e_sites.py: the fault is tied to round 2 of 15 (the runner's first
look that sees round 2 sends it), and a node does not finish while a neighbour it wants is
missing, so the cross-site links must be re-made for the run to end."""

from __future__ import annotations

import json
import math
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from e2e_scenarios import BASE, TWO_SITES, run_text

from gossipfl.scenario.netns import run_tag

pytestmark = pytest.mark.e2e

# the reasons a node refuses a contribution for when it came, not for what it holds
TIMING_REFUSALS = {"stale", "future", "not_neighbour", "in_flight"}


def _node_relay_files(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("nodes/node-*/relay.json"))]


def _relink_seconds(out: Path, since: float, relay: str) -> float | None:
    """Seconds from the relay's misbehaving (``since``, its clock) to the last relayed link a
    node made through ``relay`` (their logs): the re-link time, printed (not asserted)."""
    day = datetime.fromtimestamp(since)
    last = None
    for log in out.glob("nodes/node-*/node.log"):
        for line in log.read_text().splitlines():
            found = re.match(r"(\d\d):(\d\d):(\d\d\.\d+) .* linked to \S+ through .*" + relay,
                             line)
            if found:
                hour, minute, second = found.groups()
                at = day.replace(hour=int(hour), minute=int(minute), second=0,
                                 microsecond=0).timestamp() + float(second)
                last = at if last is None else max(last, at)
    return None if last is None or last < since else round(last - since, 2)


@pytest.mark.parametrize("kind", ["tamper", "drop"])
def test_a_misbehaving_relay_breaks_links_and_changes_no_model(
        kind: str,
        tmp_path: Path, can_make_nat: None) -> None:
    text = BASE.format(name="e2etamper", nodes=4, rounds=15, topology="full", degree=3,
                       round_timeout=20.0) + TWO_SITES.format(kind=kind)
    code, report = run_text(tmp_path, text)
    out = tmp_path / "out"
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                          check=True).stdout
    assert f"gfl-nat-{run_tag(out)}-" not in left  # the lab is gone
    assert code == 0
    nodes = report["nodes"]
    assert [n["status"] for n in nodes] == ["done"] * 4
    accuracies = [n["final_accuracy"] for n in nodes]
    assert all(math.isfinite(a) for a in accuracies) and min(accuracies) > 0.8
    assert max(accuracies) - min(accuracies) <= 0.02  # one model, within a point or two
    assert report["final_consensus_distance"] <= 1e-3
    assert report["summary"]["isolated_nodes"] == []
    # nothing altered got past Noise: the nodes' own checks refused no contribution for its
    # content (envelope, signature, frame, layout); only for its timing, as after any re-link
    # (a round's contribution arriving late: stale, or from a peer dropped meanwhile)
    refused = {key for n in nodes for key in n["rejected"]}
    assert refused <= TIMING_REFUSALS, [n["rejected"] for n in nodes]
    section = report["sites"]
    first, second = section["relays"]
    # relay 0 stayed up and tampered from round 2 on
    assert first["down"] is None and first["misbehaving"]["kind"] == kind
    assert first["misbehaving"]["max_round"] >= 2
    assert first[{"tamper": "tampered_chunks", "drop": "dropped_chunks"}[kind]] > 0
    assert second["misbehaving"] is None and second["relayed_bytes"] > 0
    relay0, relay1 = (r["addr"].rsplit("/p2p/", 1)[1] for r in (first, second))
    # caught at the nodes: every cross-site link through relay 0 broke, and at least one end
    # of each counted a relayed link through relay 0 that failed (Noise refused the altered
    # handshake, or a circuit stayed silent and was closed; the other end may just have been
    # re-dialled through relay 1), none through relay 1
    files = _node_relay_files(out)
    assert len(files) == 4
    failures = [d["relay_failures"] for d in files]
    for a, b in ((0, 2), (0, 3), (1, 2), (1, 3)):
        assert failures[a].get(relay0, 0) + failures[b].get(relay0, 0) > 0, (a, b, failures)
    assert all(relay1 not in f for f in failures), failures
    if kind == "drop":
        assert sum(d["silent_links_closed"] for d in files) > 0
    print(f"{kind}: re-linked in {_relink_seconds(out, first['misbehaving_since'], relay1)} s; "
          f"relay 0 {first}\nrelay 1 {second}\nnodes "
          f"{[(d['relay_failures'], d['silent_links_closed'], d['relayed_dials']) for d in files]}")
    # every node kept its three neighbours to the end (full topology): none finished without
    # the other site
    assert all(len(n["neighbours"]) == 3 for n in nodes)
    assert report["summary"]["finished_without"] == {}
    # the report gives each link's time to first contact, at each end (seconds from its start)
    for n in nodes:
        assert set(n["first_contact"]) == {str(j) for j in range(4)} - {str(n["index"])}
        assert set(n["handshake_failures"]) == {"inbound", "outbound"}
    print(f"{kind}: handshake failures {[n['handshake_failures'] for n in nodes]}")
    for link in section["links"]:
        assert set(link["first_contact_seconds"]) == {str(i) for i in link["nodes"]}
