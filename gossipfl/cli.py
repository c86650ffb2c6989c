"""Command line: ``gossipfl node`` (one participant) and ``gossipfl run`` (a scenario).

Thin on purpose: it parses flags into configuration data and hands over. Heavy imports (JAX,
libp2p) happen after the flags are read, so ``--help`` is instant and thread settings for JAX are
in place before it loads.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

NODE_THREAD_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


def _node_parser(sub: Any) -> None:
    p = sub.add_parser("node", help="run one federation member (one OS process)")
    p.add_argument("--config", help="node TOML file (flags below override it)")
    p.add_argument("--listen", action="append", help="listen multiaddr (repeatable)")
    p.add_argument("--bootstrap", action="append",
                   help="bootstrap multiaddr with /p2p/<peer id> (repeatable)")
    p.add_argument("--key-file", help="Ed25519 identity file (created with mode 0600)")
    p.add_argument("--federation", help="federation name")
    p.add_argument("--dataset", help="digits, wine, breast_cancer, iris, mnist1d, teacher or npz")
    p.add_argument("--data-path", help="the .npz file for --dataset npz")
    p.add_argument("--test-path", help="--dataset npz: the shared test set (.npz with x_test, "
                                       "y_test); the --data-path file then holds training "
                                       "arrays only")
    p.add_argument("--partition", help="iid, dirichlet, shards or none")
    p.add_argument("--node-index", type=int, help="this node's partition index")
    p.add_argument("--node-count", type=int, help="number of partitions")
    p.add_argument("--model", help="logreg, mlp or cnn")
    p.add_argument("--rounds", type=int, help="training rounds")
    p.add_argument("--expect", type=int, help="wait for this many members before training")
    p.add_argument("--out", help="output directory")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--start-when", help=argparse.SUPPRESS)  # standby: start once FILE exists
    p.add_argument("--start-timeout", type=float, default=600.0, help=argparse.SUPPRESS)
    p.add_argument("--threads", action="store_true",
                   help="let XLA use all cores (default: one thread, for many nodes per machine)")
    p.add_argument("--metrics-port", type=int,
                   help="serve Prometheus metrics on this port (0: off, the default)")
    p.add_argument("--metrics-addr", help="the metrics server's address (default 127.0.0.1)")
    p.add_argument("--compile-cache", metavar="DIR",
                   help="JAX's compilation cache folder, shared by the nodes of a machine "
                        "(default: $GOSSIPFL_COMPILE_CACHE, else ~/.cache/gossipfl/xla; off: none)")


NO_HTML = ("write report.json only, not report.html (its figures take about a second; "
           "gossipfl report DIR writes it later)")


def _run_parser(sub: Any) -> None:
    p = sub.add_parser("run", help="run a scenario: start its nodes, wait, write a report")
    p.add_argument("scenario", help="scenario TOML file")
    p.add_argument("--out", help="output directory (default runs/<name>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.add_argument("--no-centralised", action="store_true",
                   help="skip the pooled-data baseline in the report")
    p.add_argument("--spawn", action="store_true",
                   help="start each node as a fresh interpreter instead of forking them from "
                        "one launcher that imports once")
    p.add_argument("--metrics-port", type=int, metavar="BASE",
                   help="node i serves Prometheus metrics on 127.0.0.1:BASE+i (0: off)")
    p.add_argument("--no-html", action="store_true", help=NO_HTML)


def _simulate_parser(sub: Any) -> None:
    p = sub.add_parser("simulate", help="simulate a scenario: every node in this one process, "
                                        "over an in-memory network, in virtual time")
    p.add_argument("scenario", help="scenario TOML file")
    p.add_argument("--out", help="output directory (default runs/<name>-sim-<time>)")
    p.add_argument("--quiet", action="store_true", help="no summary table")
    p.add_argument("--no-centralised", action="store_true",
                   help="skip the pooled-data baseline in the report")
    p.add_argument("--epoch-seconds", type=float, default=None,
                   help="virtual seconds one epoch of local training costs a node (the run "
                        "then repeats exactly); default: the wall time it took here")
    p.add_argument("--no-html", action="store_true", help=NO_HTML)


def _report_parser(sub: Any) -> None:
    p = sub.add_parser("report", help="(re)write DIR/report.html from a run's report.json and "
                                      "metrics files")
    p.add_argument("directory", help="the run folder (holding report.json)")


def _estimate_parser(sub: Any) -> None:
    p = sub.add_parser("estimate", help="before running: what each node of a scenario will "
                                        "need here (time, memory, bytes), from a short "
                                        "calibration on this machine")
    p.add_argument("scenario", help="scenario TOML file")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _data_parser(sub: Any) -> None:
    p = sub.add_parser("data", help="data files for scenarios")
    verbs = p.add_subparsers(dest="verb", required=True)
    split = verbs.add_parser("split", help="write a scenario's partition as one .npz file per "
                                           "node (node-NN.npz) and test.npz")
    split.add_argument("scenario", help="scenario TOML file")
    split.add_argument("out", help="folder to write (made; must hold no .npz files yet)")


def _federation_parser(sub: Any) -> None:
    p = sub.add_parser("federation", help="make a federation key, admit and revoke members")
    verbs = p.add_subparsers(dest="verb", required=True)
    init = verbs.add_parser("init", help="create federation.key (0600) and federation.pub")
    init.add_argument("directory")
    init.add_argument("--name", required=True, help="the federation's name")
    admit = verbs.add_parser("admit", help="issue a signed membership certificate")
    admit.add_argument("directory")
    admit.add_argument("--key-file", help="the member's identity file (gives both values below)")
    admit.add_argument("--peer-id", help="the member's peer id")
    admit.add_argument("--x25519", help="the member's X25519 public key, hex")
    admit.add_argument("--days", type=float, default=30.0, help="validity (default 30 days)")
    revoke = verbs.add_parser("revoke", help="add a member to the signed revocation list "
                                             "(revocations.list, next serial)")
    revoke.add_argument("directory")
    revoke.add_argument("--peer-id", required=True, help="the member's peer id")
    revoke.add_argument("--reason", default="", help="a short public reason (64 characters)")
    ident = sub.add_parser("identity", help="show (and create) a node identity")
    ident.add_argument("--key-file", required=True)


def federation_command(args: argparse.Namespace) -> int:
    import time

    from gossipfl.crypto.admission import AdmissionError, admit, admit_identity, init_federation

    try:
        if args.verb == "init":
            public = init_federation(args.directory, args.name)
            print(f"federation {args.name!r}: public key in {public}")
            return 0
        if args.verb == "revoke":
            from gossipfl.crypto.revocation import revoke

            path, revocations = revoke(args.directory, args.peer_id, args.reason,
                                       now=time.time())
            print(f"revocation list {revocations.serial} ({len(revocations.revoked)} revoked): "
                  f"{path}; give it to a node as [security] revocations, or to any one member: "
                  f"heartbeats carry it to the others")
            return 0
        if args.key_file:
            path = admit_identity(args.directory, args.key_file, valid_days=args.days,
                                  now=time.time())
        elif args.peer_id and args.x25519:
            path = admit(args.directory, args.peer_id, args.x25519, valid_days=args.days,
                         now=time.time())
        else:
            print("gossipfl federation admit: give --key-file, or --peer-id and --x25519",
                  file=sys.stderr)
            return 2
    except (AdmissionError, OSError) as error:
        print(f"gossipfl federation: {error}", file=sys.stderr)
        return 2
    print(f"certificate: {path}")
    return 0


def identity_command(args: argparse.Namespace) -> int:
    from gossipfl.crypto.admission import identity_x25519_keypair
    from gossipfl.crypto.identity import IdentityError, load_or_create_identity

    try:
        identity, created = load_or_create_identity(args.key_file)
    except IdentityError as error:
        print(f"gossipfl identity: {error}", file=sys.stderr)
        return 2
    _, x25519 = identity_x25519_keypair(identity)
    print(f"peer_id {identity.peer_id}\nx25519 {x25519.hex()}"
          + (f"\n(created {args.key_file}, mode 0600)" if created else ""))
    return 0


def _node_overrides(args: argparse.Namespace) -> dict[str, Any]:
    top = {
        "listen": args.listen, "bootstrap": args.bootstrap, "key_file": args.key_file,
        "federation": args.federation, "node_index": args.node_index,
        "node_count": args.node_count, "rounds": args.rounds, "expected_members": args.expect,
        "out_dir": args.out, "metrics_port": args.metrics_port,
        "metrics_addr": args.metrics_addr,
    }
    overrides: dict[str, Any] = {k: v for k, v in top.items() if v is not None}
    data = {"dataset": args.dataset, "path": args.data_path, "partition": args.partition,
            "test_path": getattr(args, "test_path", None)}
    data = {k: v for k, v in data.items() if v is not None}
    if data:
        overrides["data"] = data
    if args.model:
        overrides["model"] = {"name": args.model}
    return overrides


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def node_command(args: argparse.Namespace) -> int:
    if not args.threads:
        os.environ.setdefault("XLA_FLAGS", NODE_THREAD_FLAGS)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from gossipfl.config import ConfigError, NodeConfig, from_dict, load_toml
    from gossipfl.node.compile_cache import cache_folder
    from gossipfl.node.main import run_node

    folder = cache_folder(args.compile_cache)  # the node's steps: loaded, not compiled

    if args.start_when:
        # a standby node (scenario restarts): imports done, it starts the moment the file exists
        import gossipfl.node.round
        import gossipfl.node.runtime  # noqa: F401

        if not _wait_for_file(args.start_when, args.start_timeout):
            print(f"gossipfl node: {args.start_when} did not appear in {args.start_timeout} s",
                  file=sys.stderr)
            return 2
    try:
        base = load_toml(args.config) if args.config else {}
        config = from_dict(NodeConfig, _merge(base, _node_overrides(args)))
    except (ConfigError, OSError) as error:
        print(f"gossipfl node: {error}", file=sys.stderr)
        return 2
    return run_node(config, args.log_level, folder)


def _wait_for_file(path: str, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def run_command(args: argparse.Namespace) -> int:
    from gossipfl.config import ConfigError
    from gossipfl.scenario.runner import run_scenario

    try:
        return run_scenario(args.scenario, out=args.out, quiet=args.quiet,
                            centralised=not args.no_centralised, spawn=args.spawn,
                            metrics=args.metrics_port, html=not args.no_html)
    except (ConfigError, OSError) as error:
        print(f"gossipfl run: {error}", file=sys.stderr)
        return 2


def simulate_command(args: argparse.Namespace) -> int:
    from gossipfl.config import ConfigError
    from gossipfl.scenario.simulate import simulate_scenario

    try:
        return simulate_scenario(args.scenario, out=args.out, quiet=args.quiet,
                                 centralised=not args.no_centralised,
                                 epoch_seconds=args.epoch_seconds, html=not args.no_html)
    except (ConfigError, OSError) as error:
        print(f"gossipfl simulate: {error}", file=sys.stderr)
        return 2


def data_command(args: argparse.Namespace) -> int:
    from gossipfl.config import ConfigError
    from gossipfl.scenario.config import load_scenario
    from gossipfl.scenario.datafiles import write_split

    try:
        files = write_split(load_scenario(args.scenario), args.out)
    except (ConfigError, OSError) as error:
        print(f"gossipfl data split: {error}", file=sys.stderr)
        return 2
    for path in files:
        print(path)
    print(os.path.join(args.out, "test.npz"))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from gossipfl.report import ReportError, write_report_html

    try:
        path = write_report_html(args.directory)
    except (ReportError, OSError) as error:
        print(f"gossipfl report: {error}", file=sys.stderr)
        return 2
    print(path)
    return 0


def estimate_command(args: argparse.Namespace) -> int:
    os.environ.setdefault("XLA_FLAGS", NODE_THREAD_FLAGS)  # measured as a node runs
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from gossipfl.config import ConfigError
    from gossipfl.scenario.calibrate import CalibrationError
    from gossipfl.scenario.estimate_view import run_estimate

    try:
        return run_estimate(args.scenario, as_json=args.json)
    except (ConfigError, CalibrationError, OSError) as error:
        print(f"gossipfl estimate: {error}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gossipfl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _node_parser(sub)
    _run_parser(sub)
    _simulate_parser(sub)
    _report_parser(sub)
    _estimate_parser(sub)
    _data_parser(sub)
    _federation_parser(sub)
    args = parser.parse_args(argv)
    commands = {"node": node_command, "run": run_command, "simulate": simulate_command,
                "report": report_command, "estimate": estimate_command, "data": data_command,
                "federation": federation_command, "identity": identity_command}
    return commands[args.command](args)
