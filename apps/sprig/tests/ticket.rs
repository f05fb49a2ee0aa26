//! `sprig ticket` / `transfer` / `export` / `compile` end to end on the real MiniLM-L6 and a tiny real subset:
//! a run killed mid-way and resumed ends with the same results (and the same ticket weights and
//! masks, bit for bit) as an uninterrupted one; transfer and export read its tickets.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
mod common;
use common::{json, run_ok, sprig};

/// The value without wall-clock fields (they differ between runs by nature).
fn strip_time(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.retain(|k, _| !k.contains("seconds"));
            m.values_mut().for_each(strip_time);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_time),
        _ => {}
    }
}

const TINY: [&str; 24] = [
    "--task", "rt-sentiment", "--max-train", "32", "--max-dev", "16", "--max-test", "24", "--batch-size", "16", "--epochs", "1",
    "--max-seq-len", "32", "--rounds", "2", "--rate", "0.3", "--seeds", "1", "--controls", "random-mask,oneshot", "--lr", "1e-4",
];

fn ticket(out: &Path) -> Command {
    let mut c = sprig();
    c.arg("ticket").args(TINY).arg("--out").arg(out);
    c
}

fn manifest_hashes(run: &Path) -> Vec<(String, String)> {
    (0..=2)
        .map(|r| {
            let m = json(&run.join(format!("round-{r:02}/seed-0/sprig.json")));
            (m["weights_sha256"].as_str().unwrap().to_string(), m["masks_sha256"].as_str().unwrap().to_string())
        })
        .collect()
}

#[test]
fn killed_and_resumed_equals_uninterrupted_then_transfer_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let out = run_ok(&mut ticket(&a));
    assert!(out.contains("highest matching sparsity"), "{out}");

    // Kill the second run with SIGKILL as soon as round 1's ticket is on disk (its controls are
    // then running or about to), then resume it.
    let mut child = ticket(&b).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while !b.join("round-01/seed-0/sprig.json").exists() {
        // A generous bound: on a quiet machine round 1 is done in seconds; under heavy load
        // (other jobs on the 2 cores) it took minutes.
        assert!(t0.elapsed() < Duration::from_secs(1800), "round 1 never finished");
        assert!(child.try_wait().unwrap().is_none(), "run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!b.join("round-02/seed-0/sprig.json").exists(), "killed too late to test resuming");
    assert_eq!(json(&b.join("summary.json"))["complete"], false);
    run_ok(&mut ticket(&b));

    let (mut sa, mut sb) = (json(&a.join("summary.json")), json(&b.join("summary.json")));
    strip_time(&mut sa);
    strip_time(&mut sb);
    assert_eq!(sa, sb, "resumed summary differs from the uninterrupted one");
    assert_eq!(sa["complete"], true);
    let (mut ra, mut rb) = (json(&a.join("results.json")), json(&b.join("results.json")));
    strip_time(&mut ra);
    strip_time(&mut rb);
    assert_eq!(ra, rb);
    assert_eq!(manifest_hashes(&a), manifest_hashes(&b), "ticket weights or masks differ");

    // summary.json has the fields, the sparsities of the schedule and every control.
    let rounds = sa["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3);
    for (r, row) in rounds.iter().enumerate() {
        assert!((row["sparsity"].as_f64().unwrap() - 0.3 * r as f64).abs() < 1e-9);
        let m = row["metric_mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&m));
        if r > 0 {
            for k in ["random_mask_mean", "oneshot_mean"] {
                assert!(row[k].is_number(), "round {r} lacks {k}");
            }
            assert!(row["reinit_mean"].is_null(), "reinit was not asked for");
        }
    }
    assert!(sa.get("highest_matching_sparsity").is_some());

    // A later invocation adds gradual magnitude pruning at round 2 only, keeping the control
    // models it trains; the controls already on disk stay in the summary.
    let mut more: Vec<&str> = TINY.to_vec();
    more[21] = "gmp,obs,snip,rigl";
    run_ok(sprig().arg("ticket").args(&more).args(["--control-rounds", "2", "--keep-control-models", "--out"]).arg(&a));
    let sg = json(&a.join("summary.json"));
    let rows = sg["rounds"].as_array().unwrap();
    assert!(rows[1]["gmp_mean"].is_null() && rows[1]["obs_mean"].is_null(), "gmp or obs ran outside --control-rounds");
    assert!(rows[2]["gmp_mean"].is_number() && rows[2]["obs_mean"].is_number() && rows[2]["random_mask_mean"].is_number(), "{}", rows[2]);
    let o = json(&a.join("round-02/seed-0/control-obs.json"))["metrics"].clone();
    assert!((o["sparsity"].as_f64().unwrap() - 0.6).abs() < 1e-4, "one-shot OBS reached {}", o["sparsity"]);
    let g = json(&a.join("round-02/seed-0/control-gmp.json"))["metrics"].clone();
    assert!((g["sparsity"].as_f64().unwrap() - 0.6).abs() < 1e-4, "gradual pruning reached {}", g["sparsity"]);
    assert!(!a.join("round-01/seed-0/control-gmp.json").exists(), "gmp ran outside --control-rounds");
    // SNIP and RigL (kept at the round's sparsity by drop-and-grow) at 60% too.
    assert!(rows[2]["snip_mean"].is_number() && rows[2]["rigl_mean"].is_number(), "{}", rows[2]);
    for c in ["snip", "rigl"] {
        let r = json(&a.join(format!("round-02/seed-0/control-{c}.json")))["metrics"].clone();
        assert!((r["sparsity"].as_f64().unwrap() - 0.6).abs() < 1e-4, "{c} reached {}", r["sparsity"]);
    }
    // The kept control models: a sparse checkpoint per control trained by that invocation, with
    // the control's sparsity and the metrics of its result file.
    let (sn, rl) = (json(&a.join("round-02/seed-0/control-snip.json"))["metrics"].clone(), json(&a.join("round-02/seed-0/control-rigl.json"))["metrics"].clone());
    for (c, res) in [("gmp", &g), ("obs", &o), ("snip", &sn), ("rigl", &rl)] {
        let m = json(&a.join(format!("round-02/seed-0-{c}/sprig.json")));
        assert!((m["prunable_sparsity"].as_f64().unwrap() - 0.6).abs() < 1e-4, "{c}: {}", m["prunable_sparsity"]);
        assert_eq!(&m["extra"]["metrics"], res, "{c}'s kept model is not the one scored");
    }
    assert!(!a.join("round-02/seed-0-random_mask").exists(), "a control trained without --keep-control-models was saved");
    // The stored masks have the schedule's sparsity over the prunable set.
    let man = json(&a.join("round-02/seed-0/sprig.json"));
    assert!((man["prunable_sparsity"].as_f64().unwrap() - 0.6).abs() < 1e-4, "{}", man["prunable_sparsity"]);

    // Another --out with a different recipe is refused on resume.
    let bad = sprig().arg("ticket").args(&TINY[..22]).args(["--lr", "2e-4", "--out"]).arg(&a).output().unwrap();
    assert!(!bad.status.success());
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(e.contains("different experiment") && e.contains("`finetune.lr`"), "{e}");

    // Transfer the 60% ticket to sms-spam with its mask fixed, against dense fine-tuning.
    let t = dir.path().join("t");
    run_ok(sprig().args(["transfer", "--ticket"]).arg(a.join("round-02")).args(["--task", "sms-spam", "--out"]).arg(&t));
    let ts = json(&t.join("summary.json"));
    assert_eq!(ts["source_task"], "rt-sentiment");
    assert_eq!(ts["target_task"], "sms-spam");
    assert!((ts["sparsity"].as_f64().unwrap() - 0.6).abs() < 1e-4);
    assert!(ts["diff"].is_number());
    // To its own task with its own recipe and seed, a ticket's transfer is its own fine-tune: read,
    // not repeated (the diagonal of the transfer matrix).
    let own = dir.path().join("own");
    run_ok(sprig().args(["transfer", "--ticket"]).arg(a.join("round-02")).args(["--task", "rt-sentiment", "--no-dense", "--out"]).arg(&own));
    let os = json(&own.join("summary.json"));
    assert_eq!(os["ticket_mean"], rounds[2]["metric_mean"], "{os}");
    assert_eq!(os["total_train_seconds"], json(&a.join("round-02/seed-0/sprig.json"))["extra"]["metrics"]["train_seconds"]);

    // Export: a new directory with HF files, masks and the verification logits.
    let e = dir.path().join("export");
    run_ok(sprig().args(["export", "--ticket"]).arg(a.join("round-02/seed-0")).arg("--out").arg(&e).args(["--examples", "3"]));
    for f in ["model.safetensors", "masks.safetensors", "sprig.json", "config.json", "tokenizer.json", "modeling_sprig_bert.py", "sprig-logits.json"] {
        assert!(e.join(f).exists(), "export lacks {f}");
    }
    assert_eq!(json(&e.join("sprig-logits.json"))["examples"].as_array().unwrap().len(), 3);
    assert_eq!(json(&e.join("config.json"))["architectures"][0], "SprigBertForSequenceClassification");
    // A kept control model exports the same way.
    let ec = dir.path().join("export-gmp");
    run_ok(sprig().args(["export", "--ticket"]).arg(a.join("round-02/seed-0-gmp")).arg("--out").arg(&ec).args(["--examples", "2"]));
    assert_eq!(json(&ec.join("sprig-logits.json"))["examples"].as_array().unwrap().len(), 2);
    let again = sprig().args(["export", "--ticket"]).arg(a.join("round-02/seed-0")).arg("--out").arg(&e).output().unwrap();
    assert!(!again.status.success(), "export over an existing directory must fail");

    // Compile: the 60% ticket on CSR computes what the masked-dense model computes, in less memory.
    let cj = dir.path().join("compile.json");
    run_ok(sprig().args(["compile", "--ticket"]).arg(a.join("round-02")).args(["--batch", "2", "--seq", "16", "--runs", "1", "--warmup", "0", "--json"]).arg(&cj));
    let c = &json(&cj)[0];
    assert!((c["sparsity"].as_f64().unwrap() - 0.6).abs() < 1e-4, "{c}");
    assert!(c["max_abs_logit_diff"].as_f64().unwrap() <= 1e-4, "compiled logits differ: {c}");
    assert!(c["linear_sparse_bytes"].as_u64().unwrap() < c["linear_dense_bytes"].as_u64().unwrap(), "{c}");
    assert!(c["dense_ms"].as_f64().unwrap() > 0.0 && c["sparse_ms"].as_f64().unwrap() > 0.0);

    // bench train-step on the ticket's masks (the speed rows of bert-tickets.md).
    let bj = dir.path().join("bench.json");
    let bench = ["bench", "train-step", "--batch", "2", "--seq", "16", "--runs", "1", "--warmup", "0", "--masks"];
    run_ok(sprig().args(bench).arg(a.join("round-02/seed-0")).arg("--json").arg(&bj));
    let b = json(&bj);
    assert!((b["sparsity"].as_f64().unwrap() - 0.6).abs() < 1e-4, "{b}");
    assert!(b["step_ms"]["median"].as_f64().unwrap() > 0.0);
}

/// `sprig upstream`: IMP without labels on the contrastive objective gives tickets with the
/// schedule's sparsity that `sprig transfer` fine-tunes on a task; a second invocation resumes
/// (trains nothing) and bad settings are refused with a clear message.
#[test]
fn upstream_ticket_then_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up");
    let args = ["upstream", "--max-train", "48", "--max-dev", "16", "--batch-size", "8", "--max-seq-len", "24", "--rounds", "2", "--rate", "0.3", "--lr", "1e-4"];
    let out = run_ok(sprig().args(args).arg("--out").arg(&up));
    assert!(out.contains("| 2 | 60% |"), "{out}");
    let s = json(&up.join("summary.json"));
    assert_eq!(s["corpus"], serde_json::json!(["20ng", "bbc"]));
    let rows = s["rounds"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    // Dense training on its own objective keeps the checkpoint's embedding nearly unchanged; the
    // 60% subnetwork has moved away from it.
    let cos = |r: usize| rows[r]["cosine_to_dense_mean"].as_f64().unwrap();
    assert!(cos(0) > 0.95, "{}", cos(0));
    assert!(cos(2) < cos(0), "{} vs {}", cos(2), cos(0));
    for r in 1..=2 {
        let man = json(&up.join(format!("round-{r:02}/seed-0/sprig.json")));
        assert!((man["prunable_sparsity"].as_f64().unwrap() - 0.3 * r as f64).abs() < 1e-4, "{}", man["prunable_sparsity"]);
        assert_eq!(man["extra"]["task"], "upstream");
    }
    let hashes = std::fs::read(up.join("round-02/seed-0/sprig.json")).unwrap();
    run_ok(sprig().args(args).arg("--out").arg(&up));
    assert_eq!(hashes, std::fs::read(up.join("round-02/seed-0/sprig.json")).unwrap(), "resume retrained a finished round");

    let t = dir.path().join("t");
    let tiny = ["--task", "trec6", "--max-train", "32", "--max-dev", "16", "--max-test", "24", "--batch-size", "16", "--epochs", "1", "--max-seq-len", "32", "--no-dense"];
    run_ok(sprig().args(["transfer", "--ticket"]).arg(up.join("round-01")).args(tiny).arg("--out").arg(&t));
    let ts = json(&t.join("summary.json"));
    assert_eq!(ts["source_task"], "upstream");
    assert_eq!(ts["target_task"], "trec6");
    assert!((ts["sparsity"].as_f64().unwrap() - 0.3).abs() < 1e-4);

    for (bad, why) in [(&["--batch-size", "1"][..], "at least 2"), (&["--task", "trec6"][..], "--corpus"), (&["--corpus", "nosuch"][..], "nosuch")] {
        let o = sprig().arg("upstream").args(bad).arg("--out").arg(dir.path().join("bad")).output().unwrap();
        assert!(!o.status.success());
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(why), "{bad:?}: {e}");
    }
}

/// `--layers 2 --rounds 0`: the dense fine-tunes of MiniLM's first two layers (the small dense net
/// of the blessings comparison), exported as a two-layer model; more layers than MiniLM has is
/// refused before anything is written.
#[test]
fn small_dense_net_of_the_first_layers() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("small");
    let mut args: Vec<&str> = TINY[..14].to_vec();
    args.extend(["--lr", "1e-4", "--rounds", "0", "--seeds", "1", "--layers", "2", "--out"]);
    run_ok(sprig().arg("ticket").args(&args).arg(&out));
    let man = json(&out.join("round-00/seed-0/sprig.json"));
    assert_eq!(man["extra"]["finetune"]["layers"], 2, "{man}");
    let e = dir.path().join("export");
    run_ok(sprig().args(["export", "--ticket"]).arg(out.join("round-00/seed-0")).arg("--out").arg(&e).args(["--examples", "2"]));
    assert_eq!(json(&e.join("config.json"))["num_hidden_layers"], 2);
    let st = std::fs::read(e.join("model.safetensors")).unwrap();
    let names = safetensors::SafeTensors::deserialize(&st).unwrap().names().into_iter().map(str::to_string).collect::<Vec<_>>();
    assert!(names.iter().any(|n| n.contains("layer.1.")) && !names.iter().any(|n| n.contains("layer.2.")), "{names:?}");
    let summary = json(&out.join("summary.json"));
    let rounds = summary["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 1, "{summary}");
    assert!((0.0..=1.0).contains(&rounds[0]["metric_mean"].as_f64().unwrap()), "{summary}");

    let bad = sprig().arg("ticket").args(&args[..args.len() - 3]).args(["--layers", "7", "--out"]).arg(dir.path().join("bad")).output().unwrap();
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("keep 7") && err.contains("has 6"), "{err}");
    assert!(!dir.path().join("bad").exists(), "a refused run wrote its directory");
}
