#!/usr/bin/env python3
"""PyTorch side of the real fine-tuning epoch comparison (benches/bench-epoch).

The same work as `sprig finetune --task rt-sentiment --epochs 1 --train-word-embeddings true`:
MiniLM-L6 (`transformers.BertModel` from MODEL_DIR) + masked mean pooling + a new linear head,
cross-entropy, torch.optim.AdamW (lr 5e-5, weight decay 0.01, eps 1e-8), linear warm-up over 10%
of the steps then linear decay, gradient clipping at 1.0, dropout 0.1, every parameter trained.
Data: the rt-sentiment snippets (score 0 dropped, label = score > 0), a seeded 80% of them as the
training split (as many examples as sprig's split), tokenized once to at most --max-len tokens,
in length-grouped batches of --batch (sprig's "sortish" order: shuffle, sort chunks of 50
batches by length, shuffle the batches) with dynamic padding.

Timed: the training loop alone (batch tensors, forward, loss, backward, clipping, optimizer), as
sprig's `train_seconds` is; tokenization and model loading are not. After the epoch, untimed, the
accuracy on the held-out 20% (the examples not in the training split; --max-eval caps them).
Prints one JSON object.

Usage (in the venv made by scripts/torch-venv):
  python benches/bench-epoch-torch.py --model-dir DIR --data FILE --threads 2 [--max-train N]
"""
import argparse
import json
import os
import random
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--data", required=True, help="movieReviewSnippets_GroundTruth.txt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--max-train", type=int, default=0, help="cap on training examples (0 = the whole 80%% split)")
    ap.add_argument("--max-eval", type=int, default=0, help="cap on held-out examples evaluated after the epoch (0 = all)")
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    if a.threads < 1 or a.batch < 1:
        ap.error("--threads and --batch must be >= 1")
    import torch
    from transformers import AutoTokenizer, BertModel

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    ex = []
    with open(a.data, encoding="utf-8") as f:
        for n, line in enumerate(f):
            if n == 0 and line.startswith("id\t"):
                continue
            parts = line.rstrip("\n").split("\t", 2)
            if len(parts) != 3 or not parts[2].strip():
                continue
            score = float(parts[1])
            if score != 0.0:
                ex.append((parts[2].strip(), int(score > 0.0)))
    if not ex:
        sys.exit(f"{a.data}: no examples")
    rng.shuffle(ex)
    train = ex[: int(0.8 * len(ex))]
    held = ex[int(0.8 * len(ex)) :]
    if a.max_eval:
        held = held[: a.max_eval]
    if a.max_train:
        train = train[: a.max_train]
    tok = AutoTokenizer.from_pretrained(a.model_dir)
    enc = tok([t for t, _ in train], truncation=True, max_length=a.max_len)["input_ids"]
    labels = [y for _, y in train]

    idx = list(range(len(enc)))
    rng.shuffle(idx)
    chunk = a.batch * 50
    batches = []
    for i in range(0, len(idx), chunk):
        c = sorted(idx[i : i + chunk], key=lambda j: -len(enc[j]))
        batches += [c[k : k + a.batch] for k in range(0, len(c), a.batch)]
    rng.shuffle(batches)

    bert = BertModel.from_pretrained(a.model_dir, add_pooling_layer=False)
    bert.train()
    head = torch.nn.Linear(bert.config.hidden_size, 2)
    torch.nn.init.normal_(head.weight, std=0.02)
    torch.nn.init.zeros_(head.bias)
    drop = torch.nn.Dropout(0.1)
    params = list(bert.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=0.01, eps=1e-8)
    total = len(batches)
    warm = round(0.1 * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / max(1, warm) if s < warm else max(0.0, (total - s) / max(1, total - warm))
    )
    t0 = time.perf_counter()
    loss_sum = 0.0
    for b in batches:
        L = max(len(enc[j]) for j in b)
        ids = torch.zeros((len(b), L), dtype=torch.long)
        mask = torch.zeros((len(b), L), dtype=torch.long)
        for r, j in enumerate(b):
            ids[r, : len(enc[j])] = torch.tensor(enc[j])
            mask[r, : len(enc[j])] = 1
        y = torch.tensor([labels[j] for j in b])
        h = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        loss = torch.nn.functional.cross_entropy(head(drop(pooled)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        loss_sum += loss.item()
    secs = time.perf_counter() - t0
    bert.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(held), 128):
            part = held[i : i + 128]
            t = tok([x for x, _ in part], truncation=True, max_length=a.max_len, padding=True, return_tensors="pt")
            h = bert(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).last_hidden_state
            m = t["attention_mask"].unsqueeze(-1).to(h.dtype)
            pred = head((h * m).sum(1) / m.sum(1).clamp(min=1e-9)).argmax(-1)
            right += sum(int(p == y) for p, (_, y) in zip(pred.tolist(), part))
    print(json.dumps({"impl": "pytorch", "torch": torch.__version__, "threads": a.threads, "examples": len(enc),
                      "steps": total, "train_seconds": secs, "mean_loss": loss_sum / total,
                      "heldout_examples": len(held), "heldout_accuracy": right / max(1, len(held))}))


if __name__ == "__main__":
    main()
