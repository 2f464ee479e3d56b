"""Projected throughput past this machine, from a measured step breakdown.

A step of global batch B on n workers (one core each) is modelled as

    T(n) = c * B / n * (1 + w)          compute, c = measured seconds per sample on one core,
                                        w = measured straggler wait as a fraction of compute
         + n * S / bw_reduce            coordinator sums n gradient slots of S bytes
         + t_opt + t_fixed              optimizer step; everything else per step (signalling,
                                        batch copy), both measured with one worker

and across K nodes of m cores (one MPI rank per node, node-local reduction first)

    T = c * B / (K m) * (1 + w) + m * S / bw_reduce + ring(K) + t_opt + t_fixed,
    ring(K) = 2 (K - 1) * alpha + 2 (K - 1) / K * S / beta     (alpha-beta ring all-reduce).

The model's assumptions are returned as text so the benchmark prints them beside the numbers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class StepModel:
    """Inputs of the projection, all measured in the run except the network."""
    compute_per_sample: float      # seconds of worker compute per sample, one worker, one core
    wait_fraction: float           # straggler wait / compute at the largest measured worker count
    reduce_bandwidth: float        # bytes/s the coordinator sums gradient slots at
    optimizer_s: float             # optimizer step (plus clipping norm), seconds
    fixed_s: float                 # everything else per step: signalling, bookkeeping
    grad_bytes: int                # S: size of the flat float32 gradient
    net_alpha: float = 20e-6       # all-reduce latency per message, seconds (TCP over Ethernet)
    net_beta: float = 1.25e9       # link bandwidth, bytes/s (10 Gbit/s)
    cores_per_node: int = 16       # cores of each node in the multi-node projection

    def step_time(self, batch: int, cores: int) -> float:
        """Seconds per step for a global ``batch`` on ``cores`` cores (nodes when cores > a node)."""
        nodes = max(1, -(-cores // self.cores_per_node)) if cores > self.cores_per_node else 1
        local = cores // nodes
        t = self.compute_per_sample * batch / cores * (1.0 + self.wait_fraction)
        t += local * self.grad_bytes / self.reduce_bandwidth + self.optimizer_s + self.fixed_s
        if nodes > 1:
            t += self.ring_allreduce(nodes)
        return t

    def ring_allreduce(self, nodes: int) -> float:
        k, s = nodes, self.grad_bytes
        return 2 * (k - 1) * self.net_alpha + 2 * (k - 1) / k * s / self.net_beta

    def assumptions(self) -> list[str]:
        return [
            f"compute scales as 1/cores at the measured {self.compute_per_sample * 1e6:.0f} us/sample/core "
            "(no memory-bandwidth, cache or clock-speed loss at higher core counts)",
            f"straggler wait stays {self.wait_fraction:.1%} of compute (as measured at the largest worker count)",
            f"coordinator sums one {self.grad_bytes / 1e6:.2f} MB gradient slot per local worker at "
            f"{self.reduce_bandwidth / 1e9:.1f} GB/s (measured); optimizer {self.optimizer_s * 1e3:.2f} ms "
            f"and other per-step overhead {self.fixed_s * 1e3:.2f} ms stay constant (not sharded)",
            f"beyond {self.cores_per_node} cores: nodes of {self.cores_per_node} cores, one MPI rank each, "
            f"ring all-reduce with alpha = {self.net_alpha * 1e6:.0f} us, beta = {self.net_beta * 8 / 1e9:.0f} Gbit/s "
            "(assumed, not measured), not overlapped with compute",
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


def from_measurements(one_worker: dict, many_workers: dict | None, grad_bytes: int, **network) -> StepModel:
    """A StepModel from two table rows (1 worker, and the largest worker count) of the same batch."""
    b1, t1 = one_worker["batch"], one_worker["times"]
    c = t1["compute"] / b1
    ref = many_workers or one_worker
    tn, n = ref["times"], ref["workers"]
    wait_fraction = tn.get("straggler", 0.0) / tn["compute"] if tn["compute"] > 0 else 0.0
    if ref.get("sharded_optimizer"):      # the workers summed the slots: no coordinator figure there
        tn, n = t1, 1
    reduce_bw = n * grad_bytes / tn["reduce"] if tn.get("reduce", 0.0) > 0 else 5e9
    fixed = max(one_worker["step_mean_s"] - t1["compute"] - t1.get("reduce", 0.0) - t1["optimizer"], 0.0)
    return StepModel(c, wait_fraction, reduce_bw, t1["optimizer"], fixed, grad_bytes, **network)
