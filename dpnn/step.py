"""The one training step: a node backend times a communicator.

Every engine is a :class:`Step` over a node (:mod:`dpnn.node`: this process, or the worker
pool) and a communicator (:mod:`dpnn.comm`: the one local process, or MPI ranks, one per
machine). Per step, on every rank::

    keys (N,) of the global batch             Dropout and augmentation, alike everywhere
    this rank's shards of it                  one slice (deterministic: its micro-shards)
    one process: node.run(..., UPDATE)        slots, their sum, the optimizer: all on the node
    ranks:     node.run(..., SUM)             the node's gradient in model.grads
               allreduce [grads | state x share] and the sums          (one buffer, in place)
               node.apply_update()            the same optimizer step on every rank
       deterministic: node.run(..., SLOTS) on its run of the M micro-shards; chain_sum adds
               the slots in order 0..M-1 as one process would, passed from rank to rank
               (dpnn/chain.py); node.apply_update()

So one process, N workers and K ranks x N workers run the same recipe and, with
``deterministic=True``, give bitwise the same parameters.

Across ranks, parameters, BatchNorm and optimizer state are broadcast from rank 0 at start
(so a checkpoint read by rank 0 alone resumes everywhere), and a fingerprint of every rank's
parameters, batch and training data is compared at the first step, every ``check_every``
steps and at every epoch end: a mismatch raises :class:`RanksDiverged` on every rank.
"""
from __future__ import annotations

import hashlib
import time

import numpy as np

from .chain import chain_sum, ordered_sums
from .comm import Communicator, LocalComm
from .layers.normalization import batchnorm_layers
from .node import Batch, EngineInfo, Finish, NodeBackend
from .placement import check_deterministic_workers, resolve_micro_shards
from .recipe import ShardResult, StepStats, Sums, add_sums, eval_bounds, owned_slots, shard_bounds


class RanksDiverged(RuntimeError):
    """Ranks hold different parameters, or were fed different data: the run cannot go on."""


class Step:
    """``train_step``/``train_rows``/``evaluate``/``sync_state``/``close`` of ``node`` x ``comm``
    (the :class:`dpnn.node.Engine` contract); a context manager that closes the node.

    ``sync_batchnorm`` across ranks (one worker per rank): BatchNorm's batch sums are
    all-reduced, so its statistics are those of the global batch, as in one process.
    ``micro_shards``: deterministic mode's fixed micro-shards per batch (None: 8)."""

    def __init__(self, node: NodeBackend, comm: Communicator | None = None, deterministic: bool = False,
                 sync_batchnorm: bool = False, check_every: int = 50, seed: int | None = None,
                 micro_shards: int | None = None) -> None:
        self.node, self.model = node, node.model
        self.comm = comm if comm is not None else LocalComm()
        self.rank, self.size = self.comm.rank, self.comm.size
        self.deterministic, self.sync_batchnorm = bool(deterministic), bool(sync_batchnorm)
        self.micro_shards = resolve_micro_shards(micro_shards) if deterministic else None
        if deterministic:
            check_deterministic_workers(self.size * node.workers, self.micro_shards, f"{self.size} ranks x "
                                        f"{node.workers} workers")
        self.check_every, self.steps = max(int(check_every), 1), 0
        self._data: tuple[np.ndarray, np.ndarray] | None = None
        self._data_print = 0
        self._bn = batchnorm_layers(self.model.layers)
        self.seed = None
        if isinstance(self.comm, LocalComm):
            return
        for layer in self._bn if self.sync_batchnorm else []:
            layer.sync = self._allreduce_sums
        self.broadcast_model(root=0)
        self.seed = self.comm.bcast_object(seed)          # shuffling and dropout agree on every rank
        P, S = self.model.params.size, self.model.state.size
        slots = -(-self.micro_shards // self.size) if deterministic else 1
        self._pack = np.zeros(P + S, np.float32)               # (P+S,): grads | state
        self._slots = slots                                    # the most slots a rank computes

    def describe(self) -> EngineInfo:
        kind = self.node.kind if isinstance(self.comm, LocalComm) else "mpi"
        return EngineInfo(kind, self.node.workers, self.node.threads_per_worker, self.size,
                          self.deterministic, self.rank, self.seed, micro_shards=self.micro_shards)

    def __enter__(self) -> "Step":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for layer in self._bn:
            layer.sync = None
        self.node.close()

    def train_step(self, x: np.ndarray, y: np.ndarray, keys: np.ndarray | None = None) -> StepStats:
        """One optimizer step on the GLOBAL batch (N, ...); returns the global sums on every rank."""
        x, y = self.model.check_input(x), np.asarray(y)
        if len(x) == 0 or len(y) != len(x):
            raise ValueError(f"a training batch needs at least one sample and as many labels as "
                             f"inputs; got {len(x)} inputs and {len(y)} labels")
        if y.dtype.kind not in "biuf" and y.dtype.names is None:      # records: weighted targets
            raise TypeError(f"labels must be numeric, got dtype {y.dtype}")
        return self._step(Batch(x, y), keys)

    def train_on_batch(self, x, y, sample_keys: np.ndarray | None = None) -> tuple[float, float]:
        """(mean loss, accuracy or nan) of one step on (x, y), like ``Model.train_on_batch``."""
        sums = self.train_step(x, y, sample_keys).sums
        return sums.mean_loss(), sums.accuracy()

    def place_data(self, X: np.ndarray, Y: np.ndarray) -> None:
        """The training set, identical on every rank; a worker pool keeps it in shared memory."""
        self._data = (X, Y)
        if not isinstance(self.comm, LocalComm):
            self._data_print = data_fingerprint(X, Y)
        self.node.place_data(X, Y)

    def train_rows(self, indices: np.ndarray, keys: np.ndarray | None = None) -> StepStats:
        """:meth:`train_step` on rows ``indices`` of the placed data (each worker gathers its own)."""
        if self._data is None:
            raise RuntimeError("train_rows needs the data placed first: place_data(X, Y)")
        return self._step(Batch(*self._data, np.asarray(indices, np.int64)), keys)

    def _step(self, batch: Batch, keys) -> StepStats:
        n = len(batch)
        if keys is None:               # Dropout keys of the global batch, alike on every rank
            keys = self.model.next_sample_keys(n)
        if isinstance(self.comm, LocalComm):
            result = self.node.run(batch, self._shards(n), n, keys, Finish.UPDATE)
            sums, norm, times = add_sums(s.sums for s in result.shards), result.grad_norm, result.times
        else:
            bounds = self._shards(n)
            if self.sync_batchnorm and bounds[0][0] == bounds[0][1]:
                for layer in (bn := [b for b in self._bn if b.trainable]) + bn[::-1]:   # join every exchange
                    self._allreduce_sums(np.zeros(2 * layer.channels + 1))
            result = self.node.run(batch, bounds, n, keys, Finish.SLOTS if self.deterministic else Finish.SUM)
            t1 = time.perf_counter()
            sums = self._chain(result.shards, n) if self.deterministic else self._allreduce(result.shards, n)
            t2 = time.perf_counter()
            norm = self.node.apply_update()
            times = {**result.times, "reduce": t2 - t1, "optimizer": time.perf_counter() - t2}
        self.steps += 1
        if not isinstance(self.comm, LocalComm) and (self.steps == 1 or self.steps % self.check_every == 0):
            self.check_in_sync(batch, keys)
        return StepStats.of(sums, norm, times)

    def _shards(self, n: int) -> list[tuple[int, int]]:
        """This rank's shards of a batch of ``n``: its slice, or its run of the micro-shards."""
        if not self.deterministic:
            return [shard_bounds(n, self.size)[self.rank]]
        micro = shard_bounds(n, self.micro_shards)
        return [micro[k] for k in owned_slots(self.micro_shards, self.size, self.rank)]

    def _allreduce(self, shards: list[ShardResult], n: int) -> Sums:
        """model.grads, model.state (weighted by this rank's share) and the sums, added over ranks."""
        m, P, pack = self.model, self.model.params.size, self._pack
        mine = add_sums(s.sums for s in shards)
        share = float(self.rank == 0) if self.sync_batchnorm else mine.count / n   # sync: equal everywhere
        pack[:P] = m.grads
        np.multiply(m.state, np.float32(share), out=pack[P:])
        self.comm.allreduce(pack)
        total = self.comm.allreduce(mine.as_array())
        m.grads[...] = pack[:P]
        m.state[...] = pack[P:]
        return Sums.of_array(total)

    def _chain(self, shards: list[ShardResult], n: int) -> Sums:
        """Deterministic: every rank's slots added in micro-shard order into model.grads/state,
        the partial sum passed along the ranks (dpnn/chain.py); the sums gathered (3 per slot)."""
        grads, states = self.node.slot_arrays(len(shards))
        chain_sum(self.comm, grads, states, [s.sums.count for s in shards], n, self._pack)
        P = self.model.params.size
        self.model.grads[...], self.model.state[...] = self._pack[:P], self._pack[P:]
        return ordered_sums(self.comm, [s.sums for s in shards], self._slots)

    def _allreduce_sums(self, sums: np.ndarray) -> np.ndarray:
        """BatchNorm's ``sync`` hook: per-rank float64 sums -> sums over the global batch."""
        return self.comm.allreduce(np.array(sums, np.float64))

    def evaluation_sums(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> Sums:
        """Sums of the model on (x, y): each rank scores a run of the batches (on its node), the
        batches' sums added in batch order, so any count of ranks and workers gives the same bits."""
        a, b = eval_bounds(len(x), batch_size, self.size)[self.rank]
        parts = self.node.evaluation_parts(x[a:b], y[a:b], batch_size)
        most = -(-len(range(0, len(x), batch_size)) // self.size)       # batches of the busiest rank
        return add_sums(parts) if self.size == 1 else ordered_sums(self.comm, parts, most)

    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> tuple[float, float]:
        """(mean loss, accuracy or nan) of the current parameters on (x, y)."""
        sums = self.evaluation_sums(x, y, batch_size)
        return sums.mean_loss(), sums.accuracy()

    def predict(self, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Outputs (N, ...) of the current parameters in inference mode, computed on the node."""
        return self.node.predict(x, batch_size)

    def broadcast_model(self, root: int = 0) -> None:
        """Parameters, BatchNorm state and optimizer state (step count, lr, moments) from root."""
        m = self.model
        self.comm.bcast(m.params, root)
        self.comm.bcast(m.state, root)
        if m.optimizer is not None:
            m.optimizer.load_state_dict(self.comm.bcast_object(m.optimizer.state_dict(), root))

    def checksum(self, batch: Batch | None = None, keys: np.ndarray | None = None) -> np.ndarray:
        """(7,) uint64: parameters, state, optimizer step, batch, keys, training data. Integer sums
        of raw bits, exact and order-free: equal arrays give equal fingerprints on any CPU."""
        m = self.model
        bits = m.params.view(np.uint32).astype(np.uint64)                      # (P,)
        weights = np.arange(1, bits.size + 1, dtype=np.uint64) % np.uint64(1009)
        fed = 0
        if batch is not None:
            what = batch.x if batch.rows is None else batch.rows
            fed = np.ascontiguousarray(what).reshape(-1).view(np.uint8).sum(dtype=np.uint64)
        key = 0 if keys is None else np.bitwise_xor.reduce(np.asarray(keys, np.uint64))
        return np.array([bits.sum(dtype=np.uint64), (bits * weights).sum(dtype=np.uint64),
                         m.state.view(np.uint32).sum(dtype=np.uint64), getattr(m.optimizer, "t", 0),
                         fed, key, self._data_print], np.uint64)

    def check_in_sync(self, batch: Batch | None = None, keys: np.ndarray | None = None) -> None:
        """Raise RanksDiverged on every rank if any rank's checksum differs from rank 0's."""
        sums = self.comm.allgather(self.checksum(batch, keys))               # (size, 7)
        bad = [r for r in range(self.size) if not np.array_equal(sums[r], sums[0])]
        if not bad:
            return
        if any(sums[r, 6] != sums[0, 6] for r in bad):
            what = "training data (each rank must load the same files)"
        elif any(not np.array_equal(sums[r, 4:6], sums[0, 4:6]) for r in bad):
            what = "batches (different data or seed)"
        else:
            what = "parameters"
        raise RanksDiverged(f"ranks {bad} hold different {what} than rank 0 after step "
                            f"{self.steps}; every rank must load the same data and use the same seed")

    def sync_state(self) -> None:
        """End of an epoch: across ranks, verify every rank agrees (one node is always current)."""
        if not isinstance(self.comm, LocalComm):
            self.check_in_sync()


def data_fingerprint(X: np.ndarray, Y: np.ndarray) -> int:
    """64 bits of a hash of the training set's bytes: ranks that loaded different files differ."""
    h = hashlib.blake2b(digest_size=8)
    for a in (X, Y):
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(memoryview(a).cast("B"))
    return int.from_bytes(h.digest(), "little")
