//! End-to-end: the `sprig` binary on the real checkpoint and a tiny real subset.
mod common;
use common::{json, run_err, run_ok, sprig};

#[test]
fn finetune_then_eval_then_rerun_from_config() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    // A tiny training subset; the test split is the full one so that `sprig eval` sees the same test set.
    let tiny = ["--max-train", "48", "--max-dev", "64", "--batch-size", "16", "--epochs", "1"];
    let out = run_ok(sprig().args(["finetune", "--task", "sms-spam", "--out"]).arg(&run).args(tiny));
    assert!(out.contains("| sms-spam |"), "{out}");
    for f in ["config.toml", "metrics.jsonl", "summary.json", "config.json", "model.safetensors", "tokenizer.json"] {
        assert!(run.join(f).is_file(), "missing {f}");
    }
    let s = json(&run.join("summary.json"));
    assert_eq!(s["task"], "sms-spam");
    assert_eq!(s["steps"], 3);
    // eval on the recorded split reproduces the run's test accuracy.
    let ev = dir.path().join("eval");
    run_ok(sprig().args(["eval", "--task", "sms-spam", "--model"]).arg(&run).arg("--out").arg(&ev));
    let e = json(&ev.join("eval.json"));
    // An earlier evaluation is not replaced unless asked; the checkpoint itself is never written into.
    let err = run_err(sprig().args(["eval", "--task", "sms-spam", "--split", "dev", "--model"]).arg(&run).arg("--out").arg(&ev));
    assert!(err.contains("eval.json") && err.contains("--overwrite"), "{err}");
    assert_eq!(json(&ev.join("eval.json")), e);
    let err = run_err(sprig().args(["eval", "--task", "sms-spam", "--overwrite", "--model"]).arg(&run).arg("--out").arg(&run));
    assert!(err.contains("--model") && err.contains("refused even with --overwrite"), "{err}");
    assert!(!run.join("eval.json").exists());
    run_ok(sprig().args(["eval", "--task", "sms-spam", "--split", "dev", "--overwrite", "--model"]).arg(&run).arg("--out").arg(&ev));
    assert_eq!(json(&ev.join("eval.json"))["split"], "dev");
    assert_eq!(e["accuracy"], s["test_accuracy"]);
    // The written config reproduces the run bit for bit.
    let again = dir.path().join("again");
    run_ok(sprig().arg("finetune").arg("--config").arg(run.join("config.toml")).arg("--out").arg(&again));
    assert_eq!(json(&again.join("summary.json"))["test_accuracy"], s["test_accuracy"]);
    assert_eq!(std::fs::read_to_string(again.join("config.toml")).unwrap(), std::fs::read_to_string(run.join("config.toml")).unwrap());

    // A finished run is never overwritten, nor the source checkpoint; nothing is touched.
    let before = std::fs::read(run.join("model.safetensors")).unwrap();
    let cfg_before = std::fs::read_to_string(run.join("config.toml")).unwrap();
    let e = run_err(sprig().args(["finetune", "--task", "sms-spam", "--seed", "7", "--out"]).arg(&run).args(tiny));
    assert!(e.contains("finished run"), "{e}");
    let e = run_err(sprig().args(["finetune", "--task", "sms-spam", "--model"]).arg(&run).arg("--out").arg(run.join("inner")).args(tiny));
    assert!(e.contains("inside --model"), "{e}");
    assert!(!run.join("inner").exists());
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), before);
    assert_eq!(std::fs::read_to_string(run.join("config.toml")).unwrap(), cfg_before);
    // A max_seq_len the model cannot take is refused, not clamped and mis-recorded.
    let e = run_err(sprig().args(["finetune", "--task", "sms-spam", "--max-seq-len", "100000", "--out"]).arg(dir.path().join("long")).args(tiny));
    assert!(e.contains("100000") && e.contains("512"), "{e}");
    assert!(!dir.path().join("long").exists());
    // eval: a zero batch or length, and a split seed other than the training one, are refused.
    let e = run_err(sprig().args(["eval", "--task", "sms-spam", "--batch-size", "0", "--model"]).arg(&run).arg("--out").arg(dir.path().join("e0")));
    assert!(e.contains("--batch-size"), "{e}");
    let e = run_err(sprig().args(["eval", "--task", "sms-spam", "--max-seq-len", "0", "--model"]).arg(&run).arg("--out").arg(dir.path().join("e1")));
    assert!(e.contains("--max-seq-len"), "{e}");
    let e = run_err(sprig().args(["eval", "--task", "sms-spam", "--seed", "43", "--model"]).arg(&run).arg("--out").arg(dir.path().join("e2")));
    assert!(e.contains("43") && e.contains("42") && e.contains("--any-split-seed"), "{e}");
    for d in ["e0", "e1", "e2"] {
        assert!(!dir.path().join(d).exists(), "{d} was written");
    }
    // --overwrite never touches the model, even when it is the run itself.
    for o in [run.clone(), run.join("inner")] {
        let e = run_err(sprig().args(["finetune", "--task", "sms-spam", "--overwrite", "--model"]).arg(&run).arg("--out").arg(&o).args(tiny));
        assert!(e.contains("--model") && e.contains("even with --overwrite"), "{e}");
    }
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), before);
    // --overwrite replaces the finished run; a staging directory left by a killed run is removed.
    let stale = dir.path().join(".run.partial-999999999-abcdef");
    std::fs::create_dir(&stale).unwrap();
    run_ok(sprig().args(["finetune", "--task", "sms-spam", "--seed", "7", "--overwrite", "--out"]).arg(&run).args(tiny));
    assert!(std::fs::read_to_string(run.join("config.toml")).unwrap().contains("seed = 7"));
    assert_eq!(json(&run.join("summary.json"))["seed"], 7);
    assert!(!stale.exists());
    let left: Vec<String> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().to_string()).filter(|n| n.starts_with('.')).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn bad_arguments_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = run_err(sprig().args(["finetune", "--task", "imdb", "--out"]).arg(dir.path().join("x")));
    assert!(e.contains("imdb") && e.contains("rt-sentiment"), "{e}");
    let e = run_err(sprig().args(["finetune", "--model", "/no/such/model", "--task", "trec6", "--out"]).arg(dir.path().join("y")));
    assert!(e.contains("/no/such/model"), "{e}");
    let e = run_err(sprig().args(["finetune", "--lr=-1", "--out"]).arg(dir.path().join("z")));
    assert!(e.contains("lr"), "{e}");
    let e = run_err(sprig().args(["finetune", "--weight-decay=-0.1", "--out"]).arg(dir.path().join("v")));
    assert!(e.contains("weight_decay") && e.contains("-0.1") && !dir.path().join("v").exists(), "{e}");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "epochs = 2\nbogus_field = 1\n").unwrap();
    let e = run_err(sprig().arg("finetune").arg("--config").arg(&cfg).arg("--out").arg(dir.path().join("w")));
    assert!(e.contains("bad.toml") && e.contains("bogus_field"), "{e}");
}

#[test]
fn dst_smoke_writes_summary_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rigl");
    let args = ["dst", "--method", "rigl", "--sparsity", "0.9", "--model", "lenet300", "--dataset", "fashion-mnist", "--seeds", "2", "--epochs", "1", "--batch-size", "64", "--max-train", "1920", "--delta-t", "5", "--lr", "3e-3"];
    let stdout = run_ok(sprig().args(args).arg("--out").arg(&out));
    assert!(stdout.contains("Rigl"), "{stdout}");
    let s = json(&out.join("summary.json"));
    for k in ["test_acc_mean", "test_acc_std", "itop_rate", "train_seconds", "final_sparsity"] {
        assert!(s[k].is_number(), "summary lacks {k}: {s}");
    }
    assert!((s["final_sparsity"].as_f64().unwrap() - 0.9).abs() < 2e-3, "{s}");
    assert!(s["itop_rate"].as_f64().unwrap() > 0.1 + 1e-3, "RigL explored nothing: {s}");
    assert!(s["test_acc_mean"].as_f64().unwrap() > 0.2, "{s}"); // chance is 0.1
    assert_eq!(s["runs"].as_array().unwrap().len(), 2);
    // A rerun resumes from the per-seed results and reproduces the summary.
    run_ok(sprig().args(args).arg("--out").arg(&out));
    assert_eq!(json(&out.join("summary.json"))["test_acc_mean"], s["test_acc_mean"]);
    // A different experiment in the same directory is refused; bad names are named.
    let e = run_err(sprig().args(["dst", "--method", "set", "--max-train", "64", "--out"]).arg(&out));
    assert!(e.contains("different experiment"), "{e}");
    let e = run_err(sprig().args(["dst", "--method", "magic", "--out"]).arg(dir.path().join("x")));
    assert!(e.contains("magic") && e.contains("rigl"), "{e}");
    let e = run_err(sprig().args(["dst", "--method", "rigl", "--sparsity", "1.5", "--max-train", "64", "--out"]).arg(dir.path().join("y")));
    assert!(e.contains("1.5"), "{e}");
}

/// The blessings commands refuse what they cannot score, before anything is written.
#[test]
fn blessings_commands_refuse_mismatched_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("grid");
    let e = run_err(sprig().args(["blessings-grid", "--dataset", "rt-sentiment", "--out"]).arg(&out));
    assert!(e.contains("not an image task"), "{e}");
    let e = run_err(sprig().args(["blessings-grid", "--rounds", "0", "--out"]).arg(&out));
    assert!(e.contains("--rounds"), "{e}");
    let e = run_err(sprig().args(["blessings-grid", "--variants", "imp,magic", "--out"]).arg(&out));
    assert!(e.contains("magic"), "{e}");
    let e = run_err(sprig().args(["blessings-grid", "--model", "resnet", "--out"]).arg(&out));
    assert!(e.contains("resnet") && e.contains("lenet5"), "{e}");
    assert!(!out.exists(), "a refused grid writes nothing");
    let e = run_err(sprig().args(["blessings", "--task", "fashion-mnist", "--ood", "trec6", "--models", "m", "--out"]).arg(dir.path().join("b")));
    assert!(e.contains("not an image task"), "{e}");
    let e = run_err(sprig().args(["blessings", "--task", "fashion-mnist", "--ood", "fashion-mnist", "--models", "m", "--out"]).arg(dir.path().join("b")));
    assert!(e.contains("in-distribution task itself"), "{e}");
}

/// `sprig moefy` refuses settings it cannot run, naming them, before anything is loaded or written.
#[test]
fn moefy_refuses_bad_experts_settings() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("moe");
    let base = ["moefy", "--model", "no-such-model", "--task", "rt-sentiment"];
    let e = run_err(sprig().args(base).args(["--expert-sparsity", "1.0", "--out"]).arg(&out));
    assert!(e.contains("--expert-sparsity") && e.contains('1'), "{e}");
    let e = run_err(sprig().args(base).args(["--upcycle", "--experts", "4", "--top-k", "5", "--out"]).arg(&out));
    assert!(e.contains("--top-k 5"), "{e}");
    let e = run_err(sprig().args(base).args(["--experts", "0", "--out"]).arg(&out));
    assert!(e.contains("--experts"), "{e}");
    assert!(!out.exists(), "a refused run writes nothing");
}
