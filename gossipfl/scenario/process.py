"""A scenario's node as the runner starts and watches it: its configuration, its OS process
(spawned, or forked by the launcher) and the progress read from the metrics it writes. Shared by
the runner, the simulator and the report (which reads what the nodes left behind)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from gossipfl.config import NodeConfig


class Launcher(Protocol):
    """What a node's launcher offers (a Popen, or a launcher forked from the runner)."""

    def poll(self) -> int | None: ...


class ForkedProcess:
    """A node process forked by the launcher, with the part of Popen's interface we use."""

    def __init__(self, pid: int, index: int, state_path: Path, launcher: Launcher):
        self.pid = pid
        self.index = index
        self.state_path = state_path
        self.launcher = launcher

    def poll(self) -> int | None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError):
            state = {"exit_codes": {}}
        code = state["exit_codes"].get(str(self.index))
        if code is not None:
            return int(code)
        if self.launcher.poll() is not None and not _alive(self.pid):
            return -1  # the launcher died and cannot tell us: the node is gone
        return None

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"node {self.index}", timeout or 0.0)
            time.sleep(0.05)
        return code


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True



@dataclass
class NodeProcess:
    index: int
    config: NodeConfig
    peer_id: str
    process: subprocess.Popen[bytes] | ForkedProcess | None = None
    metrics_offset: int = 0
    last_round: int = -1
    last_accuracy: float | None = None
    phase: str = "starting"
    killed_at: float | None = None
    killed_after_round: int | None = None
    restart_at: float | None = None  # a restart fault: when to start it again
    resume_at: float | None = None  # a pause fault: when to SIGCONT it
    join_round: int | None = None  # a late joiner: start it once the federation is this far
    restarts: int = 0
    standby: subprocess.Popen[bytes] | None = None  # a pre-started process for the restart
    netns: str | None = None  # the network namespace it runs in (scenario namespaces)
    exit_code: int | None = None
    events: list[str] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.config.out_dir)

    def poll_metrics(self) -> None:
        path = self.out / "metrics.jsonl"
        if not path.exists():
            return
        with open(path) as handle:
            handle.seek(self.metrics_offset)
            chunk = handle.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.metrics_offset += len(complete.encode())
        for line in complete.splitlines():
            record = json.loads(line)
            self.last_round = record["round"]
            if record.get("test_accuracy") is not None:  # not every round evaluates
                self.last_accuracy = record["test_accuracy"]
            self.phase = record["phase"]


__all__ = ["ForkedProcess", "NodeProcess"]
