//! `sprig predict` and `sprig bench predict` on a real pruned classifier: MiniLM-L6 with a
//! 3-label head, 90% of every encoder linear zeroed by magnitude (no masks file: the masks come
//! from the zeros). Release-only: they run the real model.
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn sprig() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sprig"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("spawn sprig")
}

fn ok(cmd: &mut Command) -> (String, String) {
    let o = run(cmd);
    let (out, err) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
    assert!(o.status.success(), "{cmd:?} failed:\n{out}\n{err}");
    (out, err)
}

fn fails(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(!o.status.success(), "{cmd:?} should fail");
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// A classifier directory written by sprig's HF writer (MiniLM-L6 + a head with O(1) weights, so
/// that probabilities are far from uniform), then magnitude-pruned in `model.safetensors`.
fn pruned_classifier(dir: &Path) {
    let ckpt = sprig_bert::Checkpoint::load("sentence-transformers/all-MiniLM-L6-v2", &Device::Cpu).expect("run scripts/fetch-assets");
    let model = sprig_bert::BertClassifier::new(ckpt.encoder(0, &Device::Cpu).unwrap(), 3, sprig_bert::Pooling::Mean, None, 7).unwrap();
    let labels = ["negative", "neutral", "positive"].map(String::from);
    let meta = HashMap::from([("max_seq_len".to_string(), "64".to_string())]);
    sprig_bert::save_classifier(&model, &labels, ckpt.files.tokenizer().unwrap(), dir, meta).unwrap();
    let path = dir.join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    for (name, w) in tensors.iter_mut() {
        let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        if name == "classifier.weight" {
            v.iter_mut().enumerate().for_each(|(i, x)| *x = ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 2.0);
        } else if sprig_bert::is_encoder_linear_weight(name.strip_prefix("bert.").unwrap_or(name)) {
            let mut order: Vec<usize> = (0..v.len()).collect();
            order.sort_by(|&a, &b| v[a].abs().total_cmp(&v[b].abs()));
            for &i in &order[..v.len() * 9 / 10] {
                v[i] = 0.0;
            }
        } else {
            continue;
        }
        *w = Tensor::from_vec(v, w.shape(), &Device::Cpu).unwrap();
    }
    candle_core::safetensors::save(&tensors, &path).unwrap();
}

const TEXTS: &str = "a gripping, beautifully shot film\nthe plot is thin and the acting wooden\nit was fine, I guess\n\
    an utter waste of two hours\none of the best performances of the year\nmeh\nthe soundtrack alone is worth it\n\
    I fell asleep halfway through\na warm, funny and honest story\nnot bad, not great\n";

fn lines(p: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(p).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn predict_args(model: &Path, input: &Path, formats: &str, out: &Path) -> Command {
    predict_sized(model, input, formats, out, "4", "32")
}

fn predict_sized(model: &Path, input: &Path, formats: &str, out: &Path, batch: &str, seq: &str) -> Command {
    let mut c = sprig();
    c.arg("predict").arg("--model").arg(model).arg("--input").arg(input).args(["--batch-size", batch, "--max-seq-len", seq, "--formats", formats]);
    c.arg("--out").arg(out);
    c
}

#[test]
#[cfg_attr(debug_assertions, ignore = "release-only: runs MiniLM-L6")]
fn auto_formats_predict_what_dense_predicts_and_the_choice_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    pruned_classifier(&model);
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, TEXTS).unwrap();
    let (dense_out, auto_out) = (tmp.path().join("dense.jsonl"), tmp.path().join("auto.jsonl"));
    ok(&mut predict_args(&model, &input, "dense", &dense_out));
    assert!(!model.join("sprig-formats.json").exists(), "--formats dense measured nothing");
    let (_, err) = ok(&mut predict_args(&model, &input, "auto", &auto_out));
    assert!(err.contains("formats: measuring 36 pruned linears") && err.contains("sparsity 0.9"), "{err}");
    let (d, a) = (lines(&dense_out), lines(&auto_out));
    assert_eq!(d.len(), 10);
    assert_eq!(a.len(), 10);
    let mut worst = 0f64;
    let mut spread = 0f64;
    for (x, y) in d.iter().zip(&a) {
        let (px, py) = (x["probs"].as_array().unwrap(), y["probs"].as_array().unwrap());
        assert_eq!(px.len(), 3);
        let p: Vec<f64> = px.iter().map(|v| v.as_f64().unwrap()).collect();
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{x}");
        let k = x["label_id"].as_u64().unwrap() as usize;
        assert!(p.iter().all(|&v| v <= p[k]), "label_id is not the argmax: {x}");
        assert_eq!(x["label"], ["negative", "neutral", "positive"][k]);
        spread = spread.max(p[k] - p.iter().cloned().fold(1.0, f64::min));
        worst = px.iter().zip(py).map(|(u, v)| (u.as_f64().unwrap() - v.as_f64().unwrap()).abs()).fold(worst, f64::max);
    }
    assert!(spread > 0.1, "probabilities are all near uniform: the comparison would prove nothing");
    assert!(worst < 1e-4, "auto vs dense: max |prob diff| {worst}");
    // The cache holds one plan for 4 x 32 rows with every linear's measured times.
    let cache_path = model.join("sprig-formats.json");
    let cache: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cache_path).unwrap()).unwrap();
    assert_eq!(cache["weights_sha256"].as_str().unwrap().len(), 64);
    assert!(cache["simd"].is_string() && cache["cpu"].is_string() && cache["sprig_version"].is_string());
    let plan = &cache["plans"][0];
    assert_eq!(plan["rows"], 128);
    let choices = plan["choices"].as_object().unwrap();
    assert_eq!(choices.len(), 36);
    assert!(choices.values().all(|c| c["ms"]["dense"].as_f64().unwrap() > 0.0 && c["ms"]["csr"].as_f64().unwrap() > 0.0));
    // A second run reuses it: no measurement, the file untouched.
    let before = (std::fs::read(&cache_path).unwrap(), std::fs::metadata(&cache_path).unwrap().modified().unwrap());
    let again = tmp.path().join("again.jsonl");
    let (_, err) = ok(&mut predict_args(&model, &input, "auto", &again));
    assert!(err.contains("formats: reusing") && !err.contains("measuring"), "{err}");
    assert_eq!(before, (std::fs::read(&cache_path).unwrap(), std::fs::metadata(&cache_path).unwrap().modified().unwrap()));
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&auto_out).unwrap());
    // JSON lines in on stdin, out on stdout, other fields passed through.
    let mut child = sprig()
        .arg("predict")
        .arg("--model")
        .arg(&model)
        .args(["--jsonl", "--batch-size", "4", "--max-seq-len", "32"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let jsonl: String = TEXTS.lines().enumerate().map(|(i, t)| format!("{}\n", serde_json::json!({"id": i, "text": t}))).collect();
    child.stdin.take().unwrap().write_all(jsonl.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let got: Vec<serde_json::Value> = String::from_utf8(o.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(got.len(), 10);
    for (i, (g, want)) in got.iter().zip(&a).enumerate() {
        assert_eq!(g["id"], i);
        assert_eq!(g["label"], want["label"]);
        assert!(g.get("text").is_none());
    }
    // The benchmark: both models timed, same predictions, provenance recorded.
    let bench = tmp.path().join("bench.json");
    ok(sprig().args(["bench", "predict", "--model"]).arg(&model).args(["--batch", "2", "--seq", "16", "--runs", "2", "--warmup", "1", "--json"]).arg(&bench));
    let b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&bench).unwrap()).unwrap();
    assert!(b["provenance"]["command"].as_str().unwrap().starts_with("sprig bench predict"));
    let row = &b["rows"][0];
    assert_eq!((row["batch"].as_u64(), row["seq"].as_u64()), (Some(2), Some(16)));
    assert!(row["dense"]["median_ms"].as_f64().unwrap() > 0.0 && row["sparse"]["runs_ms"].as_array().unwrap().len() == 2);
    assert!(row["max_abs_prob_diff"].as_f64().unwrap() < 1e-4, "{row}");
    // int8 tracks f32: this head's O(1) weights amplify the quantization noise of an encoder that
    // was zeroed without fine-tuning, so the bound is on the typical text and on the labels (the
    // accuracy of real fine-tuned models under int8 is measured in docs/results/int8.md).
    let int8_out = tmp.path().join("int8.jsonl");
    let mut c = sprig();
    c.arg("predict").arg("--model").arg(&model).arg("--input").arg(&input).args(["--batch-size", "4", "--max-seq-len", "32", "--int8", "--out"]).arg(&int8_out);
    let (_, err) = ok(&mut c);
    assert!(err.contains("int8 (") && !err.contains("formats: measuring"), "{err}");
    let q = lines(&int8_out);
    let mut diffs: Vec<f64> = d
        .iter()
        .zip(&q)
        .map(|(x, y)| {
            let (px, py) = (x["probs"].as_array().unwrap(), y["probs"].as_array().unwrap());
            px.iter().zip(py).map(|(u, v)| (u.as_f64().unwrap() - v.as_f64().unwrap()).abs()).fold(0f64, f64::max)
        })
        .collect();
    let same_label = d.iter().zip(&q).filter(|(x, y)| x["label_id"] == y["label_id"]).count();
    diffs.sort_by(f64::total_cmp);
    let (median, worst) = (diffs[diffs.len() / 2], diffs[diffs.len() - 1]);
    assert!(worst > 0.0 && median < 0.01 && worst < 0.25 && same_label >= 8, "int8 vs f32: |prob diff| {diffs:?}, {same_label}/10 labels agree");
    assert!(fails(sprig().arg("predict").arg("--model").arg(&model).args(["--int8", "--formats", "csr"])).contains("--formats"));
    ok(sprig().args(["bench", "predict", "--model"]).arg(&model).args(["--batch", "2", "--seq", "16", "--runs", "2", "--warmup", "1", "--int8", "--profile", "--json"]).arg(&bench).arg("--log").arg("warn"));
    let b: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&bench).unwrap()).unwrap();
    let row = &b["rows"][0];
    assert!(row["int8"]["runs_ms"].as_array().unwrap().len() == 2 && row["int8_max_abs_prob_diff"].as_f64().unwrap() < 0.05, "{row}");
    assert!(row["profile"]["int8"]["linear (int8, GELU included)"].as_f64().unwrap() > 0.0, "{row}");
    assert!(b["provenance"]["machine"]["int8"].is_string());
}

#[test]
#[cfg_attr(debug_assertions, ignore = "release-only: runs MiniLM-L6")]
fn bad_inputs_get_clear_errors_and_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    pruned_classifier(&model);
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, TEXTS).unwrap();
    let out = tmp.path().join("out.jsonl");
    let check = |cmd: &mut Command, want: &[&str]| {
        let e = fails(cmd);
        assert!(want.iter().all(|w| e.contains(w)), "{e} lacks {want:?}");
        assert!(!out.exists(), "a failed run left {}", out.display());
    };
    check(&mut predict_sized(&model, &input, "dense", &out, "0", "32"), &["--batch-size", "0"]);
    check(&mut predict_sized(&model, &input, "dense", &out, "4", "1"), &["--max-seq-len", "at least 2"]);
    check(&mut predict_sized(&model, &input, "dense", &out, "4", "100000"), &["--max-seq-len 100000", "max_position_embeddings"]);
    check(&mut predict_args(&model, &input, "fastest", &out), &["\"fastest\""]);
    let empty = tmp.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    check(&mut predict_args(&model, &empty, "dense", &out), &["empty.txt", "no texts"]);
    let bad = tmp.path().join("latin1.txt");
    std::fs::write(&bad, b"fine\ncaf\xe9\n").unwrap();
    check(&mut predict_args(&model, &bad, "dense", &out), &["latin1.txt:2", "UTF-8"]);
    check(&mut predict_args(&tmp.path().join("nope"), &input, "dense", &out), &["nope", "does not exist"]);
    // A 2:4 compilation of an unstructured mask is refused, naming the group.
    check(&mut predict_args(&model, &input, "2:4", &out), &["2:4", "at most 2"]);
    let copy = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in std::fs::read_dir(&model).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
        }
        d
    };
    let trunc = copy("trunc");
    let st = std::fs::read(trunc.join("model.safetensors")).unwrap();
    std::fs::write(trunc.join("model.safetensors"), &st[..st.len() / 2]).unwrap();
    check(&mut predict_args(&trunc, &input, "auto", &out), &["model.safetensors"]);
    // A cache that cannot be read or written (a directory in its place) only warns.
    let blocked = copy("blocked");
    std::fs::create_dir(blocked.join("sprig-formats.json")).unwrap();
    let (_, err) = ok(&mut predict_args(&blocked, &input, "auto", &out));
    assert!(err.contains("measuring again") && err.contains("kept in memory only"), "{err}");
    assert_eq!(lines(&out).len(), 10);
}

#[test]
#[cfg_attr(debug_assertions, ignore = "release-only: runs MiniLM-L6")]
fn masks_file_gives_the_masks_when_present() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("model");
    pruned_classifier(&model);
    // sprig-prune's checkpoint writer (as `sprig export` uses it): weights + masks + manifest, HF names.
    let tensors = candle_core::safetensors::load(model.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut named: Vec<(String, Tensor)> = tensors.into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut masks = sprig_prune::MaskSet::new();
    for (n, t) in &named {
        if sprig_bert::is_encoder_linear_weight(n.strip_prefix("bert.").unwrap_or(n)) {
            let keep: Vec<bool> = t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|&v| v != 0.0).collect();
            masks.insert(n.clone(), sprig_prune::Mask::from_bools(t.dims(), &keep).unwrap());
        }
    }
    let ck = tmp.path().join("ck");
    sprig_prune::checkpoint::save(&ck, &named, &masks, &Default::default()).unwrap();
    for f in ["model.safetensors", "masks.safetensors", "sprig.json"] {
        std::fs::rename(ck.join(f), model.join(f)).unwrap();
    }
    let input = tmp.path().join("texts.txt");
    std::fs::write(&input, TEXTS).unwrap();
    let (d, a) = (tmp.path().join("d.jsonl"), tmp.path().join("a.jsonl"));
    ok(&mut predict_args(&model, &input, "dense", &d));
    let (_, err) = ok(&mut predict_args(&model, &input, "auto", &a));
    assert!(err.contains("36 pruned encoder linears") && err.contains("masks from masks.safetensors"), "{err}");
    let cache: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(model.join("sprig-formats.json")).unwrap()).unwrap();
    assert_eq!(cache["masks_sha256"].as_str().unwrap().len(), 64);
    for (x, y) in lines(&d).iter().zip(lines(&a)) {
        let diff = x["probs"].as_array().unwrap().iter().zip(y["probs"].as_array().unwrap()).map(|(u, v)| (u.as_f64().unwrap() - v.as_f64().unwrap()).abs()).fold(0.0, f64::max);
        assert!(diff < 1e-4, "{x} vs {y}");
    }
}
