#!/usr/bin/env python3
"""Write a small PyTorch reference fixture for sprig's BERT encoder.

Runs Hugging Face `transformers.BertModel` (eval mode, f32, eager attention) on a fixed batch of
English sentences of different lengths, padded in one batch with an attention mask, and stores the
inputs and outputs in a small safetensors file that sprig-bert's tests compare against (tolerance
1e-4). Token ids come from the checkpoint's own fast tokenizer (`tokenizer.json`) with padding and
truncation turned off; they are also written to a JSON sidecar (same path, `.json`) so sprig's
tokenizer can be checked against them.

Tensors written:
  input_ids, token_type_ids, attention_mask   i64 [B, S]   (padded with id 0, mask 0)
  last_hidden_state                           f32 [B, S, H]
  mean_pooled                                 f32 [B, H]   masked mean over tokens (Reimers &
                                                           Gurevych 2019, sentence-transformers)
  cls                                         f32 [B, H]   last_hidden_state[:, 0]
  pooler_output                               f32 [B, H]   tanh(W h_cls + b) (Devlin et al. 2019)
  hidden_states.0                             f32 [B, S, H] embeddings output (after LayerNorm)
  hidden_states.1                             f32 [B, S, H] output of encoder layer 1
Metadata (all strings): sentences (JSON list), seq_len, torch_version, transformers_version, ...

Usage (in the venv made by scripts/torch-venv):
  python scripts/make-bert-fixture.py MODEL_DIR \
      crates/sprig-bert/tests/fixtures/minilm-l6-reference.safetensors [--check-sentence-transformers]
"""
import argparse
import datetime
import hashlib
import json
import os
import sys
import tempfile

import numpy as np
import safetensors
import torch
import transformers
from safetensors.numpy import save_file
from tokenizers import Tokenizer

# Varied sentences: very short, long, punctuation, numbers, word pieces, accents and uppercase
# (the tokenizer lowercases and strips accents), an apostrophe and a question.
SENTENCES = [
    "Hello world!",
    "The quick brown fox jumps over the lazy dog.",
    "Crème brûlée at the CAFÉ in Zürich costs 12.50 EUR.",
    "Pruning removes 90% of the weights, surprisingly without hurting accuracy.",
    "Why?",
    "I didn't like the movie: its unbelievably thin plot bored everyone.",
]

MAX_FIXTURE_BYTES = 1_000_000


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write(path, write):
    """Write via a temp file in the same directory, then rename (no partial outputs)."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def tokenize(model_dir):
    path = os.path.join(model_dir, "tokenizer.json")
    if not os.path.isfile(path):
        sys.exit(f"make-bert-fixture: {path} not found (MODEL_DIR must hold a Hugging Face BERT checkpoint)")
    tok = Tokenizer.from_file(path)
    tok.no_padding()
    tok.no_truncation()
    encs = [tok.encode(s) for s in SENTENCES]
    return encs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", help="Hugging Face BERT checkpoint directory (config.json, model.safetensors, tokenizer.json)")
    ap.add_argument("out", help="output .safetensors path; a .json sidecar is written beside it")
    ap.add_argument("--model-name", default="sentence-transformers/all-MiniLM-L6-v2",
                    help="model id recorded in the metadata")
    ap.add_argument("--check-sentence-transformers", action="store_true",
                    help="also compare mean_pooled with sentence_transformers.SentenceTransformer(MODEL_DIR)")
    args = ap.parse_args()

    if not os.path.isfile(os.path.join(args.model_dir, "config.json")):
        sys.exit(f"make-bert-fixture: {args.model_dir}/config.json not found")
    if not args.out.endswith(".safetensors"):
        sys.exit(f"make-bert-fixture: output '{args.out}' must end in .safetensors")

    torch.manual_seed(0)
    encs = tokenize(args.model_dir)
    b = len(encs)
    s = max(len(e.ids) for e in encs)
    input_ids = np.zeros((b, s), dtype=np.int64)
    token_type_ids = np.zeros((b, s), dtype=np.int64)
    attention_mask = np.zeros((b, s), dtype=np.int64)
    for i, e in enumerate(encs):
        n = len(e.ids)
        input_ids[i, :n] = e.ids
        token_type_ids[i, :n] = e.type_ids
        attention_mask[i, :n] = 1

    model = transformers.BertModel.from_pretrained(
        args.model_dir, torch_dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(input_ids),
            token_type_ids=torch.from_numpy(token_type_ids),
            attention_mask=torch.from_numpy(attention_mask),
            output_hidden_states=True,
        )
        last = out.last_hidden_state
        m = torch.from_numpy(attention_mask).unsqueeze(-1).to(last.dtype)
        mean_pooled = (last * m).sum(1) / m.sum(1).clamp(min=1e-9)
        cls = last[:, 0]
        # Same model with the default attention kernel (SDPA): how far apart two PyTorch paths are.
        sdpa = transformers.BertModel.from_pretrained(args.model_dir, torch_dtype=torch.float32)
        sdpa.eval()
        last_sdpa = sdpa(input_ids=torch.from_numpy(input_ids),
                         token_type_ids=torch.from_numpy(token_type_ids),
                         attention_mask=torch.from_numpy(attention_mask)).last_hidden_state
        valid = m.bool().expand_as(last)
        sdpa_diff = (last - last_sdpa).abs()[valid].max().item()

    tensors = {
        "input_ids": input_ids,
        "token_type_ids": token_type_ids,
        "attention_mask": attention_mask,
        "last_hidden_state": last.float().numpy().copy(),
        "mean_pooled": mean_pooled.float().numpy().copy(),
        "cls": cls.float().numpy().copy(),
        "pooler_output": out.pooler_output.float().numpy().copy(),
        "hidden_states.0": out.hidden_states[0].float().numpy().copy(),
        "hidden_states.1": out.hidden_states[1].float().numpy().copy(),
    }

    st_diff = None
    st_version = None
    if args.check_sentence_transformers:
        import sentence_transformers
        st_version = sentence_transformers.__version__
        # The checkpoint's pipeline is Transformer -> Pooling(mean) -> Normalize; build the first
        # two explicitly and compare the un-normalised pooled embedding.
        try:  # sentence-transformers >= 6 moved the modules
            from sentence_transformers.sentence_transformer import modules as st_models
        except ImportError:
            from sentence_transformers import models as st_models
        word = st_models.Transformer(args.model_dir)
        dim = (word.get_embedding_dimension() if hasattr(word, "get_embedding_dimension")
               else word.get_word_embedding_dimension())
        pool = st_models.Pooling(dim, pooling_mode="mean")
        st = sentence_transformers.SentenceTransformer(modules=[word, pool], device="cpu")
        st_mean = st.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True,
                            normalize_embeddings=False)
        st_diff = float(np.abs(st_mean - tensors["mean_pooled"]).max())
        print(f"sentence-transformers {st_version}: max |mean_pooled diff| = {st_diff:.3e}")
        if st_diff > 1e-4:
            sys.exit(f"make-bert-fixture: sentence-transformers disagrees with the fixture (max diff {st_diff:.3e})")

    model_file = os.path.join(args.model_dir, "model.safetensors")
    metadata = {
        "description": "PyTorch transformers.BertModel reference outputs for sprig-bert tests",
        "model": args.model_name,
        "model_safetensors_sha256": sha256_file(model_file) if os.path.isfile(model_file) else "",
        "sentences": json.dumps(SENTENCES, ensure_ascii=False),
        "batch": str(b),
        "seq_len": str(s),
        "pooling": "mean_pooled = sum(h * mask) / max(sum(mask), 1e-9); cls = h[:, 0]",
        "hidden_states": "hidden_states.0 = embeddings output, hidden_states.1 = after encoder layer 1",
        "attn_implementation": "eager",
        "eager_vs_sdpa_max_abs_diff": f"{sdpa_diff:.3e}",
        "dtype": "float32",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "safetensors_version": safetensors.__version__,
        "numpy_version": np.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "command": "python scripts/make-bert-fixture.py MODEL_DIR " + os.path.relpath(args.out)
        + (" --check-sentence-transformers" if args.check_sentence_transformers else ""),
    }
    if st_diff is not None:
        metadata["sentence_transformers_version"] = st_version
        metadata["sentence_transformers_mean_max_abs_diff"] = f"{st_diff:.3e}"

    sidecar_path = args.out[: -len(".safetensors")] + ".json"
    sidecar = {
        "description": "Token ids from the checkpoint's tokenizer.json (Hugging Face tokenizers, "
                       "padding and truncation off) for the sentences of "
                       + os.path.basename(args.out),
        "model": args.model_name,
        "tokenizers_version": __import__("tokenizers").__version__,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "seq_len": s,
        "pad_id": 0,
        "sentences": [
            {"text": t, "input_ids": e.ids, "token_type_ids": e.type_ids, "tokens": e.tokens}
            for t, e in zip(SENTENCES, encs)
        ],
    }

    atomic_write(args.out, lambda p: save_file(tensors, p, metadata=metadata))
    size = os.path.getsize(args.out)
    if size > MAX_FIXTURE_BYTES:
        os.remove(args.out)
        sys.exit(f"make-bert-fixture: fixture would be {size} bytes (> {MAX_FIXTURE_BYTES}); use shorter sentences")

    def write_json(p):
        # One line per sentence entry keeps the sidecar readable and diffable.
        head = {k: v for k, v in sidecar.items() if k != "sentences"}
        body = json.dumps(head, ensure_ascii=False, indent=1)[:-2]
        items = ",\n  ".join(json.dumps(x, ensure_ascii=False) for x in sidecar["sentences"])
        with open(p, "w", encoding="utf-8") as f:
            f.write(body + ',\n "sentences": [\n  ' + items + "\n ]\n}\n")
        with open(p, encoding="utf-8") as f:
            assert json.load(f) == sidecar
    atomic_write(sidecar_path, write_json)

    print(f"wrote {args.out} ({size} bytes, batch {b}, seq {s}) and {sidecar_path}")
    print(f"eager vs sdpa attention: max |diff| over valid tokens = {sdpa_diff:.3e}")
    for t, e in zip(SENTENCES, encs):
        print(f"  {len(e.ids):3d} tokens  {t}")


if __name__ == "__main__":
    main()
