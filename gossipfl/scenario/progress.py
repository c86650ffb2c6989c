"""The runner's progress display: each node's round, phase and accuracy (rich)."""

from __future__ import annotations

from typing import Any

from gossipfl.scenario.process import NodeProcess


def progress_total(rounds: int, completed: int, finished: bool) -> int:
    """The length of a node's bar: the training rounds that will run; once it trains past
    them (consensus rounds, whose number is not known ahead), one more than it has done; and
    what it did once it has finished, so that a finished node's bar ends full."""
    if finished:
        return max(completed, 1)
    return max(rounds, completed + 1)


class Progress:
    """A rich progress display of every node's round and accuracy (or nothing, when quiet)."""

    def __init__(self, nodes: list[NodeProcess], rounds: int, quiet: bool) -> None:
        self.nodes = nodes
        self.rounds = rounds
        self.quiet = quiet
        self._progress: Any = None
        self._tasks: dict[int, Any] = {}
        if quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self._progress = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
        )
        for node in nodes:
            self._tasks[node.index] = self._progress.add_task(
                f"node {node.index:2d} {node.peer_id[-6:]}", total=rounds, status="starting"
            )

    def __enter__(self) -> Progress:
        if self._progress:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress:
            self.update(ended=True)
            self._progress.stop()

    def update(self, ended: bool = False) -> None:
        """Redraw; ``ended``: the run is over, every bar ends where its node stopped."""
        if not self._progress:
            return
        for node in self.nodes:
            acc = "" if node.last_accuracy is None else f"acc {node.last_accuracy:.3f}"
            state = node.phase
            if node.exit_code is not None:
                state = "killed" if node.killed_at else f"exit {node.exit_code}"
            completed = node.last_round + 1
            finished = ended or (node.exit_code == 0 and node.restart_at is None)
            self._progress.update(self._tasks[node.index], completed=completed,
                                  total=progress_total(self.rounds, completed, finished),
                                  status=f"{state} {acc}")
