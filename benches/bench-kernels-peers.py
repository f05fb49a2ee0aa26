#!/usr/bin/env python3
"""Side-by-side sparse-kernel benchmark: sprig's rows and PyTorch / NumPy / SciPy on the same shapes.

For every (K, N, M) cell of the grid, alternately: `sprig bench kernels --shape KxN --m M` (a
subprocess, RAYON_NUM_THREADS=--threads), then, in this process, PyTorch dense linear (F.linear),
torch.sparse CSR (CSR @ Xᵀ), NumPy dense (X @ Wᵀ, OpenBLAS) and SciPy CSR (CSR @ Xᵀ) on the same
shapes and sparsities, forward only, medians of several runs (torch with --threads threads and
OMP_WAIT_POLICY=PASSIVE). --sprig-json uses stored sprig rows instead; --no-sprig skips sprig.
Writes all rows as JSON `[{k, n, m, sparsity, format, op, impl, median_ms}]`, a markdown table of
speedups against the best dense of all implementations (PyTorch and NumPy included) for each
(K, N, M, op), the crossover sparsity per (K, N, M) and an SVG plot of speedup vs sparsity.
Grids: --quick (K=384 N=1536, M 1 and 512, 50%/90%), --final (K=384 N=1536 at M 1/32/512/4096 and
the other four shapes at M 1 and 512, all 6 sparsities: ~10 minutes on 2 vCPUs), default
the full grid (5 shapes x M 1/32/512/4096 x 6 sparsities; about an hour here).

Usage:
  PY=$(scripts/torch-venv --print-python)     # or any python with numpy + scipy (+ torch)
  $PY benches/bench-kernels-peers.py [--quick] [--sprig target/release/sprig] [--sprig-json F]
      [--threads 2] [--json OUT.json] [--md OUT.md] [--svg OUT.svg]
torch is optional (its rows are skipped when it is missing).
"""
import argparse, json, math, os, platform, subprocess, sys, tempfile, time, datetime

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from provenance import provenance, rel_command  # noqa: E402


def load_rows(path):
    """Rows of a kernels JSON: a bare list (older files, `sprig bench kernels`) or {"provenance", "rows"}."""
    d = json.load(open(path))
    return d["rows"] if isinstance(d, dict) else d

FULL = dict(shapes=[(384, 1536), (1536, 384), (768, 3072), (3072, 768), (768, 768)],
            ms=[1, 32, 512, 4096], sparsities=[0.5, 0.7, 0.8, 0.9, 0.95, 0.98])
QUICK = dict(shapes=[(384, 1536)], ms=[1, 512], sparsities=[0.5, 0.9])
# The reduced grid of the recorded pass (fits ~10 minutes on the loaded 2-vCPU VM): the headline
# shape at every M, the other four shapes at M = 1 and 512; all six sparsities, 4x1 and 2:4.
FINAL = dict(shapes=[(384, 1536)], ms=[1, 32, 512, 4096], sparsities=FULL["sparsities"],
             extra=[(k, n, m) for k, n in FULL["shapes"][1:] for m in (1, 512)])


def cells(grid):
    """(K, N, M) cells of a grid, in run order."""
    out = [(k, n, m) for k, n in grid["shapes"] for m in grid["ms"]]
    return out + [c for c in grid.get("extra", []) if c not in out]


def median_ms(f, seconds=0.3):
    f()
    t = time.perf_counter(); f(); once = time.perf_counter() - t
    reps = max(3, min(25, int(seconds / max(once, 1e-9))))
    v = []
    for _ in range(reps):
        t = time.perf_counter(); f(); v.append((time.perf_counter() - t) * 1e3)
    v.sort()
    return v[len(v) // 2]


def peers(cell_list, sparsities, threads, seconds, rows, seed=0):
    import numpy as np
    import scipy.sparse as sp
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        torch = None
        print("torch not found: skipping its rows", file=sys.stderr)
    rng = np.random.default_rng(seed)
    def row(k, n, m, s, fmt, impl, t):
        r = dict(k=k, n=n, m=m, sparsity=s, format=fmt, op="forward", impl=impl, median_ms=t)
        print(f"K={k:<5} N={n:<5} M={m:<5} {s:5.2f} {fmt:<6} {impl:<13} {t:10.4f} ms", file=sys.stderr)
        rows.append(r)
    for k, n, m in cell_list:
        w = rng.uniform(-1, 1, (n, k)).astype(np.float32)
        b = rng.uniform(-1, 1, n).astype(np.float32)
        x = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        row(k, n, m, 0.0, "dense", "numpy", median_ms(lambda: x @ w.T + b, seconds))
        if torch is not None:
            tx, tw, tb = map(torch.from_numpy, (x, w, b))
            with torch.no_grad():
                row(k, n, m, 0.0, "dense", "torch", median_ms(lambda: torch.nn.functional.linear(tx, tw, tb), seconds))
        for s in sparsities:
            wm = w * (rng.random((n, k)) >= s)
            csr = sp.csr_matrix(wm)
            row(k, n, m, s, "csr", "scipy", median_ms(lambda: (csr @ x.T).T + b, seconds))
            if torch is not None:
                tcsr = torch.from_numpy(wm).to_sparse_csr()
                txt = torch.from_numpy(np.ascontiguousarray(x.T))
                with torch.no_grad():
                    row(k, n, m, s, "csr", "torch", median_ms(lambda: (tcsr @ txt).T + tb, seconds))


def crossover(rows):
    """Per (K, N, M): the sparsity where sprig's CSR forward meets the best dense forward (linear
    interpolation of log speedup between grid sparsities); None when it never does."""
    out = {}
    for k, n, m in sorted({(r["k"], r["n"], r["m"]) for r in rows}):
        cell = [r for r in rows if (r["k"], r["n"], r["m"], r["op"]) == (k, n, m, "forward")]
        dense = [r["median_ms"] for r in cell if r["format"] == "dense"]
        pts = sorted((r["sparsity"], r["median_ms"]) for r in cell if r["format"] == "csr" and r["impl"] == "sprig")
        if not dense or not pts:
            continue
        best = min(dense)
        sp_ = [(s, math.log(best / t)) for s, t in pts]
        x = None
        if sp_[0][1] >= 0:
            x = f"<= {sp_[0][0]:.2f}"
        else:
            for (s0, v0), (s1, v1) in zip(sp_, sp_[1:]):
                if v0 < 0 <= v1:
                    x = f"{s0 + (s1 - s0) * (-v0) / (v1 - v0):.2f}"
                    break
        out[(k, n, m)] = x or f"> {sp_[-1][0]:.2f}"
    return out


def table(rows):
    """Markdown: per (K, N, M, op), best dense and each sparse row's speedup against it."""
    out = []
    keys = sorted({(r["k"], r["n"], r["m"], r["op"]) for r in rows})
    out.append("| K | N | M | op | best dense (impl) | format | sparsity | impl | ms | speedup vs best dense |")
    out.append("|---|---|---|---|---|---|---|---|---|---|")
    for k, n, m, op in keys:
        cell = [r for r in rows if (r["k"], r["n"], r["m"], r["op"]) == (k, n, m, op)]
        dense = [r for r in cell if r["format"] == "dense"]
        if not dense:
            continue
        best = min(dense, key=lambda r: r["median_ms"])
        for r in sorted(cell, key=lambda r: (r["format"] != "dense", r["format"], r["sparsity"], r["impl"])):
            sp_ = best["median_ms"] / r["median_ms"]
            out.append(f"| {k} | {n} | {m} | {op} | {best['median_ms']:.4f} ({best['impl']}) | {r['format']} | "
                       f"{r['sparsity']:.2f} | {r['impl']} | {r['median_ms']:.4f} | {sp_:.2f}x |")
    return "\n".join(out)


def svg(rows, k, n, path):
    """Speedup vs sparsity (CSR forward, K, N fixed), one line per (M, impl); a plain SVG."""
    series = {}
    for m in sorted({r["m"] for r in rows if r["k"] == k and r["n"] == n}):
        dense = [r for r in rows if (r["k"], r["n"], r["m"], r["op"], r["format"]) == (k, n, m, "forward", "dense")]
        if not dense:
            continue
        best = min(d["median_ms"] for d in dense)
        for r in rows:
            if (r["k"], r["n"], r["m"], r["op"]) == (k, n, m, "forward") and r["format"] in ("csr", "bsr4x1"):
                series.setdefault(f"M={m} {r['format']} {r['impl']}", []).append((r["sparsity"], best / r["median_ms"]))
    W, H, L, B = 760, 460, 60, 40
    ymax = max([s for v in series.values() for _, s in v] + [2.0])
    X = lambda s: L + (s - 0.45) / (1.0 - 0.45) * (W - L - 220)
    Y = lambda v: H - B - v / ymax * (H - B - 20)
    colors = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666",
              "#1f78b4", "#b2df8a", "#fb9a99", "#cab2d6"]
    e = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
         f'<text x="{L}" y="14">forward speedup vs best dense, K={k} N={n} (1 = break-even)</text>',
         f'<line x1="{L}" y1="{Y(1)}" x2="{W-220}" y2="{Y(1)}" stroke="#999" stroke-dasharray="4"/>',
         f'<line x1="{L}" y1="{H-B}" x2="{W-220}" y2="{H-B}" stroke="black"/>',
         f'<line x1="{L}" y1="20" x2="{L}" y2="{H-B}" stroke="black"/>']
    for s in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        e.append(f'<text x="{X(s)-8}" y="{H-B+15}">{s:.1f}</text>')
    for t in range(0, int(ymax) + 1, max(1, int(ymax) // 6)):
        e.append(f'<text x="{L-25}" y="{Y(t)+4}">{t}x</text>')
    for i, (name, pts) in enumerate(sorted(series.items())):
        c = colors[i % len(colors)]
        pts.sort()
        e.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="' +
                 " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in pts) + '"/>')
        e.append(f'<text x="{W-210}" y="{30+14*i}" fill="{c}">{name}</text>')
    e.append("</svg>")
    open(path, "w").write("\n".join(e))


def run_sprig(a, k, n, m, sparsities):
    fd, tmp = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    cmd = [a.sprig, "bench", "kernels", "--json", tmp, "--shape", f"{k}x{n}", "--m", str(m),
           "--sparsity", ",".join(str(s) for s in sparsities), "--seconds", str(a.seconds)]
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    try:
        subprocess.run(cmd, check=True, env=env)
        return load_rows(tmp)
    finally:
        os.unlink(tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true")
    g.add_argument("--final", action="store_true")
    ap.add_argument("--sprig", default="target/release/sprig")
    ap.add_argument("--sprig-json", help="use these sprig rows instead of running sprig")
    ap.add_argument("--no-sprig", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=0.3, help="target seconds per cell")
    ap.add_argument("--json"); ap.add_argument("--md"); ap.add_argument("--svg")
    a = ap.parse_args()
    grid = QUICK if a.quick else FINAL if a.final else FULL
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if a.sprig_json is None and not a.no_sprig and not os.path.exists(a.sprig):
        sys.exit(f"{a.sprig} not found: build it with `cargo build --release -p sprig` or pass --sprig")
    rows = load_rows(a.sprig_json) if a.sprig_json else []
    load0 = os.getloadavg()[0]
    t0 = time.time()
    for cell in cells(grid):
        if not a.sprig_json and not a.no_sprig:
            rows += run_sprig(a, *cell, grid["sparsities"])
        peers([cell], grid["sparsities"], a.threads, a.seconds, rows, seed=cell[0] * 31 + cell[1] * 7 + cell[2])
    command = rel_command(" ".join([os.path.relpath(sys.argv[0], os.getcwd())] + sys.argv[1:]))
    prov = provenance(command, threads=a.threads)
    head = (f"machine: {prov['machine']['cpu']} ({prov['machine']['simd']}), {os.cpu_count()} CPUs, threads {a.threads}; "
            f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
            f"1-min load average at start {load0:.2f}, at end {os.getloadavg()[0]:.2f}; "
            f"wall {time.time() - t0:.0f} s; commit {prov['commit']}; command: {command}")
    cx = crossover(rows)
    cx_md = "| K | N | M | CSR forward break-even sparsity vs best dense |\n|---|---|---|---|\n" + \
        "\n".join(f"| {k} | {n} | {m} | {v} |" for (k, n, m), v in sorted(cx.items()))
    md = head + "\n\n" + cx_md + "\n\n" + table(rows) + "\n"
    print(md)
    if a.json:
        prov["load_average_1min"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        tmp = a.json + ".tmp"; json.dump({"provenance": prov, "rows": rows}, open(tmp, "w"), indent=1); os.replace(tmp, a.json)
    if a.md:
        tmp = a.md + ".tmp"; open(tmp, "w").write(md); os.replace(tmp, a.md)
    if a.svg:
        tmp = a.svg + ".tmp"; svg(rows, 384, 1536, tmp); os.replace(tmp, a.svg)


if __name__ == "__main__":
    main()
