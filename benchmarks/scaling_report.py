"""The scaling benchmark's report (benchmarks.scaling): derived columns, the text table, the targets, the plot."""
from __future__ import annotations

COLUMNS = [  # (header, width, format of the row value)
    ("scaling", 7, "{kind}"), ("WxT", 5, "{workers}x{threads}"), ("batch", 6, "{batch}"),
    ("samples/s", 10, "{samples_per_s:,.0f}"), ("speedup", 8, "{speedup:.2f}"),
    ("eff", 6, "{efficiency:.0%}"), ("GFLOP/s", 8, "{gflops:.1f}"), ("%peak", 6, "{peak_fraction:.0%}"),
    ("step ms", 8, "{step_ms:.1f}"), ("compute", 8, "{compute_ms:.1f}"), ("strag", 6, "{straggler_ms:.2f}"),
    ("wait", 6, "{wait_ms:.2f}"), ("reduce", 7, "{reduce_ms:.2f}"), ("optim", 6, "{optimizer_ms:.2f}"),
    ("ovh", 5, "{overhead:.1%}"), ("MB/wkr", 7, "{mb_per_worker:.0f}"), ("MB tot", 7, "{mb_total:.0f}"),
    ("start s", 8, "{startup_s:.2f}"), ("/BLAS", 6, "{vs_local}"), ("/torch", 6, "{vs_torch}"),
]


def derive(row: dict, one_worker: dict | None, flops: int, peak_per_core: float, cores: int,
           local: dict, torch: dict) -> dict:
    """Add speedup, efficiency, GFLOP/s, %peak, breakdown (ms), overhead, memory, ratios to a row."""
    n, t = row["workers"], row["threads"]
    used = min(n * t, cores)
    thr = row["samples_per_s"]
    base = one_worker["samples_per_s"] if one_worker else thr
    row["speedup"] = thr / base
    row["efficiency"] = thr / (n * base)                 # = T1 / (N * TN) for strong scaling
    row["cores_used"] = used
    row["gflops"] = thr * flops / 1e9
    row["peak_fraction"] = row["gflops"] / (peak_per_core * used)
    tm = row["times"]
    for k in ("compute", "straggler", "wait", "reduce", "optimizer", "scatter"):
        row[f"{k}_ms"] = tm.get(k, 0.0) * 1e3
    row["step_ms"] = row["step_mean_s"] * 1e3
    # coordinator overhead: everything in a step but the (slowest) worker's compute
    row["overhead"] = max(row["step_mean_s"] - tm.get("compute", 0.0), 0.0) / row["step_mean_s"]
    mem = row.get("worker_peak_mb") or [0.0]
    row["mb_per_worker"] = max(mem)
    row["mb_total"] = sum(mem) + row.get("coordinator_rss_mb", 0.0)
    row["vs_local"] = _ratio(thr, local.get((row["batch"], used)))
    row["vs_torch"] = _ratio(thr, torch.get((row["batch"], used)))
    return row


def _ratio(thr: float, ref: dict | None) -> str:
    return f"{thr / ref['samples_per_s']:.2f}" if ref else "-"


def table(rows: list[dict]) -> str:
    head = " ".join(h.rjust(w) for h, w, _ in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(" ".join(f.format(**r).rjust(w) for _, w, f in COLUMNS))
    return "\n".join(lines)


def baseline_table(local: dict, torch: dict, flops: int, peak: float) -> str:
    lines = [f"{'baseline':<28}{'threads':>8}{'batch':>7}{'samples/s':>11}{'GFLOP/s':>9}{'%peak':>7}"]
    for name, runs in (("dpnn single process (BLAS)", local), ("PyTorch CPU", torch)):
        for (batch, t), r in sorted(runs.items()):
            g = r["samples_per_s"] * flops / 1e9
            lines.append(f"{name:<28}{t:>8}{batch:>7}{r['samples_per_s']:>11,.0f}{g:>9.1f}"
                         f"{g / (peak * t):>7.0%}")
    return "\n".join(lines)


def targets(rows: list[dict], local: dict, torch: dict) -> list[dict]:
    """The issue's targets, each a ratio from this run: {'target', 'value', 'goal', 'met'} or skipped."""
    def find(kind, n, t, b):
        return next((r for r in rows if (r["kind"], r["workers"], r["threads"], r["batch"]) == (kind, n, t, b)),
                    None)
    out = []

    def add(name, value, goal, less=False):
        if value is None:
            out.append({"target": name, "value": None, "goal": goal, "met": None})
        else:
            out.append({"target": name, "value": value, "goal": goal,
                        "met": value < goal if less else value >= goal})
    one, two = find("strong", 1, 1, 64), find("strong", 2, 1, 64)
    t1, t2, l2 = torch.get((64, 1)), torch.get((64, 2)), local.get((64, 2))
    thr = lambda r: r["samples_per_s"] if r else None                       # noqa: E731
    div = lambda a, b: a / b if a is not None and b is not None else None   # noqa: E731
    add("1. 1 worker x 1 thread / PyTorch 1 thread (batch 64)", div(thr(one), thr(t1)), 1.25)
    add("2a. 2 workers x 1 thread / 1 worker (batch 64)", div(thr(two), thr(one)), 1.9)
    add("2b. 2 workers x 1 thread / PyTorch 2 threads", div(thr(two), thr(t2)), 1.5)
    add("2c. 2 workers x 1 thread / dpnn single process, 2 BLAS threads", div(thr(two), thr(l2)), 1.5)
    big = [r for r in rows if r["batch"] == 256 and r["kind"] == "strong"]
    best = max(big, key=lambda r: r["peak_fraction"]) if big else None
    add("3. best fraction of GEMM peak at batch 256 (cores in use)", best["peak_fraction"] if best else None, 0.6)
    add("4a. pool start-up, 2 workers (s)", two["startup_s"] if two else None, 1.0, less=True)
    add("4b. coordinator overhead per step, 2 workers, batch 64", two["overhead"] if two else None, 0.03,
        less=True)
    return out


def targets_text(res: list[dict]) -> str:
    lines = []
    for t in res:
        if t["value"] is None:
            lines.append(f"  [skip] {t['target']}: not measured in this run")
        else:
            v = t["value"]
            shown = f"{v:.1%}" if t["goal"] < 0.5 or "peak" in t["target"] else f"{v:.2f}"
            goal = f"{t['goal']:.0%}" if t["goal"] < 0.5 or "peak" in t["target"] else f"{t['goal']}"
            lines.append(f"  [{'met ' if t['met'] else 'MISS'}] {t['target']}: {shown} (goal "
                         f"{'<' if '4' in t['target'][:2] else '>='} {goal})")
    return "\n".join(lines)


def plot(path: str, rows: list[dict], local: dict, torch: dict, projection: dict, flops: int,
         peak: float, title: str) -> None:
    """Throughput and efficiency against cores: measured points, baselines, projection curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = sorted({(r["kind"], r["batch"] if r["kind"] == "strong" else r["batch"] // r["workers"],
                      r["threads"]) for r in rows})
    for i, (kind, b, t) in enumerate(groups):
        pts = sorted((r["workers"] * t, r["samples_per_s"], r["efficiency"]) for r in rows
                     if r["kind"] == kind and r["threads"] == t
                     and (r["batch"] if kind == "strong" else r["batch"] // r["workers"]) == b)
        label = f"dpnn {kind}, {'batch' if kind == 'strong' else 'per-worker batch'} {b}, {t} thr/worker"
        style = "-o" if kind == "strong" else "--s"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colors[i % 10], label=label)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], style, color=colors[i % 10], label=label)
    for (name, runs, marker) in (("dpnn 1 process, BLAS threads", local, "x"), ("PyTorch CPU", torch, "^")):
        for b in sorted({k[0] for k in runs}):
            pts = sorted((t, r["samples_per_s"]) for (bb, t), r in runs.items() if bb == b)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, ms=9, ls=":",
                    label=f"{name}, batch {b}")
    for j, (name, pts) in enumerate(projection.get("curves", {}).items()):
        c = [p["cores"] for p in pts]
        ax.plot(c, [p["samples_per_s"] for p in pts], lw=1, alpha=0.6, color="0.3",
                ls=(0, (1, 1 + j)), label=f"projection: {name}")
        ax2.plot(c, [p["efficiency"] for p in pts], lw=1, alpha=0.6, color="0.3", ls=(0, (1, 1 + j)),
                 label=f"projection: {name}")
    cmax = max([64] + [p["cores"] for pts in projection.get("curves", {}).values() for p in pts])
    ax.plot([1, cmax], [peak * 1e9 / flops, peak * 1e9 * cmax / flops], color="k", lw=0.8,
            label=f"GEMM-peak limit ({peak:.0f} GFLOP/s/core, {flops / 1e6:.1f} MFLOP/sample)")
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xlabel("cores in use (workers x threads)")
        a.grid(True, which="both", alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel("samples / s")
    ax2.set_ylabel("parallel efficiency")
    ax2.set_ylim(0, 1.1)
    ax.legend(fontsize=6.5, loc="upper left")
    ax2.legend(fontsize=6.5, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
