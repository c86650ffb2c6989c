"""The simulator's collector settings (gossipfl.scenario.simulate.quiet_gc)."""

import gc

import pytest

from gossipfl.scenario.simulate import quiet_gc


def test_quiet_gc_sets_and_restores_thresholds() -> None:
    gc.unfreeze()  # as a process that froze nothing itself (this suite's conftest freezes)
    before = gc.get_threshold()
    with quiet_gc((12_345, 7, 9)):
        assert gc.get_threshold() == (12_345, 7, 9)
        assert gc.get_freeze_count() > 0  # what existed on entry is out of the collector's view
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_quiet_gc_restores_after_an_error() -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), quiet_gc((5_000, 3, 3)):
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_quiet_gc_leaves_what_its_caller_froze_frozen() -> None:
    """Unfreezing would hand the collector the caller's frozen objects too (one permanent
    generation): a caller that froze its own keeps them, and what the block froze, frozen."""
    kept = [[i] for i in range(1_000)]
    gc.freeze()
    frozen = gc.get_freeze_count()
    assert frozen >= len(kept)
    with quiet_gc((5_000, 3, 3)):
        made = [len(kept)]
    assert gc.get_freeze_count() >= frozen
    assert any(o is made for o in gc.get_objects())  # and left to the collector
    del kept, made
