"""The scaling benchmark's report (benchmarks.scaling): derived columns, the text table, the targets, the plot."""
from __future__ import annotations

COLUMNS = [  # (header, width, format of the row value)
    ("scaling", 7, "{kind}"), ("WxT", 5, "{workers}x{threads}"), ("batch", 6, "{batch}"),
    ("samples/s", 10, "{samples_per_s:,.0f}"), ("speedup", 8, "{speedup:.2f}"),
    ("eff", 6, "{efficiency:.0%}"), ("GFLOP/s", 8, "{gflops:.1f}"), ("%peak", 6, "{peak_fraction:.0%}"),
    ("step ms", 8, "{step_ms:.1f}"), ("compute", 8, "{compute_ms:.1f}"), ("strag", 6, "{straggler_ms:.2f}"),
    ("wait", 6, "{wait_ms:.2f}"), ("sync", 5, "{sync_ms:.2f}"), ("reduce", 7, "{reduce_ms:.2f}"),
    ("update", 7, "{update_ms:.2f}"), ("optim", 6, "{optimizer_ms:.2f}"), ("serial", 6, "{serial:.1%}"),
    ("MB/wkr", 7, "{mb_per_worker:.0f}"), ("MB tot", 7, "{mb_total:.0f}"),
    ("start s", 8, "{startup_s:.2f}"), ("/BLAS", 6, "{vs_local}"), ("/torch", 6, "{vs_torch}"),
]


def derive(row: dict, one_worker: dict | None, flops: int, peak_per_core: float, cores: int,
           local: dict, torch: dict) -> dict:
    """Add speedup, efficiency, GFLOP/s, %peak, breakdown (ms), serial fraction, memory, ratios to a row."""
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
    for k in ("compute", "straggler", "wait", "sync", "reduce", "update", "optimizer", "scatter"):
        row[f"{k}_ms"] = tm.get(k, 0.0) * 1e3
    row["step_ms"] = row["step_mean_s"] * 1e3
    row["serial"] = serial_fraction(row["step_mean_s"], tm)
    mem = row.get("worker_peak_mb") or [0.0]
    row["mb_per_worker"] = max(mem)
    row["mb_total"] = sum(mem) + row.get("coordinator_rss_mb", 0.0)
    row["vs_local"] = _ratio(thr, local.get((row["batch"], used)))
    row["vs_torch"] = _ratio(thr, torch.get((row["batch"], used)))
    return row


def serial_fraction(step_s: float, times: dict) -> float:
    """Share of a step in which no worker computes: (step - busy) / step.

    ``busy`` is the span from the first worker starting the step to the last one finishing it
    (the engine reads both clocks), during which some worker always computes: its forward and
    backward, or its chunk of the slot sum and optimizer. Without it (older engines, other
    backends): (step - compute - update), ``compute`` the slowest worker's forward and
    backward, ``update`` the workers' slot sum and optimizer (absent, so 0, where the
    coordinator does both alone: then they count as serial)."""
    busy = times.get("busy")
    if busy is None:
        busy = times.get("compute", 0.0) + times.get("update", 0.0)
    return max(step_s - busy, 0.0) / step_s


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


GEMM_SCALING_FOR_TARGET_3 = 1.95   # 2 workers / 1 worker is a goal only where the cores themselves scale so


def targets(rows: list[dict], torch: dict, machine: dict, projection: dict) -> list[dict]:
    """Issue 13's targets, each computed from this run's rows.

    ``torch``: {(batch, threads): PyTorch row}; ``machine``: {'gemm', 'stream'} all-core scaling
    ({} on one core); ``projection``: scaling.py's projection with its 'curves'. Each target is
    {'id', 'target', 'value', 'goal', 'op', 'unit', 'met', 'note', 'projected'}; 'met' is None
    where the target does not apply or was not measured, and 'note' says why.
    """
    one = {b: _strong(rows, 1, b) for b in (64, 256)}
    two = {b: _strong(rows, 2, b) for b in (64, 256)}
    gemm = machine.get("gemm")
    if gemm is None:
        not_applicable = "the machine's all-core GEMM scaling was not measured (one core)"
    elif gemm < GEMM_SCALING_FOR_TARGET_3:
        not_applicable = f"GEMM scaling {gemm:.2f}x < {GEMM_SCALING_FOR_TARGET_3:.2f}x"
    else:
        not_applicable = None
    curves = projection.get("curves", {})
    return [
        _target("1a", "1 worker x 1 thread / PyTorch 1 thread, batch 64",
                _over(_thr(one[64]), _thr(torch.get((64, 1)))), ">=", 1.0),
        _target("1b", "1 worker x 1 thread / PyTorch 1 thread, batch 256",
                _over(_thr(one[256]), _thr(torch.get((256, 1)))), ">=", 1.3),
        _target("2a", "2 workers x 1 thread / PyTorch 2 threads, batch 64",
                _over(_thr(two[64]), _thr(torch.get((64, 2)))), ">=", 1.25),
        _target("2b", "2 workers x 1 thread / PyTorch 2 threads, batch 256",
                _over(_thr(two[256]), _thr(torch.get((256, 2)))), ">=", 1.25),
        _target("3", "2 workers / 1 worker, batch 64", _over(_thr(two[64]), _thr(one[64])), ">=", 1.92,
                not_applicable=not_applicable),
        _target("4", "serial fraction, 2 workers, batch 64", two[64]["serial"] if two[64] else None, "<=", 0.03,
                unit="%"),
        _target("5a", "strong-scaling efficiency at 16 cores, batch 256",
                _efficiency(curves.get("strong, batch 256"), 16), ">=", 0.85, unit="%", projected=True),
        _target("5b", "weak-scaling efficiency at 64 cores, 64 samples per worker",
                _efficiency(curves.get("weak, 64/worker"), 64), ">=", 0.95, unit="%", projected=True),
    ]


def _strong(rows: list[dict], workers: int, batch: int) -> dict | None:
    """The strong-scaling row of ``workers`` x 1 thread at global ``batch``, if measured."""
    return next((r for r in rows if (r["kind"], r["workers"], r["threads"], r["batch"])
                 == ("strong", workers, 1, batch)), None)


def _thr(row: dict | None) -> float | None:
    return row["samples_per_s"] if row else None


def _over(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None else None


def _efficiency(curve: list[dict] | None, cores: int) -> float | None:
    return next((p["efficiency"] for p in curve or [] if p["cores"] == cores), None)


def _target(tid: str, text: str, value: float | None, op: str, goal: float, unit: str = "x",
            not_applicable: str | None = None, projected: bool = False) -> dict:
    if value is None:
        met, note = None, "not measured in this run"
    elif not_applicable:
        met, note = None, not_applicable
    else:
        met, note = (value >= goal) if op == ">=" else (value <= goal), None
    return {"id": tid, "target": text, "value": value, "goal": goal, "op": op, "unit": unit, "met": met,
            "note": note, "projected": projected}


def _show(value: float, unit: str) -> str:
    return f"{value:.1%}" if unit == "%" else f"{value:.2f}x"


def _target_line(t: dict) -> str:
    status = "n/a " if t["met"] is None else "MET " if t["met"] else "MISS"
    goal = f"goal {t['op']} {_show(t['goal'], t['unit'])}"
    if t["value"] is None:
        return f"  [{status}] {t['id']}. {t['target']}: {t['note']} ({goal})"
    why = f"; n/a: {t['note']}" if t["note"] else ""
    projected = " (projected, not measured)" if t["projected"] else ""
    return f"  [{status}] {t['id']}. {t['target']}: {_show(t['value'], t['unit'])} ({goal}{why}){projected}"


def targets_text(res: list[dict], machine: dict, cores: int, rows: list[dict]) -> str:
    """The targets block: the machine's own scaling, one line per target, the pool start-up."""
    if machine:
        lines = [f"  the machine itself, all {cores} cores vs one: GEMM {machine['gemm']:.2f}x, memory stream "
                 f"{machine['stream']:.2f}x (target 3 applies from GEMM {GEMM_SCALING_FOR_TARGET_3:.2f}x)"]
    else:
        lines = ["  the machine itself: one core, so no all-core GEMM or memory-stream scaling"]
    lines += [_target_line(t) for t in res]
    two = _strong(rows, 2, 64)
    if two:
        lines.append(f"  pool start-up, 2 workers: {two['startup_s']:.2f} s (information, no goal)")
    return "\n".join(lines)


def measured_groups(rows: list[dict]) -> dict[tuple, list[tuple]]:
    """(kind, batch or per-worker batch, threads) -> sorted points (cores in use, samples/s,
    efficiency, workers, oversubscribed): x is the cores the run could use (workers x threads,
    at most the machine's), so 4 workers on 2 cores sit at 2, marked as oversubscribed."""
    groups: dict[tuple, list[tuple]] = {}
    for r in rows:
        n, t = r["workers"], r["threads"]
        b = r["batch"] if r["kind"] == "strong" else r["batch"] // n
        used = r.get("cores_used", n * t)
        groups.setdefault((r["kind"], b, t), []).append(
            (used, r["samples_per_s"], r["efficiency"], n, n * t > used))
    return {k: sorted(v, key=lambda p: (p[0], p[3])) for k, v in sorted(groups.items())}


def figure(rows: list[dict], local: dict, torch: dict, projection: dict, flops: int, peak: float):
    """The two panels: throughput against the cores measured (measured points, baselines, the
    GEMM-peak limit, projections over that range) and efficiency with the projections to their end."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 5.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xs, ys = [1.0], []
    for i, ((kind, b, t), pts) in enumerate(measured_groups(rows).items()):
        label = f"dpnn {kind}, {'batch' if kind == 'strong' else 'per-worker batch'} {b}, {t} thr/worker"
        style, color = ("-o" if kind == "strong" else "--s"), colors[i % 10]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, label=label)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], style, color=color, label=label)
        for x, y, _, n, over in pts:
            if over:                      # more workers than cores: say it where the point is
                ax.annotate(f"{n} workers on {x} cores", (x, y), fontsize=6.5, xytext=(4, -10),
                            textcoords="offset points", color=color)
        xs += [p[0] for p in pts]
        ys += [p[1] for p in pts]
    for (name, runs, marker) in (("dpnn 1 process, BLAS threads", local, "x"), ("PyTorch CPU", torch, "^")):
        for b in sorted({k[0] for k in runs}):
            pts = sorted((t, r["samples_per_s"]) for (bb, t), r in runs.items() if bb == b)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker, ms=9, ls=":", label=f"{name}, batch {b}")
            xs += [p[0] for p in pts]
            ys += [p[1] for p in pts]
    xmax = 2.0 * max(xs)
    styles = ["--", "-.", ":", (0, (5, 1, 1, 1))]
    shades = plt.cm.viridis([0.15 + 0.7 * j / max(1, len(projection.get("curves", {})) - 1)
                             for j in range(len(projection.get("curves", {})))])
    for j, (name, pts) in enumerate(projection.get("curves", {}).items()):
        line = dict(lw=1.2, color=shades[j], ls=styles[j % len(styles)], label=f"projection: {name}")
        near = [p for p in pts if p["cores"] <= xmax]
        ax.plot([p["cores"] for p in near], [p["samples_per_s"] for p in near], **line)
        ax2.plot([p["cores"] for p in pts], [p["efficiency"] for p in pts], **line)
        ys += [p["samples_per_s"] for p in near]
    ax.plot([1, xmax], [peak * 1e9 / flops, peak * 1e9 * xmax / flops], color="k", lw=0.8,
            label=f"GEMM-peak limit ({peak:.0f} GFLOP/s/core, {flops / 1e6:.1f} MFLOP/sample)")
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xlabel("cores in use (workers x threads, at most the machine's)")
        a.grid(True, which="both", alpha=0.3)
    ax.set_xlim(0.8, xmax)
    ax.set_yscale("log")
    if ys:
        ax.set_ylim(min(ys) / 2, max(ys) * 3)
    ax.set_ylabel("samples / s")
    ax2.set_ylabel("parallel efficiency")
    ax2.set_ylim(0, 1.1)
    ax.legend(fontsize=6.5, loc="upper left")
    ax2.legend(fontsize=6.5, loc="lower left")
    return fig


def plot(path: str, rows: list[dict], local: dict, torch: dict, projection: dict, flops: int,
         peak: float, title: str) -> None:
    """Throughput and efficiency against cores (:func:`figure`), written to ``path``."""
    import matplotlib.pyplot as plt
    fig = figure(rows, local, torch, projection, flops, peak)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
