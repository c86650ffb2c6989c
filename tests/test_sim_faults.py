"""Faults on the simulator: every node of a small scenario is the real ``Node.run`` over the
in-memory network, in virtual time (``gossipfl simulate``), so each fault the end-to-end suite
used to test with real processes is tested here deterministically, in well under a second:
kill, terminate, restart, pause, late joins, the replacement of a departed neighbour,
partitions (resetting and silent) and their heal, slow links, async mode with a slow node,
secure aggregation through a kill, and the DP budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sim_scenarios import metrics, node_dir, node_log, scenario_text, simulated


def statuses(report: dict[str, Any]) -> list[str]:
    return [n["status"] for n in report["nodes"]]


def min_accuracy(nodes: list[dict[str, Any]]) -> float:
    return min(n["final_accuracy"] for n in nodes)


def dropped(node: dict[str, Any]) -> set[str]:
    return {d["peer_id"] for d in node["dropped_neighbours"]}


def test_a_killed_node_is_timed_out_and_the_others_finish(tmp_path: Path, pool) -> None:
    text = scenario_text(name="kill", nodes=4, rounds=12, topology="ring", degree=2,
                         extra='[[faults]]\nkind = "kill"\nnode = 1\nat_round = 2\n')
    report = simulated(tmp_path, text, pool)
    nodes = report["nodes"]
    assert statuses(report) == ["done", "killed", "done", "done"]
    assert nodes[1]["events"] == ["killed after round 2"]
    assert nodes[1]["rounds_completed"] == 3 and nodes[1]["exit_code"] == -9
    survivors = [n for i, n in enumerate(nodes) if i != 1]
    assert all(n["rounds_completed"] >= 12 for n in survivors)
    assert min_accuracy(survivors) > 0.8
    assert report["final_consensus_distance"] <= 1e-3
    # the killed node's two ring neighbours noticed and dropped it
    drops = [d["peer_id"] for n in survivors for d in n["dropped_neighbours"]]
    assert drops == [nodes[1]["peer_id"]] * 2


def test_a_terminated_node_stops_cleanly_with_a_checkpoint_and_the_others_finish(
        tmp_path: Path, pool) -> None:
    from gossipfl.node.checkpoint import load_checkpoint

    text = scenario_text(name="terminate", nodes=3, rounds=10, degree=2,
                         extra='[[faults]]\nkind = "terminate"\nnode = 2\nat_round = 2\n')
    report = simulated(tmp_path, text, pool)
    stopped, others = report["nodes"][2], report["nodes"][:2]
    assert stopped["status"] == "stopped" and stopped["exit_code"] == 0
    assert stopped["events"] == ["stopped after round 2"]
    # the stopped node wrote a checkpoint at the round it had reached
    state = load_checkpoint(node_dir(tmp_path, 2) / "checkpoint.npz")
    assert state.round == 2 and state.meta["status"] == "stopped"
    assert state.model.dtype.name == "float32" and state.model.size > 0
    assert state.public is not None and state.public.shape == state.model.shape
    assert [n["status"] for n in others] == ["done", "done"]
    assert min_accuracy(others) > 0.8
    # the two that went on dropped it, and only it
    assert [dropped(n) for n in others] == [{stopped["peer_id"]}] * 2


RESTART = scenario_text(name="restart", nodes=4, rounds=16, round_timeout=5.0,
                        extra='[[faults]]\nkind = "restart"\nnode = 2\nat_round = 4\n'
                              'down_seconds = 0.5\n')


def test_a_node_killed_and_restarted_resumes_and_rejoins(tmp_path: Path, pool) -> None:
    report = simulated(tmp_path, RESTART, pool)
    nodes = report["nodes"]
    assert statuses(report) == ["done"] * 4
    restarted = nodes[2]
    assert restarted["restarts"] == 1 and restarted["resumed_from"] == 4
    assert restarted["events"] == ["killed after round 4", "restarted (after round 4)"]
    # it resumed from its checkpoint, then jumped to where its neighbours were
    [catch_up] = restarted["catch_ups"]
    assert catch_up["why"] == "restart" and catch_up["from_round"] == 4
    assert catch_up["to_round"] > 4 + 2 and catch_up["neighbours"] == 3
    log = node_log(tmp_path, 2)
    assert "resuming from the checkpoint of round 4" in log and "caught up from 3" in log
    for index in (0, 1, 3):
        assert "rejoined after a restart" in node_log(tmp_path, index)
        assert restarted["peer_id"] in nodes[index]["neighbours"]  # linked again
    assert restarted["rounds_completed"] < nodes[0]["rounds_completed"]
    assert min_accuracy(nodes) > 0.8
    assert report["final_consensus_distance"] <= 1e-3


PAUSE = scenario_text(name="pause", nodes=5, rounds=30, degree=4, round_timeout=1.5,
                      protocol="request_timeout = 1.5\nrelink_interval = 1.0\n",
                      extra='[[faults]]\nkind = "pause"\nnode = 2\nat_round = 4\n'
                            'down_seconds = 3.0\n')


def test_a_paused_node_is_dropped_then_relinked_and_catches_up(tmp_path: Path, pool) -> None:
    """Cut off and frozen for longer than its neighbours wait: they drop it and go on; back,
    it is linked again (no restart) and jumps to their round by pulling their state, instead
    of dragging the average back from where it stopped."""
    report = simulated(tmp_path, PAUSE, pool)
    nodes = report["nodes"]
    assert statuses(report) == ["done"] * 5
    paused = nodes[2]
    assert paused["events"] == ["paused after round 4", "resumed (paused after round 4)"]
    assert paused["restarts"] == 0 and paused["resumed_from"] is None
    # the others stopped waiting for it (dropped it) ...
    others = [n for n in nodes if n is not paused]
    assert all(dropped(n) == {paused["peer_id"]} for n in others)
    # ... and took it back; it caught up by jumping ahead, not by replaying what it missed
    assert all(n["relinks"] == 1 and paused["peer_id"] in n["neighbours"] for n in others)
    assert paused["relinks"] + paused["rejoins_served"] >= 4
    [jump] = paused["catch_ups"]
    assert jump["why"] == "behind" and jump["to_round"] > jump["from_round"] + 2
    assert paused["rounds_completed"] < nodes[0]["rounds_completed"]
    assert min_accuracy(nodes) > 0.8
    assert report["final_consensus_distance"] <= 1e-3


def test_late_joiners_link_pull_the_model_and_finish_with_the_others(tmp_path: Path,
                                                                    pool) -> None:
    text = scenario_text(name="late", nodes=6, rounds=20, topology="regular", degree=2,
                         round_timeout=5.0,
                         extra="[[joins]]\nnode = 5\nat_round = 3\n\n"
                               "[[joins]]\nnode = 2\nat_round = 6\n")
    report = simulated(tmp_path, text, pool)
    nodes = report["nodes"]
    assert statuses(report) == ["done"] * 6
    for index, at_round in ((2, 6), (5, 3)):
        late = nodes[index]
        assert late["joined_late"]
        assert late["events"] == [f"joined late (federation at round {at_round})"]
        assert len(late["neighbours"]) >= 1
        # it started from the federation's round and model, not from round 0
        [catch_up] = late["catch_ups"]
        assert catch_up["why"] == "late" and catch_up["to_round"] > at_round
        assert late["rounds_completed"] < nodes[0]["rounds_completed"]
        # and the members that took it count it among their neighbours
        assert any(late["peer_id"] in n["neighbours"] for n in nodes if n is not late)
    assert all(not n["joined_late"] for i, n in enumerate(nodes) if i not in (2, 5))
    assert min_accuracy(nodes) > 0.8
    assert report["final_consensus_distance"] <= 1e-3


def test_neighbours_of_a_node_gone_for_good_link_with_others_instead(tmp_path: Path,
                                                                    pool) -> None:
    """A node leaves for good: once the membership forgets it (silent for member_timeout), each
    of its ring neighbours, now one short of its degree, asks another running member for a link
    (unless one has asked it first), and the federation still converges."""
    text = scenario_text(name="replace", nodes=5, rounds=30, topology="ring", degree=2,
                         round_timeout=1.5,
                         protocol="request_timeout = 1.5\nrelink_interval = 0.5\n",
                         extra='[[faults]]\nkind = "kill"\nnode = 1\nat_round = 3\n')
    text = text.replace("member_timeout = 5.0", "member_timeout = 3.0")
    report = simulated(tmp_path, text, pool)
    nodes = report["nodes"]
    gone = nodes[1]["peer_id"]
    survivors = [n for n in nodes if n["index"] != 1]
    assert [n["status"] for n in survivors] == ["done"] * 4
    # its two ring neighbours (the ring is laid over the sorted peer ids) dropped it ...
    bereft = [n for n in survivors if gone in dropped(n)]
    assert len(bereft) == 2
    # ... and made up for it: each asked another running member for a link
    made = [(n, r) for n in survivors for r in n["replacements"]]
    assert made and all(n in bereft for n, _ in made)
    for node, replacement in made:
        assert replacement["replacing"] == [gone]
        assert replacement["peer_id"] in {n["peer_id"] for n in survivors} - {node["peer_id"]}
        # linked for real, on both ends, and still at the end
        assert replacement["peer_id"] in node["neighbours"]
        other = next(n for n in nodes if n["peer_id"] == replacement["peer_id"])
        assert node["peer_id"] in other["neighbours"]
    # each is back at its degree
    assert all(len(n["neighbours"]) >= 2 for n in bereft)
    assert min_accuracy(survivors) > 0.8
    assert report["final_consensus_distance"] <= 1e-3


def partition_text(*, silent: bool) -> str:
    return scenario_text(
        name="partition", nodes=4, rounds=25, round_timeout=2.0,
        protocol="request_timeout = 5.0\nmax_missed_rounds = 2\nrelink_interval = 0.5\n",
        extra="[[partitions]]\ngroups = [[0, 1], [2, 3]]\nat_round = 3\nheal_round = 12\n"
              f"silent = {str(silent).lower()}\n")


@pytest.mark.parametrize("silent", [False, True], ids=["resetting", "silent"])
def test_a_partition_cuts_the_links_between_its_halves_and_heals(tmp_path: Path, pool,
                                                                silent: bool) -> None:
    report = simulated(tmp_path, partition_text(silent=silent), pool)
    nodes = report["nodes"]
    assert statuses(report) == ["done"] * 4
    assert min_accuracy(nodes) > 0.8

    [partition] = report["network"]["partitions"]
    assert [e["event"] for e in report["network"]["events"]] == ["cut", "heal"]
    assert partition["cut"]["max_round"] == 3 and partition["healed"]["max_round"] == 12
    cut = partition["while_cut"]
    if silent:  # nothing refused, nothing reset: only the nodes' timeouts told them
        assert cut["refused"] == 0 and cut["resets"] == 0
    else:  # the streams open at the cut were reset, and the nodes' redials refused
        assert cut["resets"] >= 1 and cut["refused"] >= 1 and cut["accepted"] == 0
    # the nodes felt it: each dropped its two neighbours across the cut, and only those
    peers = [n["peer_id"] for n in nodes]
    for node in nodes:
        across = {peers[j] for j in range(4) if (j < 2) != (node["index"] < 2)}
        assert dropped(node) == across, node["index"]
    links = partition["cross_links_by_round"]
    assert links[0] == 4  # full topology: 2 × 2 links across before the cut
    assert 0 in links[partition["cut"]["max_round"]:partition["healed"]["max_round"]]
    # healed: the lost neighbours were asked back and linked afresh, and the two halves'
    # models merged into one
    assert partition["rejoined"] and links[-1] == 4
    assert partition["after_heal"]["accepted"] >= 1
    # each of the 4 links across was linked again by one of its ends (which one asks first
    # depends on the phases of their heartbeats), no node more than its 2 lost ones
    assert sum(n["relinks"] for n in nodes) >= 4 and all(n["relinks"] <= 2 for n in nodes)
    assert report["final_consensus_distance"] <= 1e-3


def test_a_federation_over_slow_jittery_links_still_converges(tmp_path: Path, pool) -> None:
    text = scenario_text(name="links", nodes=4, rounds=10, round_timeout=10.0,
                         extra="[[links]]\nnodes_a = [0, 1]\nnodes_b = [2, 3]\n"
                               "latency = 0.02\njitter = 0.01\n")
    report = simulated(tmp_path, text, pool)
    nodes = report["nodes"]
    assert statuses(report) == ["done"] * 4
    assert min_accuracy(nodes) > 0.8
    assert report["final_consensus_distance"] <= 1e-3
    assert all(n["timeouts"] == 0 and not n["dropped_neighbours"] for n in nodes)
    # each node sends across the slow links every round: its contribution there waits
    # 0.02 ± 0.01 s; the round goes on without its ack (read in the background), unless the
    # last round's ack is still on its way back (another 0.02 ± 0.01 s at most)
    for index in range(4):
        sends = [r["send_seconds"] for r in metrics(tmp_path, index)]
        assert all(0.01 <= s <= 0.06 for s in sends), (index, sends)


def test_async_mode_does_not_hold_the_federation_to_its_slowest_node(tmp_path: Path,
                                                                    pool) -> None:
    text = scenario_text(name="async", nodes=4, rounds=12, round_timeout=5.0,
                         protocol='mode = "async"\nstaleness_decay = 0.9\nmax_lead = 1\n'
                                  "pace = true\npace_min_epochs = 0.5\n",
                         extra="[[slow]]\nnode = 3\nfactor = 8.0\n")
    report = simulated(tmp_path, text, pool)
    nodes = report["nodes"]
    assert statuses(report) == ["done"] * 4
    assert report["final_consensus_distance"] <= 1e-3

    def training_rounds(index: int) -> list[dict[str, Any]]:
        return [r for r in metrics(tmp_path, index) if r["phase"] == "train"]

    # the fast nodes did not wait for the slow one's first round (8x slower): it joined late,
    # taking up the round its neighbours were in, so it trained fewer rounds than any of them
    assert [len(training_rounds(i)) for i in range(3)] == [12, 12, 12]
    assert len(training_rounds(3)) < 12
    assert "joined late" in node_log(tmp_path, 3)
    assert not any("joined late" in node_log(tmp_path, i) for i in range(3))
    # paced local work: never more than the configured epoch, never less than the minimum,
    # and the slow node did less than a whole epoch in some round
    work = {i: [r["local_epochs"] for r in training_rounds(i)] for i in range(4)}
    assert all(0.5 <= w <= 1 for ws in work.values() for w in ws)
    assert min(work[3]) < 1
    assert min_accuracy(nodes) > 0.7


def test_secure_aggregation_with_a_member_killed_mid_run(tmp_path: Path, pool) -> None:
    text = scenario_text(name="secagg", nodes=5, rounds=8, degree=4,
                         extra="[secagg]\nenabled = true\nmin_contributors = 3\n\n"
                               '[[faults]]\nkind = "kill"\nnode = 4\nat_round = 3\n')
    report = simulated(tmp_path, text, pool)
    survivors = report["nodes"][:4]
    assert statuses(report) == ["done"] * 4 + ["killed"]
    assert min_accuracy(survivors) > 0.8
    assert report["final_consensus_distance"] <= 1e-3
    secure = report["privacy"]["secure_aggregation"]
    assert secure["enabled"] is True
    # no answer comes too late in virtual time: no round went without its sum
    assert all(secure["failed_rounds"][str(i)] == [] for i in range(4))
    for index in range(4):
        counts = [r.get("secure_aggregation") for r in metrics(tmp_path, index)]
        # every round summed through masks: four contributors up to the kill, three after
        assert counts[:4] == ["4 contributors"] * 4
        assert set(counts[4:]) <= {"3 contributors", "refused"}
        # the kill is churn, not a claim: the smaller set is signed soon after (0–1 refused
        # rounds), not refused for the whole differencing window
        assert counts.count("refused") <= 1 and counts[-1] == "3 contributors"


def test_dp_budget_is_accounted_and_a_spent_node_stops_contributing(tmp_path: Path,
                                                                   pool) -> None:
    from gossipfl.privacy.accountant import epsilon_after
    from gossipfl.privacy.dp import DPConfig

    dp = DPConfig(enabled=True, unit="node", clip_norm=1.0, noise_multiplier=1.0, delta=1e-5)
    target = (epsilon_after(4, dp) + epsilon_after(5, dp)) / 2  # room for exactly 4 rounds
    text = scenario_text(name="dp", nodes=3, rounds=8, degree=2, round_timeout=5.0,
                         extra=f'[privacy]\nenabled = true\nunit = "node"\nclip_norm = 1.0\n'
                               f"noise_multiplier = 1.0\ndelta = 1e-5\n"
                               f"target_epsilon = {target!r}\n")
    report = simulated(tmp_path, text, pool)
    privacy = report["privacy"]
    assert privacy["dp"]["enabled"] is True and privacy["delta"] == 1e-5
    for node in report["nodes"]:
        assert node["status"] == "done"
        assert node["privacy"]["epsilon"] == pytest.approx(epsilon_after(4, dp), rel=1e-9)
        assert node["privacy"]["epsilon"] <= target
        assert node["privacy"]["rounds_spent"] == 4
        assert node["privacy"]["stopped_contributing_round"] == 4
        assert privacy["epsilon"][str(node["index"])] == node["privacy"]["epsilon"]
    assert "privacy budget spent" in node_log(tmp_path, 0)


def restart_two(down_1: float, down_2: float) -> str:
    """Node 1 killed after round 8 and node 2 after round 3, both back after the other two
    have finished: each has only the other to link with and catch up from."""
    return scenario_text(name="restart2", nodes=4, rounds=12,
                         extra=f'[[faults]]\nkind = "restart"\nnode = 1\nat_round = 8\n'
                               f"down_seconds = {down_1}\n\n"
                               f'[[faults]]\nkind = "restart"\nnode = 2\nat_round = 3\n'
                               f"down_seconds = {down_2}\n")


def test_a_restarted_node_never_catches_up_to_before_its_checkpoint(tmp_path: Path,
                                                                   pool) -> None:
    report = simulated(tmp_path, restart_two(20.0, 20.0), pool)
    for node in report["nodes"][1:3]:
        assert node["resumed_from"] is not None and node["catch_ups"]
        for catch_up in node["catch_ups"]:
            assert catch_up["to_round"] >= (catch_up["from_round"] or 0), node["catch_ups"]


def test_two_restarted_neighbours_catching_up_from_each_other_still_converge(
        tmp_path: Path, pool) -> None:
    report = simulated(tmp_path, restart_two(6.0, 3.0), pool, epoch_seconds=0.05)
    pair = report["nodes"][1:3]
    assert [n["status"] for n in pair] == ["done", "done"]
    # neither went back (the bug above is not what this one is about)
    assert all(c["to_round"] >= c["from_round"] for n in pair for c in n["catch_ups"])
    for index in (1, 2):
        assert "malformed (delta base round" not in node_log(tmp_path, index)
    # two nodes averaging what they had: as good as before the kills, and agreeing
    assert min_accuracy(pair) > 0.7
    assert max(n["rounds_completed"] for n in pair) < 12 + 30  # before the round limit


def outcome(report: dict[str, Any]) -> list[Any]:
    """What a run decided (not the order in which concurrent events were logged)."""
    return [report["virtual_seconds"], report["final_consensus_distance"]] + [
        (n["status"], n["events"], n["rounds_completed"], n["accuracy"], n["catch_ups"],
         n["relinks"], n["rejoins_served"], sorted(n["neighbours"]),
         sorted((d["peer_id"], d["round"]) for d in n["dropped_neighbours"]))
        for n in report["nodes"]]


def test_a_simulated_fault_scenario_repeats_exactly(tmp_path: Path, pool) -> None:
    first = simulated(tmp_path / "first", RESTART, pool)
    second = simulated(tmp_path / "second", RESTART, pool)
    assert outcome(first) == outcome(second)
    assert first["virtual_seconds"] > 0 and first["nodes"][2]["catch_ups"]


def test_gossipfl_simulate_applies_a_scenarios_faults(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The command line: a kill at round 1 is applied at round 1 (not once a poll comes
    round, when the run may be over: rounds can take no virtual time), and a second run into
    the same folder is refused."""
    import json

    from gossipfl.cli import main

    path = tmp_path / "scenario.toml"
    path.write_text(scenario_text(name="cli", nodes=3, rounds=4, degree=2,
                                  extra='[[faults]]\nkind = "kill"\nnode = 0\nat_round = 1\n'))
    out = tmp_path / "out"
    args = ["simulate", str(path), "--out", str(out), "--quiet", "--no-centralised"]
    assert main([*args, "--epoch-seconds", "0"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["simulated"] is True and not report["timed_out"]
    assert [n["status"] for n in report["nodes"]] == ["killed", "done", "done"]
    assert report["nodes"][0]["rounds_completed"] == 2
    assert 'id="fig-accuracy"' in (out / "report.html").read_text()  # and the page
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
