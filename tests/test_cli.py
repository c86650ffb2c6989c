"""The thin CLI: federation set-up, identities, and clear errors for bad configuration."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path

import pytest

from gossipfl.cli import main
from gossipfl.crypto.admission import load_certificate, load_federation_public, verify_certificate


def test_federation_init_identity_and_admit(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    fed, key = tmp_path / "fed", tmp_path / "n" / "node.key"
    assert main(["federation", "init", str(fed), "--name", "demo"]) == 0
    assert stat.S_IMODE(os.stat(fed / "federation.key").st_mode) == 0o600
    assert main(["identity", "--key-file", str(key)]) == 0
    out = capsys.readouterr().out
    peer_id = out.split("peer_id ")[1].split()[0]
    x25519 = out.split("x25519 ")[1].split()[0]
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert key.read_text().strip() not in out  # the secret seed is never printed

    assert main(["federation", "admit", str(fed), "--key-file", str(key), "--days", "1"]) == 0
    cert = load_certificate(fed / f"{peer_id}.cert")
    assert cert.x25519_public.hex() == x25519
    verify_certificate(cert, load_federation_public(fed / "federation.pub"), federation="demo",
                       peer_id=peer_id, now=time.time())
    assert main(["federation", "admit", str(fed), "--peer-id", peer_id, "--x25519", x25519]) == 0

    # refusals are exit code 2 with a message, never a traceback
    assert main(["federation", "init", str(fed), "--name", "demo"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["federation", "admit", str(fed)]) == 2
    assert main(["federation", "admit", str(fed), "--peer-id", "nonsense", "--x25519", "00"]) == 2


def test_bad_scenario_and_node_config_are_clear_errors(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "x"\nnodes = 3\n[protocol]\nround_timout = 3.0\n')
    assert main(["run", str(scenario), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "protocol.round_timout" in capsys.readouterr().err
    node = tmp_path / "n.toml"
    node.write_text('[topology]\nkind = "star"\n')
    assert main(["node", "--config", str(node)]) == 2
    assert "topology.kind" in capsys.readouterr().err
