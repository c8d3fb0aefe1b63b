"""Near-duplicate groups: perceptual hashes within a Hamming distance, over a whole catalog.

Finding every pair of 64-bit hashes at most ``t <= 6`` bits apart without comparing all pairs: split each hash into
its 8 bytes. Two hashes that differ in at most 6 bits differ in at most 6 bytes, so at least 2 of their 8 bytes are
equal. For each of the 28 pairs of byte positions, hashes are sorted by those two bytes (a 16-bit key) and only
hashes with the same key are compared (a popcount of their XOR). Every pair within ``t`` shares at least one key,
so the search is exact; on random hashes each pass compares about n^2 / 2^17 pairs. 1 M hashes take about 10 s on
the 2-core dev box (``benchmarks/dataset_checks.py``); faiss's ``IndexBinaryMultiHash`` (the same idea, four
16-bit blocks probed with one flipped bit) took 129 s there for the same 1 M, so no index library is used.

Groups are the connected components of the "within ``t``" graph (``scipy.sparse.csgraph``): a chain of small
edits links its ends even when they are more than ``t`` apart, as in other deduplication tools.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

MAX_BITS = 6  # the byte-pair search is exact up to here (8 - 2 bytes may differ)


def near_pairs(codes: np.ndarray, bits: int) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, of 64-bit ``codes`` at most ``bits`` apart; shape (m, 2), sorted, unique.

    ``codes``: int64 or uint64 array. Equal codes are pairs too (distance 0).
    """
    if not 0 <= bits <= MAX_BITS:
        raise ValueError(f"near-duplicate search is exact for 0..{MAX_BITS} bits, got {bits}")
    h = np.ascontiguousarray(codes).view(np.uint64)
    if len(h) < 2:
        return np.empty((0, 2), dtype=np.int64)
    by = h.view(np.uint8).reshape(-1, 8).astype(np.int64)
    found = []
    for i, j in combinations(range(8), 2):
        key = (by[:, i] << 8) | by[:, j]
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        lengths = np.diff(np.r_[starts, len(sorted_key)])
        run_end = np.repeat(starts + lengths, lengths)
        pos = np.arange(len(sorted_key))
        step = 1
        while len(pos):  # compare each hash with the one `step` places after it in its run
            pos = pos[pos + step < run_end[pos]]
            a, b = order[pos], order[pos + step]
            close = np.bitwise_count(h[a] ^ h[b]) <= bits
            found.append(np.stack([np.minimum(a[close], b[close]), np.maximum(a[close], b[close])], axis=1))
            step += 1
    return np.unique(np.concatenate(found), axis=0)


def near_groups(codes: np.ndarray, bits: int) -> np.ndarray:
    """A group label per code (int64): the smallest index in its connected component of "at most ``bits`` apart";
    a code with no near neighbour is its own group (label = its index)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(codes)
    pairs = near_pairs(codes, bits)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    first = np.full(comp.max() + 1 if n else 0, n, dtype=np.int64)
    np.minimum.at(first, comp, np.arange(n))
    return first[comp]
