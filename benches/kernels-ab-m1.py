#!/usr/bin/env python3
"""Markdown table of M = 1 rows from `bench-kernels-peers.py` JSON files of two binaries.

For each shape, op (forward / backward) and format (CSR 90%, BSR 4x1 90%, 2:4), prints sprig's
median and its ratio to the best dense of the same file (PyTorch and NumPy included), for every
file of `--before` and `--after` (alternated runs of the two binaries).

Usage: benches/kernels-ab-m1.py --before B1.json B2.json --after A1.json A2.json [--m 1]
"""
import argparse, json

ap = argparse.ArgumentParser()
ap.add_argument("--before", nargs="+", required=True)
ap.add_argument("--after", nargs="+", required=True)
ap.add_argument("--m", type=int, default=1)
a = ap.parse_args()


def cells(rows, k, n, op, fmt, s):
    dense = min(r["median_ms"] for r in rows if (r["k"], r["n"], r["m"], r["op"], r["format"]) == (k, n, a.m, op, "dense"))
    t = [r["median_ms"] for r in rows if (r["k"], r["n"], r["m"], r["op"], r["format"], r["impl"]) == (k, n, a.m, op, fmt, "sprig")
         and abs(r["sparsity"] - s) < 1e-9]
    return f"{t[0]:.3f} ({dense / t[0]:.2f}x)" if t else "-"


def load_rows(path):
    d = json.load(open(path))
    return d["rows"] if isinstance(d, dict) else d  # {"provenance", "rows"} or a bare list


runs = {side: [load_rows(f) for f in files] for side, files in (("before", a.before), ("after", a.after))}
shapes = sorted({(r["k"], r["n"]) for r in runs["after"][0] if r["m"] == a.m}, key=lambda s: (s[0] * s[1], s))
print(f"| shape, M={a.m} | op | format | before: ms (ratio to best dense), each run | after |")
print("|---|---|---|---|---|")
for k, n in shapes:
    for op in ("forward", "backward"):
        for fmt, s in (("csr", 0.9), ("bsr4x1", 0.9), ("nm2:4", 0.5)):
            b = " / ".join(cells(r, k, n, op, fmt, s) for r in runs["before"])
            f = " / ".join(cells(r, k, n, op, fmt, s) for r in runs["after"])
            print(f"| {k}x{n} | {op} | {fmt} {s:g} | {b} | {f} |")
