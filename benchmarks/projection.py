"""Projected throughput past this machine, from the measured phases of a step.

The model follows the design that runs at each core count (one worker per core):

* **1 worker** (``DataParallel`` leaves the update to the coordinator below SHARD_FROM = 2)::

      T(1) = c B + r + o + f1

  c: worker compute per sample, r: the coordinator's copy of the one gradient slot,
  o: its optimizer step over the whole vector, f1: everything else (signalling, batch
  indices) -- each measured in the 1-worker row.

* **n >= 2 workers on one node** (the sharded step of ``dpnn/workers/sharded_update.py``)::

      T(n) = c B / n (1 + w)                 compute, w = straggler wait / compute (measured at 2)
           + s                               barrier latency (measured at 2)
           + [o / n + r (1 + 1/n) / 2] / q(n) each worker: the optimizer on 1/n of the vector and
                                             the sum of n slot chunks (S bytes read), at one core's
                                             speed (o, r) slowed by memory contention q(n)
           + f + n m                         the serial rest: per-worker signalling m = wait / 2 and
                                             the coordinator's own f = (step - busy) - 2 m, where busy
                                             is the span in which some worker computes (measured at 2)

  q(n) is the share of one core's memory bandwidth each of n streaming cores gets:
  measured by the stream test up to this machine's core count (linear in between), beyond
  it the assumed aggregate bandwidth of a node (``node_stream``, in one core's units).

* **K nodes of m cores** (one MPI rank per node, ``DistributedEngine``: the node's workers
  compute and sum their chunks of the slots, the rank copies the gradient into its
  all-reduce buffer and back (2 r), ring all-reduce, then the workers update their chunks
  after a second message)::

      T = c B / (K m) (1 + w) + s + [o / m + r (1 + 1/m) / 2] / q(m) + 2 r + ring(K)
          + f + 2 m m_w,
      ring(K) = 2 (K - 1) alpha + 2 (K - 1) / K * S / beta   (alpha-beta ring all-reduce).

The assumptions are returned as text so the benchmark prints them beside the numbers, and
:func:`check` compares the model with every measured row.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class StepModel:
    """Inputs of the projection: seconds measured in the run, except the marked assumptions."""
    compute_per_sample: float      # c: worker compute per sample on one core (1-worker row)
    wait_fraction: float           # w: straggler wait / compute (2-worker row)
    copy_s: float                  # r: coordinator copies one gradient slot (1-worker row)
    optimizer_s: float             # o: coordinator's optimizer step, whole vector (1-worker row)
    fixed_one_s: float             # f1: the rest of a 1-worker step
    sync_s: float                  # s: barrier latency (2-worker row)
    fixed_s: float                 # f: the coordinator's own serial work (2-worker row)
    message_s: float               # m: signalling per worker (2-worker row: wait / 2)
    grad_bytes: int                # S: size of the flat float32 gradient
    measured_cores: int = 1        # cores of the machine the stream test ran on
    stream_scaling: float = 1.0    # all measured cores streaming vs one (measured)
    node_stream: float = 4.0       # ASSUMED: a node's aggregate memory bandwidth in one core's units
    net_alpha: float = 20e-6       # ASSUMED: all-reduce latency per message, seconds
    net_beta: float = 1.25e9       # ASSUMED: link bandwidth, bytes/s (10 Gbit/s)
    cores_per_node: int = 16       # node size in the multi-node projection

    def share(self, n: int) -> float:
        """q(n): the fraction of one core's memory bandwidth each of n streaming cores gets."""
        if n <= 1:
            return 1.0
        m = self.measured_cores
        at_m = min(1.0, self.stream_scaling / m) if m > 1 else 1.0
        if n <= m:
            return 1.0 + (at_m - 1.0) * (n - 1) / (m - 1)
        return min(at_m, self.node_stream / n)

    def update_time(self, n: int) -> float:
        """Each worker's slot sum + optimizer on its chunk, n >= 2."""
        return (self.optimizer_s / n + self.copy_s * (1 + 1 / n) / 2) / self.share(n)

    def step_time(self, batch: int, cores: int) -> float:
        """Seconds per step for a global ``batch`` on ``cores`` cores (nodes when cores > a node)."""
        c = self.compute_per_sample
        if cores == 1:
            return c * batch + self.copy_s + self.optimizer_s + self.fixed_one_s
        if cores <= self.cores_per_node:
            n = cores
            return (c * batch / n * (1 + self.wait_fraction) + self.sync_s + self.update_time(n)
                    + self.fixed_s + n * self.message_s)
        nodes = -(-cores // self.cores_per_node)
        m = cores // nodes
        return (c * batch / cores * (1 + self.wait_fraction) + self.sync_s + self.update_time(m)
                + 2 * self.copy_s + self.ring_allreduce(nodes) + self.fixed_s + 2 * m * self.message_s)

    def ring_allreduce(self, nodes: int) -> float:
        k, s = nodes, self.grad_bytes
        return 2 * (k - 1) * self.net_alpha + 2 * (k - 1) / k * s / self.net_beta

    def chain_sum(self, nodes: int) -> float:
        """Deterministic mode's ordered sum across ranks (``dpnn.chain``): two pipelined passes
        along the K ranks, each K - 1 + C hops of one chunk (C chunks, as chain.chunk_size cuts)."""
        from dpnn.chain import chunk_size
        if nodes <= 1:
            return 0.0
        values = self.grad_bytes // 4
        chunk = chunk_size(values, nodes)
        hop = self.net_alpha + 4 * chunk / self.net_beta
        return 2 * (nodes - 1 + -(-values // chunk)) * hop

    def assumptions(self) -> list[str]:
        def ms(s):
            return f"{s * 1e3:.2f} ms"
        return [
            f"measured: compute {self.compute_per_sample * 1e6:.0f} us/sample/core, straggler wait "
            f"{self.wait_fraction:.1%} of compute, barrier {ms(self.sync_s)}, slot copy {ms(self.copy_s)} and "
            f"optimizer {ms(self.optimizer_s)} on one core, coordinator {ms(self.fixed_s)} + "
            f"{ms(self.message_s)} per worker per step; memory stream {self.stream_scaling:.2f}x on all "
            f"{self.measured_cores} cores",
            "assumed: compute scales as 1/cores (no cache or clock loss at more cores); straggler wait, "
            "barrier latency and per-worker signalling stay as measured at 2 workers",
            f"assumed: beyond {self.measured_cores} cores a node's memory delivers {self.node_stream:g}x one "
            "core's stream bandwidth in all (a 16-core workstation: ~4 channels), shared by the cores "
            "that update at once",
            f"assumed: beyond {self.cores_per_node} cores, nodes of {self.cores_per_node} cores with one MPI rank "
            f"each (its workers sum and update their chunks; two messages per step), ring all-reduce with "
            f"alpha = {self.net_alpha * 1e6:.0f} us, beta = {self.net_beta * 8 / 1e9:.0f} Gbit/s, not overlapped "
            "with compute",
        ]


def project(model: StepModel, batches: list[int], cores: list[int], per_worker_batch: int | None = None
            ) -> dict:
    """Projected samples/s and efficiency for each strong-scaling batch (and weak scaling)."""
    curves = {}
    for b in batches:
        t1 = model.step_time(b, 1)
        pts = [{"cores": n, "samples_per_s": b / model.step_time(b, n),
                "efficiency": t1 / (n * model.step_time(b, n))} for n in cores]
        curves[f"strong, batch {b}"] = pts
    if per_worker_batch:
        t1 = model.step_time(per_worker_batch, 1)
        pts = []
        for n in cores:
            tn = model.step_time(per_worker_batch * n, n)
            pts.append({"cores": n, "samples_per_s": per_worker_batch * n / tn, "efficiency": t1 / tn})
        curves[f"weak, {per_worker_batch}/worker"] = pts
    return {"model": asdict(model), "assumptions": model.assumptions(), "curves": curves}


def from_measurements(one_worker: dict, two_workers: dict | None, grad_bytes: int, machine: dict | None = None,
                      cores: int = 1, **assumed) -> StepModel:
    """A StepModel from the 1-worker row and the 2-worker row (sharded step) of the same batch.

    Without a 2-worker row, the 2-worker phases are taken as the 1-worker ones (stated)."""
    b1, t1 = one_worker["batch"], one_worker["times"]
    c = t1["compute"] / b1
    fixed_one = max(one_worker["step_mean_s"] - t1["compute"] - t1.get("reduce", 0.0) - t1["optimizer"], 0.0)
    t2 = (two_workers or {}).get("times") or {}
    wait_fraction = t2.get("straggler", 0.0) / t2["compute"] if t2.get("compute") else 0.0
    message = t2.get("wait", 0.0) / 2 if t2 else 0.0
    if "busy" in t2:                  # the measured serial part, less the per-worker signalling
        fixed = max(two_workers["step_mean_s"] - t2["busy"] - 2 * message, 0.0)
    else:
        fixed = t2.get("scatter", 0.0) + t2.get("reduce", 0.0) if t2 else fixed_one
    machine = machine or {}
    return StepModel(c, wait_fraction, t1.get("reduce", 0.0), t1["optimizer"], fixed_one,
                     t2.get("sync", 0.0), fixed, message, grad_bytes, measured_cores=max(1, cores),
                     stream_scaling=machine.get("stream", 1.0), **assumed)


def check(model: StepModel, rows: list[dict]) -> list[dict]:
    """The model's step time beside every measured strong-scaling row with one thread per worker."""
    out = []
    for r in rows:
        if r.get("kind") == "strong" and r.get("threads") == 1:
            predicted = model.step_time(r["batch"], r["workers"])
            out.append({"workers": r["workers"], "batch": r["batch"], "measured_ms": r["step_mean_s"] * 1e3,
                        "model_ms": predicted * 1e3})
    return out
