//! Criteria against closed forms, and sparse checkpoint round trips / corruption.
use candle_core::{DType, Device, Tensor, Var};
use sprig_prune::checkpoint::{self, CheckpointMeta};
use sprig_prune::{criteria, prune, ActivationNorms, Allocation, Criterion, GradAccumulator, Granularity, Mask, MaskSet, PruneError};

fn var(v: &[f32], shape: &[usize]) -> Var {
    Var::from_tensor(&Tensor::from_slice(v, shape, &Device::Cpu).unwrap()).unwrap()
}

#[test]
fn snip_and_grasp_match_closed_forms() {
    // L = 0.5 Σ a_i w_i²: g = a⊙w, H = diag(a), Hg = a²⊙w.
    let a = [1.0f32, 2.0, 3.0, 0.5, 4.0, 1.5];
    let w0 = [0.3f32, -0.7, 0.2, 1.1, -0.05, 0.6];
    let w = var(&w0, &[2, 3]);
    let params = vec![("w".to_string(), w.clone())];
    let at = Tensor::from_slice(&a, (2, 3), &Device::Cpu).unwrap();
    let mut loss = |_b: usize| (w.as_tensor().sqr()? * &at)?.sum_all()? * 0.5;
    let s = criteria::snip(&params, &mut loss, 2).unwrap();
    for i in 0..6 {
        assert!((s["w"][i] - (a[i] * w0[i] * w0[i]).abs()).abs() < 1e-6);
    }
    let g = criteria::grasp(&params, &mut loss, 1, 1e-2).unwrap();
    for i in 0..6 {
        let want = w0[i] * a[i] * a[i] * w0[i];
        assert!((g["w"][i] - want).abs() < 1e-2 * want.abs().max(1.0), "{i}: {} vs {want}", g["w"][i]);
    }
    // weights restored exactly
    assert_eq!(w.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), w0.to_vec());
}

#[test]
fn synflow_matches_path_norm_formula() {
    // f(x) = W2 W1 x with x = 1: R = 1ᵀ|W2||W1|1, S(W1_ij) = (Σ_k |W2_ki|) |W1_ij|.
    let w1v = [0.5f32, -1.0, 2.0, 0.25, -0.1, 0.3];
    let w2v = [1.0f32, -2.0, 0.5, -3.0, 0.2, 1.0];
    let w1 = var(&w1v, &[3, 2]);
    let w2 = var(&w2v, &[2, 3]);
    let all = vec![("w1".to_string(), w1.clone()), ("w2".to_string(), w2.clone())];
    let mut fwd = || {
        let x = Tensor::ones((1, 2), DType::F32, &Device::Cpu)?;
        x.matmul(&w1.as_tensor().t()?)?.matmul(&w2.as_tensor().t()?)
    };
    let s = criteria::synflow_scores(&all, &["w1".into(), "w2".into()], None, &mut fwd).unwrap();
    for i in 0..3 {
        let col: f32 = (0..2).map(|k| w2v[k * 3 + i].abs()).sum();
        for j in 0..2 {
            assert!((s["w1"][i * 2 + j] - col * w1v[i * 2 + j].abs()).abs() < 1e-5);
        }
    }
    assert_eq!(w1.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap(), w1v.to_vec());
    let m = criteria::synflow_prune(&all, &["w1".into(), "w2".into()], 0.5, 3, Granularity::Unstructured, &Allocation::global(), &mut fwd).unwrap();
    assert_eq!(m.count_kept(), 6);
}

#[test]
fn grad_accumulator_movement_taylor_fisher_and_wanda() {
    let w = var(&[1.0, -2.0, 0.5, 3.0], &[2, 2]);
    let params = vec![("w".to_string(), w.clone())];
    let mut acc = GradAccumulator::new();
    assert!(acc.movement().is_err());
    for c in [1.0f32, 3.0] {
        let ct = Tensor::from_slice(&[c, -c, c, c], (2, 2), &Device::Cpu).unwrap();
        let g = (w.as_tensor() * &ct).unwrap().sum_all().unwrap().backward().unwrap(); // grad = ct
        acc.update(&params, &g).unwrap();
    }
    // Σ g⊙w = (1+3)·[1, 2, 0.5, 3]
    assert_eq!(acc.movement().unwrap()["w"], vec![-4.0, -8.0, -2.0, -12.0]);
    // mean (g w)²: (1+9)/2 · (w)² ... g_i = ±c, so (g w)² = c² w²
    assert_eq!(acc.taylor().unwrap()["w"], vec![5.0, 20.0, 1.25, 45.0]);
    let f = acc.fisher(&params, 0.0).unwrap();
    assert_eq!(f["w"], vec![2.5, 10.0, 0.625, 22.5]);
    let mut an = ActivationNorms::new();
    an.observe("w", &Tensor::from_slice(&[3.0f32, 0.0, 4.0, 1.0], (2, 2), &Device::Cpu).unwrap()).unwrap();
    let s = an.wanda(&params).unwrap();
    assert_eq!(s["w"], vec![5.0, 2.0, 2.5, 3.0]);
    assert!(an.observe("w", &Tensor::zeros((1, 3), DType::F32, &Device::Cpu).unwrap()).is_err());
    assert_eq!("SynFlow".parse::<Criterion>().unwrap(), Criterion::Synflow);
    assert!("bogus".parse::<Criterion>().is_err());
}

fn sample() -> (Vec<(String, Tensor)>, MaskSet) {
    let dev = Device::Cpu;
    let w1 = Tensor::arange(0f32, 60.0, &dev).unwrap().reshape((6, 10)).unwrap();
    let b1 = Tensor::arange(0f32, 6.0, &dev).unwrap();
    let params = vec![("l1.weight".to_string(), w1), ("l1.bias".to_string(), b1)];
    let vars: Vec<(String, Var)> = params.iter().map(|(n, t)| (n.clone(), Var::from_tensor(t).unwrap())).collect();
    let sc = criteria::random(&vars[..1], 3);
    let m = prune(&sc, &[("l1.weight".into(), vec![6, 10])], 0.8, Granularity::Unstructured, &Allocation::global(), None).unwrap();
    (params, m)
}

#[test]
fn checkpoint_round_trip_is_exact() {
    let (params, masks) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    let meta = CheckpointMeta { method: "random".into(), seed: Some(3), schedule: Some(serde_json::json!({"kind": "one_shot"})), ..Default::default() };
    let man = checkpoint::save(&dir, &params, &masks, &meta).unwrap();
    assert!((man.prunable_sparsity - 0.8).abs() < 1e-12);
    let back = checkpoint::load(&dir, &Device::Cpu).unwrap();
    assert_eq!(back.masks, masks);
    assert_eq!(back.masks.sha256(), masks.sha256());
    assert_eq!(back.manifest, man);
    let m = masks.get("l1.weight").unwrap();
    let w = back.tensors[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for (i, x) in w.iter().enumerate() {
        assert_eq!(*x, if m.get(i) { i as f32 } else { 0.0 });
    }
    // plain safetensors readable by any loader (here candle's)
    let plain = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(plain.len(), 2);
    // overwrite atomically with a child that records its parent
    let parent = checkpoint::weights_sha256(&dir).unwrap();
    let child = CheckpointMeta { parent_sha256: Some(parent.clone()), ..meta };
    checkpoint::save(&dir, &params, &masks, &child).unwrap();
    assert_eq!(checkpoint::read_manifest(&dir).unwrap().meta.parent_sha256, Some(parent));
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert_eq!(leftovers.len(), 1);
}

#[test]
fn corrupt_checkpoints_are_clear_errors() {
    let (params, masks) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    checkpoint::save(&dir, &params, &masks, &CheckpointMeta::default()).unwrap();
    let mp = dir.join("masks.safetensors");
    let good = std::fs::read(&mp).unwrap();
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    std::fs::write(&mp, &bad).unwrap();
    let e = checkpoint::load(&dir, &Device::Cpu).unwrap_err();
    assert!(matches!(&e, PruneError::Corrupt { path, .. } if path.ends_with("masks.safetensors")), "{e}");
    std::fs::write(&mp, &good[..good.len() / 2]).unwrap();
    assert!(matches!(checkpoint::load(&dir, &Device::Cpu), Err(PruneError::Corrupt { .. })));
    std::fs::write(dir.join("sprig.json"), b"{not json").unwrap();
    assert!(matches!(checkpoint::load(&dir, &Device::Cpu), Err(PruneError::Corrupt { .. })));
    // a mask naming an unknown tensor, or of the wrong shape
    let mut m2 = masks.clone();
    m2.insert("nope", Mask::ones(&[2]));
    assert!(matches!(checkpoint::save(&dir, &params, &m2, &CheckpointMeta::default()), Err(PruneError::UnknownParam(_))));
    let mut m3 = MaskSet::new();
    m3.insert("l1.bias", Mask::ones(&[7]));
    assert!(matches!(checkpoint::save(&dir, &params, &m3, &CheckpointMeta::default()), Err(PruneError::ShapeMismatch { .. })));
    // refuses to replace a directory that is not a checkpoint
    let other = tmp.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("precious.txt"), b"x").unwrap();
    assert!(checkpoint::save(&other, &params, &masks, &CheckpointMeta::default()).is_err());
    assert!(other.join("precious.txt").exists());
}

fn saved() -> (tempfile::TempDir, std::path::PathBuf) {
    let (params, masks) = sample();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ckpt");
    checkpoint::save(&dir, &params, &masks, &CheckpointMeta { method: "random".into(), ..Default::default() }).unwrap();
    (tmp, dir)
}

fn manifest_json(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("sprig.json")).unwrap()).unwrap()
}

/// Writes `m` as the manifest; with `rehash`, its manifest_sha256 recomputed (a careful forger).
fn write_manifest(dir: &std::path::Path, mut m: serde_json::Value, rehash: bool) {
    if rehash {
        m["manifest_sha256"] = checkpoint::manifest_sha256(&m).into();
    }
    std::fs::write(dir.join("sprig.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn manifest_numbers_that_disagree_with_masks_and_weights_are_refused() {
    let (_tmp, dir) = saved();
    let good = manifest_json(&dir);
    assert_eq!(good["manifest_sha256"].as_str().unwrap(), checkpoint::manifest_sha256(&good));
    let ck = checkpoint::load(&dir, &Device::Cpu).unwrap();
    assert!(ck.manifest_hashed);
    assert!((ck.report.prunable_sparsity - 0.8).abs() < 1e-12);
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, &str, Edit); 7] = [
        ("prunable_sparsity", "0.99", |m| m["prunable_sparsity"] = 0.99.into()),
        ("model_sparsity", "0.99", |m| m["model_sparsity"] = 0.99.into()),
        ("tensors[0].sparsity", "0.99", |m| m["tensors"][0]["sparsity"] = 0.99.into()),
        ("tensors[0].kept", "1", |m| m["tensors"][0]["kept"] = 1.into()),
        ("tensors[1].numel", "7", |m| m["tensors"][1]["numel"] = 7.into()),
        ("prunable_numel", "1", |m| m["prunable_numel"] = 1.into()),
        ("model_numel", "1", |m| m["model_numel"] = 1.into()),
    ];
    for (field, value, edit) in edits {
        for rehash in [false, true] {
            let mut m = good.clone();
            edit(&mut m);
            write_manifest(&dir, m, rehash);
            let e = checkpoint::load(&dir, &Device::Cpu).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(&e, PruneError::Corrupt { path, .. } if path.ends_with("sprig.json")), "{field}: {msg}");
            assert!(msg.contains(field) && msg.contains(value), "{field}: {msg}");
        }
    }
    write_manifest(&dir, good, false);
    checkpoint::load(&dir, &Device::Cpu).unwrap();
}

#[test]
fn manifest_hash_catches_other_edits_and_unhashed_manifests_still_load() {
    let (_tmp, dir) = saved();
    let good = manifest_json(&dir);
    let mut m = good.clone();
    m["method"] = "magnitude".into();
    write_manifest(&dir, m.clone(), false);
    let e = checkpoint::load(&dir, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("sprig.json") && e.contains("manifest_sha256"), "{e}");
    // A manifest of an older version: no hash; loads, and says it was unhashed.
    let mut old = good.clone();
    old.as_object_mut().unwrap().remove("manifest_sha256");
    write_manifest(&dir, old, false);
    let ck = checkpoint::load(&dir, &Device::Cpu).unwrap();
    assert!(!ck.manifest_hashed);
    assert_eq!(ck.manifest.manifest_sha256, None);
    // The hash ignores key order and whitespace.
    std::fs::write(dir.join("sprig.json"), serde_json::to_vec(&good).unwrap()).unwrap();
    assert!(checkpoint::load(&dir, &Device::Cpu).unwrap().manifest_hashed);
}

#[test]
fn non_finite_kept_weights_are_reported_masked_or_not() {
    let (params, masks) = sample();
    let m = masks.get("l1.weight").unwrap();
    let kept = (0..60).find(|&i| m.get(i)).unwrap();
    for (which, at) in [("l1.weight", kept), ("l1.bias", 2)] {
        let mut p = params.clone();
        let t = p.iter_mut().find(|(n, _)| n == which).unwrap();
        let mut v = t.1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[at] = if which == "l1.bias" { f32::INFINITY } else { f32::NAN };
        t.1 = Tensor::from_vec(v, t.1.dims(), &Device::Cpu).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ckpt");
        checkpoint::save(&dir, &p, &masks, &CheckpointMeta::default()).unwrap();
        let e = checkpoint::load(&dir, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains(which) && e.contains(&format!("[{at}]")) && e.contains("not finite"), "{e}");
    }
}

#[test]
fn save_removes_temporaries_of_dead_processes_only() {
    let (params, masks) = sample();
    let tmp = tempfile::tempdir().unwrap();
    // A finished child's pid is a pid no process has any more.
    let dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    let mut dead = dead;
    dead.wait().unwrap();
    let me = std::process::id();
    let names = [
        ".sprig-ckpt-999999999-abc123".to_string(),
        ".sprig-old-999999999".to_string(),
        format!(".sprig-ckpt-{dead_pid}-xyz"),
        format!(".sprig-ckpt-{me}-live"),
        ".sprig-ckpt-noPid1".to_string(),
    ];
    for n in &names {
        std::fs::create_dir(tmp.path().join(n)).unwrap();
        std::fs::write(tmp.path().join(n).join("model.safetensors"), b"partial").unwrap();
    }
    checkpoint::save(&tmp.path().join("ckpt"), &params, &masks, &CheckpointMeta::default()).unwrap();
    for (i, n) in names.iter().enumerate() {
        let exists = tmp.path().join(n).exists();
        assert_eq!(exists, i >= 3, "{n}: exists {exists}");
    }
    checkpoint::load(&tmp.path().join("ckpt"), &Device::Cpu).unwrap();
    assert_eq!(checkpoint::pid_in_name(".sprig-ckpt-123-x", ".sprig-ckpt-"), Some(123));
    assert_eq!(checkpoint::pid_in_name(".sprig-old-123", ".sprig-old-"), Some(123));
    assert_eq!(checkpoint::pid_in_name(".sprig-ckpt-a1b2c3", ".sprig-ckpt-"), None);
}
