#!/usr/bin/env python3
"""Overlap of the pruned sets of sprig ticket masks, and of one-shot global magnitude of θ0.

usage: mask-overlap.py MODEL_SAFETENSORS NAME=CKPT_DIR [NAME=CKPT_DIR ...]
Each CKPT_DIR is a sprig sparse checkpoint (masks.safetensors: U8 keep-bits, bit i = bit i%8 of
byte i/8). Adds "one-shot |θ0|": the global magnitude mask of the model's weights at the first
checkpoint's sparsity. Prints a Markdown table of Jaccard indices |A∩B| / |A∪B| of pruned sets.
Needs numpy and safetensors (e.g. the interpreter of scripts/torch-venv).
"""
import sys
import numpy as np
from safetensors.numpy import load_file


def keep_bits(d):
    m = load_file(d + "/masks.safetensors")
    return {k: np.unpackbits(m[k].ravel(), bitorder="little").astype(bool) for k in m}


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    w0 = load_file(sys.argv[1])
    masks = {a.split("=", 1)[0]: keep_bits(a.split("=", 1)[1]) for a in sys.argv[2:]}
    first = next(iter(masks.values()))
    keys = sorted(first)
    for name, m in masks.items():
        if sorted(m) != keys:
            sys.exit(f"{name}: its masks name other tensors than the first checkpoint's")
    def w(k):
        for c in (k, "bert." + k):
            if c in w0:
                return np.abs(w0[c].ravel())
        sys.exit(f"{sys.argv[1]} has no tensor {k}")
    n = {k: w(k).size for k in keys}
    for name, m in masks.items():
        for k in keys:
            m[k] = m[k][: n[k]]  # drop the padding bits of the last byte
    pruned = {name: ~np.concatenate([m[k] for k in keys]) for name, m in masks.items()}
    s = float(next(iter(pruned.values())).mean())
    allw = np.concatenate([w(k) for k in keys])
    thr = np.sort(allw)[int(round(s * allw.size))]
    pruned["one-shot |θ0|"] = np.concatenate([w(k) < thr for k in keys])
    names = list(pruned)
    print("sparsity of the pruned sets: " + ", ".join(f"{k} {v.mean():.4f}" for k, v in pruned.items()))
    print("\n| Jaccard of pruned sets | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for a in names:
        cells = [f"{(pruned[a] & pruned[b]).sum() / (pruned[a] | pruned[b]).sum():.3f}" for b in names]
        print(f"| {a} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
