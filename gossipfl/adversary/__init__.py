"""Adversaries as real node processes: a node that runs the protocol and deviates from it.

A scenario names them (``[[adversaries]] node = N, kind = ...``); the node gets one
:class:`~gossipfl.adversary.role.Role` at start (:func:`~gossipfl.adversary.factory.make_role`)
and calls it at a few hook points: its background task (started with the node's other tasks),
the aggregator's secure sum, and the final write. An honest node's role does nothing.
One module per concern: :mod:`.aggregator` (lying aggregator, differencing, narrowing),
:mod:`.prober` (state prober), :mod:`.flood` (membership flood, oversize flood).
"""
