"""Secure aggregation, the aggregator's last step: the sum from the survivors' masked inputs and
the shares and seeds their answers (or early shares) reveal (:mod:`gossipfl.node.secure_round`
runs the round; :mod:`gossipfl.node.secure_early` the early shares)."""

from __future__ import annotations

import numpy as np

from gossipfl.crypto import secagg, shamir
from gossipfl.crypto.consistency import threshold
from gossipfl.crypto.secagg_sparse import decode_ring_sum, mask_modulus, unpack_words
from gossipfl.gossip.wire import MaskedInput, UnmaskResponse
from gossipfl.node import secure_sparse
from gossipfl.node.secure_inputs import neighbourhood
from gossipfl.node.state import Node


def unmask(node: Node, r: int, inputs: dict[str, MaskedInput], survivors: list[str],
           dropped: list[str], responses: dict[str, UnmaskResponse]) -> np.ndarray:
    """Σ_{j∈V} w_ij x̂_j from the survivors' masked inputs and their unmask answers.

    Every self seed is rebuilt from threshold shares (no member sends its own). Raises
    ValueError when the answers cannot remove every mask (too few shares of a survivor's self
    seed, or a pair seed missing).
    """
    config = node.config.secagg
    members = sorted(neighbourhood(node, node.peer_id))
    ids = shamir.share_ids_for(members)
    need = threshold(len(members))
    self_seeds: dict[str, bytes] = {}
    for peer in survivors:
        held = {}
        for response in responses.values():
            for owner, encoded in response.seed_shares:
                if owner == peer:
                    share_id, value = shamir.decode_share(encoded)
                    if share_id == ids.get(response.sender):
                        held[share_id] = value
        if len(held) < need:
            raise ValueError(f"only {len(held)} of {need} shares of {peer}'s self seed came back")
        self_seeds[peer] = shamir.combine_shares(held, need)
    pair_seeds: dict[tuple[str, str], bytes] = {}
    for peer in survivors:
        for gone in dropped:
            if peer not in responses:
                raise ValueError(f"{peer} left after masking while {gone} had dropped: their pair "
                                 "mask cannot be removed")
            seeds = dict(responses[peer].pair_seeds)
            if gone not in seeds:
                raise ValueError(f"{peer} did not reveal its pair seed with {gone}")
            pair_seeds[(peer, gone)] = seeds[gone]
    bits = secure_sparse.width(node, node.peer_id, r)
    count = secure_sparse.words(node, node.peer_id, r)
    masked = {p: unpack_words(inputs[p].data, bits, count) for p in survivors}
    total = secagg.unmask_sum(masked, survivors_self_seeds=self_seeds,
                              dropped_pair_seeds=pair_seeds, modulus=mask_modulus(bits))
    if secure_sparse.sparse_for(node, node.peer_id, r) and secure_sparse.levels(node):
        counts, denominator, _ = secure_sparse.ring(node, node.peer_id, r)
        return decode_ring_sum(total, width=bits,
                               levels=secure_sparse.sum_levels(node, node.peer_id, r),
                               weight_sum=sum(counts[p] for p in survivors),
                               step=secure_sparse.step(node, r), denominator=denominator)
    return secagg.dequantise_sum(total, len(survivors), config.clip, config.scale)


__all__ = ["unmask"]
