//! `sprig prune` end to end on the real checkpoint and a tiny real subset: a fine-tuned teacher,
//! gradual magnitude pruning with distillation from it, the written directory (HF layout, masks,
//! manifest, exact zeros), and the bad inputs of the command.
use std::path::Path;
mod common;
use common::{json, run_err, run_ok, sprig};

const TINY: [&str; 8] = ["--max-train", "48", "--max-dev", "64", "--max-test", "128", "--batch-size", "16"];

#[test]
fn gmp_with_distillation_writes_a_sparse_hf_directory_and_refuses_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let teacher = dir.path().join("teacher");
    run_ok(sprig().args(["finetune", "--task", "sms-spam", "--epochs", "1", "--out"]).arg(&teacher).args(TINY));

    // 3 steps per epoch x 2 epochs; the schedule ends at round(0.67 * 6) = 4: epoch 1's
    // evaluation (step 6) is the only one at the final mask.
    let out = dir.path().join("pruned");
    let stdout = run_ok(
        sprig()
            .args(["prune", "--task", "sms-spam", "--sparsity", "0.75", "--method", "gmp", "--epochs", "2", "--prune-every", "1", "--model"])
            .arg(&teacher)
            .arg("--out")
            .arg(&out)
            .args(TINY),
    );
    assert!(stdout.contains("| sms-spam | gmp |"), "{stdout}");
    for f in ["config.toml", "metrics.jsonl", "summary.json", "config.json", "model.safetensors", "masks.safetensors", "sprig.json", "tokenizer.json", "sprig-logits.json"] {
        assert!(out.join(f).is_file(), "missing {f}");
    }
    let s = json(&out.join("summary.json"));
    let sparsity = s["sparsity"].as_f64().unwrap();
    assert!((sparsity - 0.75).abs() < 1e-3, "realised sparsity {sparsity}");
    assert_eq!(s["distill"], true, "the fine-tuned model is its own teacher by default");
    assert_eq!(s["teacher"].as_str().unwrap(), teacher.to_str().unwrap());
    assert_eq!(s["best_epoch"], 1, "only evaluations at the final sparsity are selectable");
    assert!(s["dense_test_accuracy"].as_f64().is_some());
    // The manifest and the weights agree with the summary: inspect recomputes zeros at masked positions.
    let m = json(&out.join("sprig.json"));
    assert_eq!(m["prunable_sparsity"].as_f64().unwrap(), sparsity);
    let inspect = run_ok(sprig().arg("inspect").arg(&out));
    assert!(inspect.contains("verified"), "{inspect}");
    // Every dev evaluation is logged with the sparsity of that moment.
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["kind"] == "eval")
        .collect();
    assert_eq!(evals.len(), 2);
    assert!(evals[0]["sparsity"].as_f64().unwrap() < 0.75 && (evals[1]["sparsity"].as_f64().unwrap() - 0.75).abs() < 1e-3);
    // The config records the run and re-runs it (into a new directory).
    let cfg = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(cfg.contains("sparsity = 0.75") && cfg.contains("[train]"), "{cfg}");
    // sprig eval loads it.
    let ev = dir.path().join("eval");
    run_ok(sprig().args(["eval", "--task", "sms-spam", "--model"]).arg(&out).arg("--out").arg(&ev));

    // Bad input: each refused before anything is written.
    let fresh = dir.path().join("fresh");
    let prune = |extra: &[&str]| {
        let mut c = sprig();
        c.args(["prune", "--task", "sms-spam", "--epochs", "1", "--model"]).arg(&teacher).arg("--out").arg(&fresh).args(TINY).args(extra);
        c
    };
    let e = run_err(&mut prune(&["--sparsity", "1.0"]));
    assert!(e.contains("sparsity 1"), "{e}");
    let e = run_err(&mut prune(&["--method", "snip"]));
    assert!(e.contains("snip") && e.contains("gmp"), "{e}");
    let e = run_err(&mut prune(&["--granularity", "5x1"]));
    assert!(e.contains("encoder.layer.0") || e.contains("5"), "{e}");
    let e = run_err(&mut prune(&["--granularity", "2:4", "--sparsity", "0.8"]));
    assert!(e.contains("2:4") && e.contains("0.5"), "{e}");
    let e = run_err(&mut prune(&["--temperature", "0"]));
    assert!(e.contains("temperature"), "{e}");
    let e = run_err(&mut prune(&["--obert-block", "16"]));
    assert!(e.contains("obert_block") && e.contains("gmp"), "{e}");
    let e = run_err(&mut prune(&["--method", "obert", "--obert-grads", "0"]));
    assert!(e.contains("obert_grads"), "{e}");
    let e = run_err(&mut prune(&["--method", "obert", "--obert-tiles", "false"]));
    assert!(e.contains("obert_tiles") && e.contains("unstructured"), "{e}");
    assert!(!fresh.exists(), "a refused run wrote {}", fresh.display());
    // A teacher of another task; an output that exists; a checkpoint already sparser than asked.
    let e = run_err(sprig().args(["prune", "--task", "trec6", "--teacher"]).arg(&teacher).arg("--out").arg(&fresh).args(TINY));
    assert!(e.contains("sms-spam") || e.contains("labels"), "{e}");
    let before = std::fs::read(out.join("model.safetensors")).unwrap();
    let e = run_err(sprig().args(["prune", "--task", "sms-spam", "--model"]).arg(&teacher).arg("--out").arg(&out).args(TINY));
    assert!(e.contains("not empty"), "{e}");
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), before);
    let e = run_err(sprig().args(["prune", "--task", "sms-spam", "--sparsity", "0.5", "--model"]).arg(&out).arg("--out").arg(&fresh).args(TINY));
    assert!(e.contains("already"), "{e}");
    assert!(!fresh.exists());
    // No partial directories are left beside the output.
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().to_string()).filter(|n| n.contains("partial")).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Share of exact zeros of every encoder linear weight in `dir/model.safetensors`, and whether
/// every zero lies in a fully zero `r x 1` block (r consecutive rows of one input column).
fn zeros_and_blocks(dir: &Path, r: usize) -> (f64, bool) {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (mut zeros, mut total, mut blocked) = (0usize, 0usize, true);
    for (name, view) in st.tensors() {
        let linear = name.contains("encoder.layer.") && name.ends_with(".weight") && !name.contains("LayerNorm");
        if !linear {
            continue;
        }
        let (rows, cols) = (view.shape()[0], view.shape()[1]);
        let w: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        zeros += w.iter().filter(|x| **x == 0.0).count();
        total += w.len();
        for br in (0..rows).step_by(r) {
            for c in 0..cols {
                let z: Vec<bool> = (br..br + r).map(|i| w[i * cols + c] == 0.0).collect();
                blocked &= z.iter().all(|&b| b) || !z.iter().any(|&b| b);
            }
        }
    }
    (zeros as f64 / total as f64, blocked)
}

/// Block oBERT (its OBS weight update included) and one-shot pruning in 4x1 blocks, one short
/// epoch each from the pretrained checkpoint (fresh head, no teacher): the realised sparsity, the
/// exact zeros in the written weights, and the block structure.
#[test]
fn obert_and_4x1_blocks_reach_their_sparsity_with_exact_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let obert = dir.path().join("obert");
    // oBERT's B and m from the command line: blocks of 16 weights, a window of 8 gradients.
    let args = ["prune", "--task", "sms-spam", "--sparsity", "0.5", "--method", "obert", "--obert-block", "16", "--obert-grads", "8", "--epochs", "1", "--prune-every", "1", "--out"];
    run_ok(sprig().args(args).arg(&obert).args(TINY));
    let cfg = std::fs::read_to_string(obert.join("config.toml")).unwrap();
    assert!(cfg.contains("obert_block = 16") && cfg.contains("obert_grads = 8"), "{cfg}");
    let s = json(&obert.join("summary.json"));
    assert_eq!(s["distill"], false, "a pretrained checkpoint has no teacher");
    let sparsity = s["sparsity"].as_f64().unwrap();
    assert!((sparsity - 0.5).abs() < 1e-3, "{sparsity}");
    let (zeros, _) = zeros_and_blocks(&obert, 1);
    assert!((zeros - sparsity).abs() < 1e-6, "zeros {zeros} vs masks {sparsity}");

    let block = dir.path().join("block");
    run_ok(sprig().args(["prune", "--task", "sms-spam", "--sparsity", "0.5", "--method", "oneshot", "--granularity", "4x1", "--epochs", "1", "--out"]).arg(&block).args(TINY));
    let s = json(&block.join("summary.json"));
    let sparsity = s["sparsity"].as_f64().unwrap();
    assert!((sparsity - 0.5).abs() < 1e-3, "{sparsity}");
    let (zeros, blocked) = zeros_and_blocks(&block, 4);
    assert!((zeros - sparsity).abs() < 1e-6 && blocked, "zeros {zeros}, 4x1 blocks {blocked}");
}

/// `sprig predict` of three fixed texts with `model` in `formats`: every class probability, in order.
fn predict_probs(model: &Path, dir: &Path, name: &str, formats: &str) -> Vec<f64> {
    let texts = dir.join("texts.txt");
    std::fs::write(&texts, "WINNER!! claim your free prize now\nsee you at lunch tomorrow?\ncall me back when you can\n").unwrap();
    let o = dir.join(name);
    run_ok(sprig().arg("predict").arg("--model").arg(model).arg("--input").arg(&texts).arg("--out").arg(&o).args(["--formats", formats]));
    std::fs::read_to_string(&o).unwrap().lines().flat_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect::<Vec<_>>()).collect()
}

/// Structured pruning of whole FFN neurons (gradual, 2 short epochs from the pretrained
/// checkpoint): half the rows of every `intermediate.dense` weight are zero, the same count per
/// layer, and `narrow/` holds the model with them removed physically (`intermediate_size` 768),
/// which `sprig predict` runs with the probabilities of the pruned model. Refusals: a method or
/// allocation that cannot keep whole, equal neuron counts.
#[test]
fn ffn_neurons_are_removed_physically_into_a_narrow_model_that_predicts_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ffn");
    run_ok(sprig().args(["prune", "--task", "sms-spam", "--sparsity", "0.5", "--method", "gmp", "--granularity", "ffn-neurons", "--epochs", "2", "--prune-every", "1", "--out"]).arg(&out).args(TINY));
    let s = json(&out.join("summary.json"));
    assert!((s["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-6, "share of FFN-in weights pruned: {s}");
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut layers = 0;
    for (name, view) in st.tensors() {
        let w: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        let cols = view.shape()[1..].iter().product::<usize>().max(1);
        if name.ends_with("intermediate.dense.weight") {
            layers += 1;
            let zero_rows = w.chunks(cols).filter(|r| r.iter().all(|x| *x == 0.0)).count();
            let partial = w.chunks(cols).filter(|r| r.contains(&0.0) && r.iter().any(|x| *x != 0.0)).count();
            assert_eq!((zero_rows, partial), (768, 0), "{name}: whole rows, half of them");
        } else if name.contains("attention") && name.ends_with("dense.weight") || name.ends_with("query.weight") {
            assert!(w.iter().all(|x| *x != 0.0), "{name} is not pruned");
        }
    }
    assert_eq!(layers, 6);
    let narrow = out.join("narrow");
    let cfg = json(&narrow.join("config.json"));
    assert_eq!(cfg["intermediate_size"], 768);
    let nb = std::fs::read(narrow.join("model.safetensors")).unwrap();
    let nst = safetensors::SafeTensors::deserialize(&nb).unwrap();
    let shape = |n: &str| nst.tensors().into_iter().find(|(m, _)| m.ends_with(n)).map(|(_, v)| v.shape().to_vec()).unwrap();
    assert_eq!((shape("layer.0.intermediate.dense.weight"), shape("layer.0.output.dense.weight")), (vec![768, 384], vec![384, 768]));
    assert!(bytes.len() - nb.len() >= 6 * 2 * 768 * 384 * 4, "768 neurons x 2 matrices x 6 layers fewer: {} vs {} bytes", nb.len(), bytes.len());
    assert!(narrow.join("tokenizer.json").is_file() && narrow.join("sprig-logits.json").is_file() && !narrow.join("masks.safetensors").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(narrow.join("model.safetensors")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "readable like the other weights");
    }
    // Both predict the same probabilities.
    let (a, b) = (predict_probs(&out, dir.path(), "full.jsonl", "dense"), predict_probs(&narrow, dir.path(), "narrow.jsonl", "dense"));
    assert_eq!(a.len(), 6);
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    assert!(worst < 1e-5, "pruned vs narrow: max |prob diff| {worst}");
    let fresh = dir.path().join("fresh");
    let e = run_err(sprig().args(["prune", "--task", "sms-spam", "--granularity", "ffn-neurons", "--method", "obert", "--out"]).arg(&fresh).args(TINY));
    assert!(e.contains("ffn-neurons") && e.contains("obert"), "{e}");
    let e = run_err(sprig().args(["prune", "--task", "sms-spam", "--granularity", "ffn-neurons", "--allocation", "global", "--out"]).arg(&fresh).args(TINY));
    assert!(e.contains("uniform"), "{e}");
    assert!(!fresh.exists());
}

/// Structured pruning of whole attention heads (gradual, 2 short epochs): half the heads of every
/// layer have all-zero value rows (whole 32-row slices, the other weights untouched), and
/// `narrow/` holds the model with them removed physically (`sprig_attention_heads`: 6 per layer;
/// query, key, value 192 rows, the output projection 192 columns), which `sprig predict` runs
/// with the probabilities of the pruned model. Refusals as for neurons.
#[test]
fn attention_heads_are_removed_physically_into_a_narrow_model_that_predicts_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("heads");
    run_ok(sprig().args(["prune", "--task", "sms-spam", "--sparsity", "0.5", "--method", "gmp", "--granularity", "attention-heads", "--epochs", "2", "--prune-every", "1", "--out"]).arg(&out).args(TINY));
    let s = json(&out.join("summary.json"));
    assert!((s["sparsity"].as_f64().unwrap() - 0.5).abs() < 1e-6, "share of value weights pruned: {s}");
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut layers = 0;
    for (name, view) in st.tensors() {
        let w: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if name.ends_with("attention.self.value.weight") {
            layers += 1;
            let heads: Vec<(usize, usize)> = w.chunks(32 * 384).map(|h| (h.iter().filter(|x| **x == 0.0).count(), h.len())).collect();
            assert_eq!(heads.len(), 12, "{name}");
            assert_eq!(heads.iter().filter(|(z, n)| z == n).count(), 6, "{name}: half the heads pruned whole");
            assert!(heads.iter().all(|(z, n)| *z == 0 || z == n), "{name}: a head pruned in part");
        } else if name.contains("encoder") && name.ends_with(".weight") && !name.contains("LayerNorm") {
            assert!(w.iter().all(|x| *x != 0.0), "{name} is not pruned");
        }
    }
    assert_eq!(layers, 6);
    let narrow = out.join("narrow");
    let cfg = json(&narrow.join("config.json"));
    assert_eq!(cfg["sprig_attention_heads"], serde_json::json!([6, 6, 6, 6, 6, 6]));
    assert_eq!(cfg["intermediate_size"], 1536);
    let nb = std::fs::read(narrow.join("model.safetensors")).unwrap();
    let nst = safetensors::SafeTensors::deserialize(&nb).unwrap();
    let shape = |n: &str| nst.tensors().into_iter().find(|(m, _)| m.ends_with(n)).map(|(_, v)| v.shape().to_vec()).unwrap();
    for q in ["query", "key", "value"] {
        assert_eq!(shape(&format!("layer.0.attention.self.{q}.weight")), vec![192, 384]);
        assert_eq!(shape(&format!("layer.0.attention.self.{q}.bias")), vec![192]);
    }
    assert_eq!(shape("layer.0.attention.output.dense.weight"), vec![384, 192]);
    assert!(bytes.len() - nb.len() >= 6 * 4 * 192 * 384 * 4, "6 heads x 4 matrices x 6 layers fewer: {} vs {} bytes", nb.len(), bytes.len());
    let a = predict_probs(&out, dir.path(), "full.jsonl", "dense");
    assert_eq!(a.len(), 6);
    for (name, formats) in [("narrow.jsonl", "dense"), ("narrow-csr.jsonl", "csr")] {
        let b = predict_probs(&narrow, dir.path(), name, formats);
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
        assert!(worst < 1e-5, "pruned vs narrow ({formats}): max |prob diff| {worst}");
    }
    // The narrow model prunes again among the heads it kept (half of 6: 3 per layer).
    let again = dir.path().join("again");
    run_ok(sprig().args(["prune", "--task", "sms-spam", "--sparsity", "0.5", "--method", "oneshot", "--granularity", "attention-heads", "--epochs", "1", "--model"]).arg(&narrow).arg("--out").arg(&again).args(TINY));
    assert_eq!(json(&again.join("narrow/config.json"))["sprig_attention_heads"], serde_json::json!([3, 3, 3, 3, 3, 3]));
    let fresh = dir.path().join("fresh");
    let e = run_err(sprig().args(["prune", "--task", "sms-spam", "--granularity", "attention-heads", "--method", "movement", "--out"]).arg(&fresh).args(TINY));
    assert!(e.contains("attention-heads") && e.contains("movement"), "{e}");
    let e = run_err(sprig().args(["prune", "--task", "sms-spam", "--granularity", "attention-heads", "--allocation", "erk", "--out"]).arg(&fresh).args(TINY));
    assert!(e.contains("uniform"), "{e}");
}

/// Runs `cmd`, asserts success and returns stdout and stderr together (the log included).
fn run_ok_all(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("spawn sprig");
    let all = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{all}");
    all
}

/// The run directory as a contract: stale staging directories of dead processes are removed (a
/// live one is kept), a finished run is replaced only with `--overwrite` (never the model), and
/// `sprig inspect` recomputes what it prints and refuses an edited manifest or a NaN kept weight.
#[test]
fn prune_run_directory_overwrite_stale_stages_and_inspect_verification() {
    const CHEAP: [&str; 10] = ["--max-train", "32", "--max-dev", "32", "--max-test", "32", "--epochs", "1", "--batch-size", "16"];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pruned");
    let stale = dir.path().join(".pruned.partial-999999999-abcdef");
    let live = dir.path().join(format!(".pruned.partial-{}-abcdef", std::process::id()));
    for d in [&stale, &live] {
        std::fs::create_dir(d).unwrap();
        std::fs::write(d.join("metrics.jsonl"), "{}\n").unwrap();
    }
    let prune = |extra: &[&str]| {
        let mut c = sprig();
        c.args(["prune", "--task", "sms-spam", "--sparsity", "0.5", "--method", "oneshot", "--out"]).arg(&out).args(CHEAP).args(extra);
        c
    };
    let log = run_ok_all(&mut prune(&[]));
    assert!(!stale.exists() && log.contains(".pruned.partial-999999999-abcdef"), "{log}");
    assert!(live.exists(), "the staging directory of a live process was removed");
    let seed = |d: &Path| std::fs::read_to_string(d.join("config.toml")).unwrap().lines().find(|l| l.starts_with("seed")).unwrap().to_string();
    assert_eq!(seed(&out), "seed = 42");

    // A finished run: refused without --overwrite, replaced with it.
    let e = run_err(&mut prune(&["--seed", "7"]));
    assert!(e.contains("finished run") && e.contains("--overwrite"), "{e}");
    assert_eq!(seed(&out), "seed = 42");
    run_ok(&mut prune(&["--seed", "7", "--overwrite"]));
    assert_eq!(seed(&out), "seed = 7");
    let left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect();
    assert_eq!(left.len(), 2, "only the run and the live staging directory: {left:?}");
    // --out equal to or inside the model or the teacher: refused even with --overwrite.
    for (flag, o) in [("--model", out.join("inner")), ("--model", out.clone()), ("--teacher", out.clone())] {
        let e = run_err(sprig().args(["prune", "--task", "sms-spam", "--overwrite", flag]).arg(&out).arg("--out").arg(&o).args(CHEAP));
        assert!(e.contains(flag) && e.contains("even with --overwrite"), "{flag} {}: {e}", o.display());
    }
    assert!(!out.join("inner").exists());

    // inspect: recomputed numbers, and what was verified.
    let inspect = |fast: bool| {
        let mut c = sprig();
        c.arg("inspect").arg(&out);
        if fast {
            c.arg("--fast");
        }
        c
    };
    let text = run_ok(&mut inspect(false));
    let prunable = text.lines().find(|l| l.starts_with("prunable")).unwrap();
    assert!(prunable.trim_end().ends_with("50.00%"), "{text}");
    assert!(text.contains("verified: sha256") && text.contains("manifest_sha256 matches"), "{text}");
    let fast = run_ok(&mut inspect(true));
    assert!(fast.contains("NOT VERIFIED") && fast.contains("verified: nothing"), "{fast}");

    let mp = out.join("sprig.json");
    let good: serde_json::Value = json(&mp);
    let write = |m: &serde_json::Value, rehash: bool| {
        let mut m = m.clone();
        if rehash {
            m["manifest_sha256"] = sprig_prune::checkpoint::manifest_sha256(&m).into();
        }
        std::fs::write(&mp, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    };
    for field in ["prunable_sparsity", "model_sparsity"] {
        for rehash in [false, true] {
            let mut m = good.clone();
            m[field] = 0.99.into();
            write(&m, rehash);
            let e = run_err(&mut inspect(false));
            assert!(e.contains("sprig.json") && e.contains(field) && e.contains("0.99"), "{e}");
        }
    }
    let mut m = good.clone();
    m["tensors"][5]["sparsity"] = 0.99.into();
    write(&m, true);
    let e = run_err(&mut inspect(false));
    assert!(e.contains("tensors[5].sparsity") && e.contains("0.99"), "{e}");
    // A manifest without a hash (an older sprig) loads, and inspect says so.
    let mut m = good.clone();
    m.as_object_mut().unwrap().remove("manifest_sha256");
    write(&m, false);
    let text = run_ok(&mut inspect(false));
    assert!(text.contains("unhashed"), "{text}");

    // A NaN in a kept weight of an encoder linear, with every hash made to match.
    let wp = out.join("model.safetensors");
    let mut bytes = std::fs::read(&wp).unwrap();
    let at = {
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (name, view) = st.tensors().into_iter().find(|(n, _)| n.contains("encoder.layer.0.") && n.ends_with("query.weight")).unwrap();
        let data = view.data();
        let i = data.chunks_exact(4).position(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) != 0.0).unwrap();
        eprintln!("NaN at {name}[{i}]");
        data.as_ptr() as usize - bytes.as_ptr() as usize + 4 * i
    };
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&wp, &bytes).unwrap();
    let mut m = good.clone();
    m["weights_sha256"] = sprig_prune::checkpoint::weights_sha256(&out).unwrap().into();
    write(&m, true);
    let e = run_err(&mut inspect(false));
    assert!(e.contains("query.weight") && e.contains("not finite"), "{e}");
}

/// The metrics records of a run without their wall-clock fields.
fn records_without_timing(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("examples_per_second");
            v
        })
        .collect()
}

/// `sprig prune` killed with SIGKILL mid-run and started again with the same command continues
/// from its last saved state and ends with the same model, bit for bit, as an uninterrupted run;
/// an interrupted run of another config is refused by name, never dropped or mixed in.
#[test]
fn prune_killed_with_sigkill_resumes_to_the_same_model() {
    // Movement pruning: its gradient statistics are state too. 64 examples in batches of 16, 3
    // epochs = 12 steps; the state is saved every 2 steps and at each epoch end.
    const RUN: [&str; 21] = [
        "prune", "--task", "trec6", "--method", "movement", "--sparsity", "0.6", "--prune-every", "1", "--epochs", "3",
        "--max-train", "64", "--max-dev", "32", "--max-test", "32", "--batch-size", "16", "--save-every", "2",
    ];
    let dir = tempfile::tempdir().unwrap();
    let (whole, killed) = (dir.path().join("whole"), dir.path().join("killed"));
    run_ok(sprig().args(RUN).arg("--out").arg(&whole));

    let stage_of = |name: &str| {
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!(".{name}.partial-")))
    };
    let mut child = sprig().args(RUN).arg("--out").arg(&killed).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = std::time::Instant::now();
    let stage = loop {
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(t0.elapsed().as_secs() < 600, "no progress");
        if let Some(s) = stage_of("killed") {
            let steps = std::fs::read_to_string(s.join("metrics.jsonl")).unwrap_or_default().lines().filter(|l| l.contains("\"train\"")).count();
            if steps >= 5 && s.join("train-state.safetensors").is_file() {
                break s;
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.exists() && stage.join("train-state.safetensors").is_file());

    // A copy of the interrupted run under another --out name, for the refusal below.
    let other = dir.path().join(".other.partial-999999999-abcdef");
    std::fs::create_dir(&other).unwrap();
    for f in ["config.toml", "metrics.jsonl", "train-state.safetensors"] {
        std::fs::copy(stage.join(f), other.join(f)).unwrap();
    }

    let log = run_ok_all(sprig().args(RUN).arg("--out").arg(&killed));
    assert!(log.contains("resuming an interrupted run") && log.contains("resumed from the saved training state"), "{log}");
    assert!(stage_of("killed").is_none() && !stage.exists(), "the staging directory was taken over and moved in");
    assert!(!killed.join("train-state.safetensors").exists(), "the finished run does not keep its training state");
    for f in ["model.safetensors", "masks.safetensors"] {
        assert!(std::fs::read(whole.join(f)).unwrap() == std::fs::read(killed.join(f)).unwrap(), "{f} differs from the uninterrupted run's");
    }
    assert_eq!(records_without_timing(&whole), records_without_timing(&killed), "metrics.jsonl differs");
    let (a, b) = (json(&whole.join("summary.json")), json(&killed.join("summary.json")));
    for k in ["dev_accuracy", "test_accuracy", "sparsity", "steps", "best_epoch"] {
        assert_eq!(a[k], b[k], "{k}");
    }

    // Another config for the same --out while a resumable run waits there: refused, kept.
    let e = run_err(sprig().args(RUN).args(["--lr", "0.0001", "--out"]).arg(dir.path().join("other")));
    assert!(e.contains(".other.partial-999999999-abcdef") && e.contains("`train.lr`") && e.contains("--config"), "{e}");
    assert!(other.join("train-state.safetensors").is_file());
    // Its state file truncated: the resume fails with the reason and keeps the directory.
    let state = other.join("train-state.safetensors");
    let bytes = std::fs::read(&state).unwrap();
    std::fs::write(&state, &bytes[..bytes.len() / 2]).unwrap();
    let e = run_err(sprig().args(RUN).arg("--out").arg(dir.path().join("other")));
    assert!(e.contains("resuming the interrupted run") && e.contains("not a readable training state") && e.contains("kept"), "{e}");
    let kept = stage_of("other").expect("the interrupted run is kept");
    assert!(kept.join("train-state.safetensors").is_file() && !dir.path().join("other").exists());
}
