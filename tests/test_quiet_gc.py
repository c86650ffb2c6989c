"""The simulator's collector settings (gossipfl.scenario.simulate.quiet_gc)."""

import gc

import pytest

from gossipfl.scenario.simulate import quiet_gc


def test_quiet_gc_sets_and_restores_thresholds() -> None:
    before = gc.get_threshold()
    with quiet_gc((12_345, 7, 9)):
        assert gc.get_threshold() == (12_345, 7, 9)
        assert gc.get_freeze_count() > 0  # what existed on entry is out of the collector's view
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_quiet_gc_restores_after_an_error() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), quiet_gc((5_000, 3, 3)):
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
