#!/usr/bin/env python3
"""PyTorch side of sprig's training-step benchmark.

Model: Hugging Face `transformers.BertModel` (the MiniLM-L6 checkpoint in MODEL_DIR) + masked mean
pooling + a new linear classification head (2 classes), cross-entropy loss, torch.optim.AdamW
(lr 2e-5, weight decay 0.01; Loshchilov & Hutter 2019), dropout 0.1 in train mode. Inputs are
seeded random token ids in [0, vocab) with a full attention mask and random labels.

Timed separately, each over --runs iterations after --warmup untimed ones (medians, all runs listed):
  forward_ms        eval mode, torch.no_grad(): encoder + pooling + head
  train_forward_ms  train mode: encoder + pooling + head + loss (builds the autograd graph)
  backward_ms       loss.backward()
  optimizer_ms      optimizer.step() + optimizer.zero_grad(set_to_none=True)
  step_ms           the three above, one full training step
  peak_rss_mb       the process's peak resident set size (getrusage ru_maxrss) at the end

--sparsity P zeroes a fraction P of each encoder linear weight by magnitude with
torch.nn.utils.prune.l1_unstructured (masked dense: weight = weight_orig * weight_mask in a forward
pre-hook), which is how PyTorch users prune; it costs time rather than saving any.

On a shared machine set OMP_WAIT_POLICY=PASSIVE (benches/bench-train-step does): with PyTorch's
default spin-waiting OpenMP threads, other processes on the 2 CPUs made every op 2-10x slower here.

Usage (in the venv made by scripts/torch-venv):
  python benches/bench-train-step-torch.py --model-dir DIR --batch 32 --seq 128 --threads 2 \
      --warmup 2 --runs 5 --json OUT.json [--sparsity 0.9]
"""
import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
from provenance import provenance, rel_command  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="Hugging Face BERT checkpoint directory")
    ap.add_argument("--model-name", default="sentence-transformers/all-MiniLM-L6-v2",
                    help="model id recorded in the JSON")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--classes", type=int, default=2)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, default=0.0,
                    help="fraction of each encoder linear weight zeroed by magnitude (0 = dense)")
    ap.add_argument("--json", help="write results here (temp file + rename)")
    a = ap.parse_args()
    for name in ("batch", "seq", "threads", "runs", "classes"):
        if getattr(a, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(a, name)}")
    if a.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {a.warmup}")
    if not 0.0 <= a.sparsity < 1.0:
        ap.error(f"--sparsity must be in [0, 1), got {a.sparsity}")
    if not os.path.isfile(os.path.join(a.model_dir, "config.json")):
        ap.error(f"--model-dir {a.model_dir}: config.json not found (need a Hugging Face BERT checkpoint)")
    return a


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary(xs):
    return {"median": statistics.median(xs), "runs": [round(x, 3) for x in xs]}


def main():
    a = parse_args()
    import torch
    torch.set_num_threads(a.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    import transformers
    from torch import nn

    torch.manual_seed(a.seed)
    config = transformers.BertConfig.from_pretrained(a.model_dir)
    config.hidden_dropout_prob = a.dropout
    config.attention_probs_dropout_prob = a.dropout
    if a.seq > config.max_position_embeddings:
        sys.exit(f"bench-train-step-torch: --seq {a.seq} exceeds max_position_embeddings "
                 f"{config.max_position_embeddings} of {a.model_dir}")
    encoder = transformers.BertModel.from_pretrained(a.model_dir, config=config, torch_dtype=torch.float32)

    class Classifier(nn.Module):
        def __init__(self, encoder, classes):
            super().__init__()
            self.encoder = encoder
            self.head = nn.Linear(encoder.config.hidden_size, classes)

        def forward(self, input_ids, attention_mask):
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return self.head(pooled)

    model = Classifier(encoder, a.classes)

    pruned_zero = pruned_total = 0
    if a.sparsity > 0:
        import torch.nn.utils.prune as prune
        for name, mod in model.encoder.encoder.named_modules():
            if isinstance(mod, nn.Linear):
                prune.l1_unstructured(mod, "weight", amount=a.sparsity)
                pruned_zero += int((mod.weight_mask == 0).sum())
                pruned_total += mod.weight_mask.numel()

    g = torch.Generator().manual_seed(a.seed)
    input_ids = torch.randint(0, config.vocab_size, (a.batch, a.seq), generator=g)
    attention_mask = torch.ones(a.batch, a.seq, dtype=torch.long)
    labels = torch.randint(0, a.classes, (a.batch,), generator=g)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
    n_params = sum(p.numel() for p in model.parameters())

    load_start = os.getloadavg()[0]
    # Forward only: eval mode, no autograd.
    model.eval()
    fwd = []
    with torch.no_grad():
        for i in range(a.warmup + a.runs):
            t0 = time.perf_counter()
            model(input_ids, attention_mask)
            t1 = time.perf_counter()
            if i >= a.warmup:
                fwd.append((t1 - t0) * 1e3)

    # Training steps: train mode (dropout on).
    model.train()
    tf, bw, op, st, losses = [], [], [], [], []
    for i in range(a.warmup + a.runs):
        t0 = time.perf_counter()
        loss = loss_fn(model(input_ids, attention_mask), labels)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        losses.append(loss.item())
        if i >= a.warmup:
            tf.append((t1 - t0) * 1e3)
            bw.append((t2 - t1) * 1e3)
            op.append((t3 - t2) * 1e3)
            st.append((t3 - t0) * 1e3)

    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    result = {
        "impl": "pytorch",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "model": a.model_name,
        "batch": a.batch,
        "seq": a.seq,
        "threads": a.threads,
        "warmup": a.warmup,
        "dtype": "f32",
        "params": n_params,
        "sparsity": a.sparsity,
        "forward_ms": summary(fwd),
        "train_forward_ms": summary(tf),
        "backward_ms": summary(bw),
        "optimizer_ms": summary(op),
        "step_ms": summary(st),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "losses": [round(x, 5) for x in losses],
        "attn_implementation": getattr(encoder.config, "_attn_implementation", None),
        "loadavg_1min_start_end": [load_start, os.getloadavg()[0]],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "cpu": cpu_model(),
        "nproc": os.cpu_count(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": rel_command(" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])),
        "provenance": provenance(" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), threads=a.threads),
    }
    if a.sparsity > 0:
        result["sparsity_method"] = "torch.nn.utils.prune.l1_unstructured per encoder linear (masked dense)"
        result["measured_encoder_linear_sparsity"] = pruned_zero / pruned_total

    text = json.dumps(result, indent=1)
    if a.json:
        d = os.path.dirname(os.path.abspath(a.json))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text + "\n")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
            os.replace(tmp, a.json)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    print(text)


if __name__ == "__main__":
    main()
