#!/usr/bin/env python3
"""Which weights do movement scores rank lowest? Takes a `sprig prune --method movement` run's
training state saved *before its first pruning event* (with `--prune-start`, the state of the
last epoch end before it: `train-state.safetensors` in the run's staging directory
`.NAME.partial-*`), prunes the same share of every encoder linear by four rankings and scores each
pruned model on dev with `sprig eval`, with no training after the cut:

  movement   the lowest scores S = -sum(g*w) (what movement pruning removes first)
  inverted   the highest scores
  magnitude  the lowest |w|
  random     a uniform random choice

    scripts/movement-score-diag.py STATE TEACHER_DIR [SHARE ...]     (default shares 0.02 0.05 0.2)

TEACHER_DIR supplies what the state lacks (config.json, the tokenizer, frozen word embeddings):
the run's `--teacher`, or the model it started from when that has a classifier head. Needs numpy
and safetensors (`scripts/torch-venv`) and target/release/sprig; SPRIG overrides the binary.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    state_path, teacher = sys.argv[1], sys.argv[2]
    shares = [float(x) for x in sys.argv[3:]] or [0.02, 0.05, 0.2]
    sprig = os.environ.get("SPRIG", os.path.join(ROOT, "target", "release", "sprig"))
    st = load_file(state_path)
    params = {k[len("param/"):]: v for k, v in st.items() if k.startswith("param/")}
    for k, v in st.items():
        if k.startswith("pruner/aside/"):
            n = k[len("pruner/aside/"):]
            params[n] = params[n] + v.reshape(params[n].shape)
    gw = {k[len("pruner/acc/gw/"):]: v for k, v in st.items() if k.startswith("pruner/acc/gw/")}
    if not gw:
        sys.exit(f"{state_path}: no movement scores (pruner/acc/gw/*): not a movement run's state")
    masks = [k for k in st if k.startswith("pruner/mask/")]
    if any(np.unpackbits(st[k]).min() == 0 for k in masks):
        print("warning: the state's masks already prune weights; the shares below add to them", file=sys.stderr)
    dense = load_file(os.path.join(teacher, "model.safetensors"))
    model = {k: params.get(k[len("bert."):] if k.startswith("bert.") else k, v).astype(np.float32) for k, v in dense.items()}
    root = tempfile.mkdtemp(prefix="movement-score-diag-")
    rng = np.random.default_rng(0)

    def evaluate(weights, tag):
        d = os.path.join(root, tag)
        os.makedirs(d)
        for f in os.listdir(teacher):
            if (f.endswith(".json") and f != "summary.json") or f in ("vocab.txt", "modeling_sprig_bert.py"):
                shutil.copy(os.path.join(teacher, f), d)
        save_file(weights, os.path.join(d, "model.safetensors"))
        out = d + "-eval"
        r = subprocess.run([sprig, "eval", "--model", d, "--task", "rt-sentiment", "--split", "dev", "--out", out], capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"sprig eval failed:\n{r.stderr[-2000:]}")
        with open(os.path.join(out, "eval.json")) as f:
            return json.load(f)["accuracy"]

    print(f"{len(gw)} matrices; dev accuracy unpruned: {evaluate(dict(model), 'base'):.4f}")
    print("| share pruned per matrix | movement (lowest S) | inverted (highest S) | magnitude | random |")
    print("|---|---|---|---|---|")
    for share in shares:
        accs = []
        for how in ["movement", "inverted", "magnitude", "random"]:
            w2 = dict(model)
            for name, g in gw.items():
                key = "bert." + name if "bert." + name in model else name
                w = model[key].ravel().copy()
                s = -g.ravel()
                k = int(round(share * w.size))
                order = {"movement": lambda: np.argsort(s, kind="stable"), "inverted": lambda: np.argsort(-s, kind="stable"),
                         "magnitude": lambda: np.argsort(np.abs(w), kind="stable"), "random": lambda: rng.permutation(w.size)}[how]()
                w[order[:k]] = 0.0
                w2[key] = w.reshape(model[key].shape)
            accs.append(evaluate(w2, f"{how}-{share}"))
        print(f"| {share:.2f} | " + " | ".join(f"{a:.4f}" for a in accs) + " |", flush=True)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
