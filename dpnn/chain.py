"""Deterministic mode across ranks: the micro-shards' sum in index order, passed along the ranks.

One process adds the M micro-shards' gradients in one fixed order,
``((g_0 + g_1) + g_2) + ... + g_{M-1}`` (:func:`dpnn.recipe.add_slots`), and so does every
worker pool, whoever computed which slot. Rank r computes a contiguous run of the
micro-shards, the run after rank r-1's, so the same sum is a *chain*: rank 0 adds its slots,
rank 1 receives that partial sum and adds its slots onto it, and so on; the last rank holds the
sum of all M, bitwise what one process gets, and sends it back down the chain::

    rank 0          rank 1                    ...   rank K-1
    p = g_0+..+g_a  ──p──▶ p += g_a+1, ..     ──▶   p += .., g_M-1   (= the one-process sum)
    total ◀───────────────────────────────────────  total

Both passes are pipelined in chunks, so a rank forwards chunk c while its neighbour still works
on chunk c-1: a pass takes about (K - 1 + C) hops of one chunk for C chunks on K ranks, so the
vector is cut into about 4 K chunks (none below ``MIN_CHUNK`` values), which keeps the K - 1
hops that fill the pipeline short next to the C that carry the data. Each rank sends and receives the vector about twice
per step (the two end ranks once): O(gradient) per rank like an all-reduce, whatever M
(docs/engine.md, "Deterministic mode", weighs this against exact fixed-point sums). The
BatchNorm running statistics travel in the same vector, weighted by their share of the batch
as :func:`dpnn.recipe.average_state` does.
"""
from __future__ import annotations

import numpy as np

from .comm import Communicator
from .recipe import Sums, add_slots, add_sums, average_state

MIN_CHUNK = 4096     # float32 values per message at least (16 KB): below, latency dominates
CHUNKS_PER_RANK = 4  # pipeline chunks per rank in the chain


def chunk_size(size: int, ranks: int) -> int:
    """Values per message for a vector of ``size`` on ``ranks`` ranks."""
    return max(MIN_CHUNK, -(-size // (CHUNKS_PER_RANK * max(ranks, 1))))


def chunks(size: int, chunk: int) -> list[tuple[int, int]]:
    """[lo, hi) pieces of a vector of ``size`` values."""
    return [(lo, min(size, lo + chunk)) for lo in range(0, max(size, 1), chunk)]


def fold_slots(grads: np.ndarray, states: np.ndarray, counts, total: int, out: np.ndarray,
               P: int, lo: int, hi: int, first: bool) -> None:
    """Values [lo, hi) of ``out`` = [grads sum | state average] (P + S,): this rank's slots
    (k, P) and (k, S) added in order, onto what ``out`` holds unless ``first`` (rank 0)."""
    g_lo, g_hi = min(lo, P), min(hi, P)
    if g_hi > g_lo:
        add_slots(grads[:, g_lo:g_hi], out[g_lo:g_hi], onto=not first)
    s_lo, s_hi = max(lo, P) - P, max(hi, P) - P
    if s_hi > s_lo:
        average_state(states[:, s_lo:s_hi], counts, out[P + s_lo:P + s_hi], total, onto=not first)


def chain_sum(comm: Communicator, grads: np.ndarray, states: np.ndarray, counts, total: int,
              out: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """out (P + S,) float32 <- every rank's slots added in micro-shard order (rank order), on
    every rank: the gradient sum (P) and the sample-weighted BatchNorm state (S).

    ``grads`` (k, P) and ``states`` (k, S) are this rank's k slots; ``counts`` their samples;
    ``total`` the global batch; ``chunk`` values per message (default :func:`chunk_size`).
    Every rank holds at least one slot.
    """
    rank, last = comm.rank, comm.size - 1
    P = grads.shape[1]
    pieces = chunks(out.size, chunk or chunk_size(out.size, comm.size))
    for lo, hi in pieces:                    # up: the partial sum, rank after rank
        if rank:
            comm.recv(out[lo:hi], rank - 1)
        fold_slots(grads, states, counts, total, out, P, lo, hi, first=rank == 0)
        if rank < last:
            comm.send(out[lo:hi], rank + 1)
    for lo, hi in pieces:                    # down: the total, from the last rank
        if rank < last:
            comm.recv(out[lo:hi], rank + 1)
        if rank:
            comm.send(out[lo:hi], rank - 1)
    return out


def ordered_sums(comm: Communicator, parts: list[Sums], rows: int) -> Sums:
    """Every rank's ``parts`` (at most ``rows`` each; loss, hits, count) gathered and added in
    rank order, then part order: the same bits as one process adding them all in order."""
    mine = np.zeros((max(rows, 1), 3), np.float64)
    for i, part in enumerate(parts):
        mine[i] = part.as_array()
    return add_sums(Sums.of_array(row) for row in comm.allgather(mine).reshape(-1, 3))
