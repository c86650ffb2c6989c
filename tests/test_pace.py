"""Tests for gossipfl.node.pace: how much local work an async node does in a round."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipfl.node.pace import GROWTH, SHARE, SLACK, local_epochs, work_share

FAST = settings(max_examples=200, deadline=None)


def _epochs(previous: float, lag: int, *, held: bool = False, share: float = 0.5,
            configured: int = 4, minimum: float = 0.25) -> float:
    return local_epochs(previous, lag, held=held, work_share=share, configured=configured,
                        minimum=minimum)


def test_a_node_level_with_its_neighbours_grows_back_to_the_configured_work() -> None:
    assert _epochs(4.0, 0) == 4.0
    assert _epochs(4.0, SLACK) == 4.0
    assert _epochs(1.0, 1) == 2.0  # one step: a quarter of the configured 4 epochs
    assert _epochs(3.5, 0) == 4.0  # never more than configured
    steps = [0.25]
    while steps[-1] < 4.0:
        steps.append(_epochs(steps[-1], 0))
    assert steps == [0.25, 1.25, 2.25, 3.25, 4.0]


def test_a_node_its_neighbours_wait_for_halves_its_work_down_to_the_minimum() -> None:
    work = [4.0]
    for _ in range(6):
        work.append(_epochs(work[-1], SLACK + 1))
    assert work == [4.0, 2.0, 1.0, 0.5, 0.25, 0.25, 0.25]


def test_a_node_behind_for_another_reason_keeps_training() -> None:
    # held up by a slower neighbour of its own: its lag is not its doing
    assert _epochs(2.0, 5, held=True) == 3.0
    # its work is a small part of its round: halving it cannot make up a round
    assert _epochs(4.0, 5, share=SHARE / 2) == 4.0
    assert _epochs(4.0, 5, share=SHARE) == 4.0
    assert _epochs(4.0, 5, share=SHARE + 0.01) == 2.0


def test_the_minimum_is_capped_at_the_configured_work() -> None:
    assert local_epochs(1.0, 9, held=False, work_share=0.9, configured=1, minimum=2.0) == 1.0
    assert local_epochs(0.2, 0, held=False, work_share=0.9, configured=2, minimum=0.1) == 0.7


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"configured": 0}, "configured"),
    ({"minimum": 0.0}, "minimum"),
    ({"growth": -0.1}, "growth"),
    ({"previous": 0.0}, "previous"),
])
def test_invalid_arguments_are_refused_by_name(kwargs: dict, match: str) -> None:
    args = {"previous": 1.0, "configured": 4, "minimum": 0.25, "growth": GROWTH} | kwargs
    previous = args.pop("previous")
    with pytest.raises(ValueError, match=match):
        local_epochs(previous, 0, held=False, work_share=0.5, **args)


work_values = st.floats(min_value=1e-3, max_value=100.0, allow_nan=False)


@FAST
@given(previous=work_values, lag=st.integers(0, 50), more=st.integers(0, 50),
       held=st.booleans(), share=st.floats(0.0, 1.0), configured=st.integers(1, 20),
       minimum=work_values)
def test_work_stays_within_bounds_and_never_grows_with_the_lag(
    previous: float, lag: int, more: int, held: bool, share: float, configured: int,
    minimum: float,
) -> None:
    def work(lag_: int) -> float:
        return local_epochs(previous, lag_, held=held, work_share=share, configured=configured,
                            minimum=minimum)

    floor = min(minimum, configured)
    assert floor <= work(lag) <= configured
    assert work(lag + more) <= work(lag)


@FAST
@given(previous=work_values, lag=st.integers(0, 50), configured=st.integers(1, 20))
def test_a_node_level_or_held_up_never_does_less_than_before(
    previous: float, lag: int, configured: int,
) -> None:
    previous = min(previous, float(configured))
    for held, lag_ in ((True, lag), (False, min(lag, SLACK))):
        assert local_epochs(previous, lag_, held=held, work_share=1.0, configured=configured,
                            minimum=0.25) >= previous


def test_work_share_is_the_median_share_of_recent_rounds() -> None:
    assert work_share([0.1, 0.3, 0.05], [0.2, 0.4, 0.5]) == 0.5
    assert work_share([0.2], [0.8]) == 0.25
    assert work_share([0.2], [0.0]) == 1.0  # a round of no measurable length: all work
    with pytest.raises(ValueError, match="as many"):
        work_share([0.1], [])
