#!/usr/bin/env python3
"""Which weights did a pruning run's masks remove? For each encoder linear, the share of the
dense model's largest-|w| weights (top 20% of the matrix) that the run's current mask prunes,
against the matrix's sparsity (what a random mask would prune of them) and 0 (magnitude).

    scripts/movement-mask-diag.py STATE DENSE_DIR

STATE is a `train-state.safetensors` of an unfinished `sprig prune` run (its staging directory
`.NAME.partial-*`; masks under `pruner/mask/`) or a `masks.safetensors` of a finished one; DENSE_DIR
holds the dense model (`model.safetensors`, e.g. the teacher). Needs numpy and safetensors
(`scripts/torch-venv`).
"""
import sys

import numpy as np
from safetensors.numpy import load_file


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    state = load_file(sys.argv[1])
    dense = load_file(sys.argv[2] + "/model.safetensors")
    rows = []
    for key, bits in state.items():
        name = key[len("pruner/mask/"):] if key.startswith("pruner/mask/") else key
        if key.startswith("pruner/") and not key.startswith("pruner/mask/"):
            continue
        w = dense.get(name, dense.get("bert." + name))
        if w is None or bits.dtype != np.uint8:
            continue
        w = w.ravel()
        keep = np.unpackbits(bits, bitorder="little")[: w.size].astype(bool)
        top = np.argsort(-np.abs(w))[: w.size // 5]
        rows.append((name, 1 - keep.mean(), 1 - keep[top].mean()))
    if not rows:
        sys.exit(f"no masks of {sys.argv[2]}'s tensors in {sys.argv[1]}")
    sparsity = np.mean([r[1] for r in rows])
    top = np.mean([r[2] for r in rows])
    print(f"matrices {len(rows)}, mean sparsity {sparsity:.3f}; share of the top-20% |w| pruned: "
          f"this mask {top:.3f} (a random mask {sparsity:.3f}, magnitude 0)")
    for name, s, t in rows:
        print(f"  {name}: sparsity {s:.3f}, top-20% pruned {t:.3f}")


if __name__ == "__main__":
    main()
