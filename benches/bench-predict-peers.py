#!/usr/bin/env python3
"""Inference side by side: sprig vs PyTorch vs ONNX Runtime on the same pruned classifier.

The checkpoint is a classifier directory written by sprig (`sprig finetune`, `sprig export`):
PyTorch loads it as written (`AutoModelForSequenceClassification.from_pretrained(dir,
trust_remote_code=True)`: sprig's modeling file, the pruned weights stored dense with zeros);
ONNX Runtime runs the same model exported once with `torch.onnx.export` into a temporary
directory; sprig runs `sprig bench predict` (the model loaded and compiled as `sprig predict`
does it, each pruned linear in its fastest format; its dense masked model is timed too).

Each round runs PyTorch, ONNX Runtime and sprig one after the other on the same batch x seq of
random token ids (all real tokens) and the same thread count, so they share the machine's noise;
medians and ranges are over all timed runs of all rounds. Tokenization is excluded everywhere.
Prints a markdown table (ms, and sprig sparse / peer ratios: below 1 means sprig is faster);
--out FILE.md also writes FILE.md and FILE.json (`{provenance, config, results}`).

Usage (in the venv of scripts/torch-venv --with-onnxruntime; benches/bench-predict-peers wraps it):
  python benches/bench-predict-peers.py --model DIR [--batch 1,32] [--seq 128] [--threads 2]
      [--rounds 3] [--warmup 2] [--runs 5] [--sprig target/release/sprig] [--formats auto]
      [--int8] [--out FILE.md]
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from provenance import ROOT, provenance, rel_command  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="classifier directory written by sprig")
    ap.add_argument("--batch", default="1,32", help="batch sizes, comma-separated")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per round and side")
    ap.add_argument("--sprig", default=os.path.join(ROOT, "target", "release", "sprig"))
    ap.add_argument("--formats", default="auto", help="sprig's --formats")
    ap.add_argument("--int8", action="store_true", help="also time sprig's int8 model (sprig bench predict --int8)")
    ap.add_argument("--out", help="write FILE.md and FILE.json (temp file + rename)")
    a = ap.parse_args()
    try:
        a.batches = [int(b) for b in a.batch.split(",")]
    except ValueError:
        ap.error(f"--batch must be comma-separated integers, got {a.batch!r}")
    for name in ("seq", "threads", "rounds", "runs"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be at least 1")
    if a.warmup < 0 or any(b < 1 for b in a.batches):
        ap.error("--warmup must be >= 0 and --batch values >= 1")
    if not os.path.isfile(os.path.join(a.model, "config.json")):
        ap.error(f"--model {a.model}: config.json not found (pass a classifier directory written by sprig)")
    if not os.access(a.sprig, os.X_OK):
        ap.error(f"{a.sprig} not found; build it first: cargo build --release -p sprig")
    return a


def timed(f, warmup, runs):
    for _ in range(warmup):
        f()
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        f()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def inputs(batch, seq, vocab, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(min(1000, vocab - 1), vocab, (batch, seq), generator=g)
    return ids, torch.ones_like(ids), torch.zeros_like(ids)


def export_onnx(model, path, vocab):
    import torch
    ids, mask, types = inputs(2, 16, vocab)
    # The TorchScript exporter (dynamo=False) needs no onnxscript; dynamic batch and sequence.
    torch.onnx.export(model, (ids, mask, types), path, input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["logits"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "token_type_ids")}
                      | {"logits": {0: "batch"}})


def sprig_round(a, batch, tmp, r):
    out = os.path.join(tmp, f"sprig-{batch}-{r}.json")
    cmd = [a.sprig, "bench", "predict", "--model", a.model, "--batch", str(batch), "--seq", str(a.seq),
           "--runs", str(a.runs), "--warmup", str(a.warmup), "--formats", a.formats, "--json", out] + (["--int8"] if a.int8 else [])
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), SPRIG_LOG="warn")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"bench-predict-peers: {' '.join(map(shlex.quote, cmd))} failed:\n{p.stderr}")
    with open(out) as f:
        return json.load(f)["rows"][0]


def stats(xs):
    return {"median_ms": statistics.median(xs), "min_ms": min(xs), "max_ms": max(xs), "runs_ms": xs}


def fmt(s):
    return f"{s['median_ms']:.1f} ({s['min_ms']:.1f}-{s['max_ms']:.1f})"


def atomic(path, content):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, t = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(content)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(t, 0o666 & ~umask)
    os.replace(t, path)


def main():
    a = parse_args()
    cmdline = " ".join(shlex.quote(c) for c in ["benches/bench-predict-peers.py"] + sys.argv[1:])
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see benches/bench-train-step
    import torch
    import onnxruntime as ort
    import transformers
    torch.set_num_threads(a.threads)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(a.model, trust_remote_code=True).eval()
    vocab = model.config.vocab_size
    tmp = tempfile.mkdtemp(prefix="sprig-bench-predict-")
    onnx_path = os.path.join(tmp, "model.onnx")
    import warnings
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes; checked below
        export_onnx(model, onnx_path, vocab)
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    # No spin-waiting between ops, as PyTorch's OMP_WAIT_POLICY=PASSIVE: on a shared machine a
    # spinning pool is much slower (see benches/bench-train-step).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    raw = {b: {"pytorch": [], "onnxruntime": [], "sprig_dense": [], "sprig_sparse": [], "sprig_rows": []} for b in a.batches}
    if a.int8:
        for b in a.batches:
            raw[b]["sprig_int8"] = []
    checks = {}
    for r in range(1, a.rounds + 1):
        for b in a.batches:
            ids, mask, types = inputs(b, a.seq, vocab)
            feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "token_type_ids": types.numpy()}
            print(f"round {r}/{a.rounds}, batch {b}: pytorch, onnxruntime, sprig", file=sys.stderr)
            with torch.no_grad():
                raw[b]["pytorch"] += timed(lambda: model(input_ids=ids, attention_mask=mask, token_type_ids=types), a.warmup, a.runs)
                if r == 1:
                    pt = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits.numpy()
                    ox = sess.run(["logits"], feed)[0]
                    checks[b] = float(abs(pt - ox).max())
            raw[b]["onnxruntime"] += timed(lambda: sess.run(["logits"], feed), a.warmup, a.runs)
            row = sprig_round(a, b, tmp, r)
            raw[b]["sprig_dense"] += row["dense"]["runs_ms"]
            raw[b]["sprig_sparse"] += row["sparse"]["runs_ms"]
            if a.int8:
                raw[b]["sprig_int8"] += row["int8"]["runs_ms"]
            raw[b]["sprig_rows"].append(row)
    results = []
    for b in a.batches:
        res = {k: stats(v) for k, v in raw[b].items() if k != "sprig_rows"}
        first = raw[b]["sprig_rows"][0]
        sp = res["sprig_sparse"]["median_ms"]
        results.append({
            "batch": b, "seq": a.seq, "threads": a.threads, **res,
            "sprig_sparse_over_pytorch": sp / res["pytorch"]["median_ms"],
            "sprig_sparse_over_onnxruntime": sp / res["onnxruntime"]["median_ms"],
            "sprig_dense_over_pytorch": res["sprig_dense"]["median_ms"] / res["pytorch"]["median_ms"],
            "sprig_formats": first["formats"], "sprig_sparsity": first["sparsity"],
            "max_abs_logit_diff_pytorch_onnxruntime": checks[b],
        })
        if a.int8:
            q = res["sprig_int8"]["median_ms"]
            results[-1].update({"sprig_int8_over_pytorch": q / res["pytorch"]["median_ms"],
                                "sprig_int8_over_onnxruntime": q / res["onnxruntime"]["median_ms"]})
    sparsity = results[0]["sprig_sparsity"]
    lines = [f"### Inference, {rel_command(os.path.abspath(a.model))} (encoder linears {sparsity:.0%} sparse), seq {a.seq}, "
             f"{a.threads} threads, f32", "",
             "| batch | PyTorch ms | ONNX Runtime ms | sprig dense ms | sprig sparse ms | sprig sparse / PyTorch | sprig sparse / ORT | sprig formats |",
             "|---|---|---|---|---|---|---|---|"]
    for x in results:
        lines.append(f"| {x['batch']} | {fmt(x['pytorch'])} | {fmt(x['onnxruntime'])} | {fmt(x['sprig_dense'])} | "
                     f"{fmt(x['sprig_sparse'])} | {x['sprig_sparse_over_pytorch']:.2f} | {x['sprig_sparse_over_onnxruntime']:.2f} | "
                     f"{', '.join(f'{k} {v}' for k, v in x['sprig_formats'].items())} |")
    if a.int8:
        lines += ["", "| batch | sprig int8 ms | int8 / PyTorch | int8 / ORT | int8 throughput over PyTorch |",
                  "|---|---|---|---|---|"]
        for x in results:
            lines.append(f"| {x['batch']} | {fmt(x['sprig_int8'])} | {x['sprig_int8_over_pytorch']:.2f} | "
                         f"{x['sprig_int8_over_onnxruntime']:.2f} | {1 / x['sprig_int8_over_pytorch']:.2f}x |")
    prov = provenance(cmdline, threads=a.threads, extra={
        "torch": torch.__version__, "transformers": transformers.__version__, "onnxruntime": ort.__version__,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")})
    lines += ["", f"Medians (min-max) over {a.rounds} rounds x {a.runs} timed runs after {a.warmup} warm-up runs per round; "
              "PyTorch, ONNX Runtime and sprig alternate within each round. Tokenization excluded. "
              "max |logit diff| PyTorch vs ONNX Runtime: "
              + ", ".join(f"batch {x['batch']}: {x['max_abs_logit_diff_pytorch_onnxruntime']:.1e}" for x in results) + ".",
              f"- machine: {prov['machine']['cpu']}, {prov['machine']['cpus']} CPUs; sprig kernels: {prov['machine']['simd']}",
              f"- versions: torch {prov['torch']}, transformers {prov['transformers']}, onnxruntime {prov['onnxruntime']}; "
              f"PyTorch with OMP_WAIT_POLICY={prov['omp_wait_policy']}",
              f"- date: {prov['date']}, commit {prov['commit']}",
              f"- command: `{prov['command']}`"]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if a.out:
        atomic(a.out, text)
        base = a.out[:-3] if a.out.endswith(".md") else a.out
        for x in results:
            x["sprig_rounds"] = raw[x["batch"]]["sprig_rows"]
        config = {k: getattr(a, k) for k in ("batches", "seq", "threads", "rounds", "warmup", "runs", "formats", "int8")}
        config["model"] = rel_command(os.path.abspath(a.model))
        atomic(base + ".json", json.dumps({"provenance": prov, "config": config, "results": results}, indent=1) + "\n")
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
