//! Chen et al.'s comparison on real Fashion-MNIST, shrunk to seconds: LeNet-300-100 trained one
//! epoch on 6,000 images, IMP round 2 at rate 0.5 (75% of the hidden weights pruned), every
//! variant, then the image blessings report. What must hold: each variant's realised sparsity,
//! the small dense net's weight count, accuracies well above chance, FGSM lowering every accuracy,
//! a resumed run training nothing, and clear refusals.
use candle_core::Device;
use sprig_lab::blessings::{run as score, table, BlessingsConfig};
use sprig_lab::blessings_grid::{metric_figures, run_grid, GridConfig, VARIANTS};
use sprig_train::vision::{Arch, OptimChoice, TrainConfig};

fn config() -> GridConfig {
    GridConfig {
        dataset: "fashion-mnist".into(),
        arch: Arch::Lenet300,
        rounds: vec![2],
        rate: 0.5,
        output_rate: 0.25,
        seeds: vec![0],
        variants: VARIANTS.iter().map(|v| v.to_string()).collect(),
        train: TrainConfig { epochs: 1, batch_size: 64, optim: OptimChoice::Adam { lr: 1.2e-3 }, data_seed: 0, snapshot_step: None },
        rigl_delta_t: 20,
        rigl_alpha: 0.3,
        rigl_end_fraction: 0.75,
        calib_batches: 2,
        calib_batch_size: 100,
        synflow_iterations: 20,
    }
}

/// Fashion-MNIST with its first `n` training images.
fn fashion_mnist(n: usize) -> sprig_data::ImageDataset {
    let mut data = sprig_data::load_image_task("fashion-mnist", &sprig_data::sprig_home(), 42).expect("run scripts/fetch-assets");
    let hw = data.height * data.width;
    data.train.images.truncate(n * hw);
    data.train.labels.truncate(n);
    data
}

#[test]
fn the_grid_trains_every_variant_at_its_sparsity_and_the_report_reads_them() {
    let home = sprig_data::sprig_home();
    let data = fashion_mnist(6000);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("grid");
    let cfg = config();
    let dirs = run_grid(&cfg, &data, &out, &Device::Cpu).unwrap();
    let names: Vec<String> = dirs.iter().map(|d| d.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 1 + VARIANTS.len(), "{names:?}");
    assert_eq!(names[0], "dense-s0");
    // The IMP ticket's mask: hidden layers at 1 - 0.5^2 = 75%, the output at 1 - 0.75^2 = 43.75%.
    let man = |n: &str| sprig_prune::checkpoint::read_manifest(&out.join("models").join(n)).unwrap();
    let imp_name = names.iter().find(|n| n.starts_with("imp-")).unwrap().clone();
    let imp = man(&imp_name);
    let target = imp.prunable_sparsity;
    assert!((0.73..0.75).contains(&target), "ticket sparsity {target}");
    for n in &names[1..] {
        let m = man(n);
        let s = m.prunable_sparsity;
        if n.starts_with("small-dense") {
            assert_eq!(s, 0.0, "{n}");
            let kept_imp = imp.prunable_numel as f64 * (1.0 - target);
            assert!((m.prunable_numel as f64 / kept_imp - 1.0).abs() < 0.02, "{n}: {} weights vs {kept_imp}", m.prunable_numel);
        } else {
            assert!((s - target).abs() < 0.005, "{n}: sparsity {s} vs the ticket's {target}");
        }
    }
    let cfg_b = BlessingsConfig {
        task: "fashion-mnist".into(),
        models: dirs.clone(),
        ood: vec!["mnist10k".into()],
        token_dropout: 0.2,
        fgsm_eps: 0.1,
        gaussian_noise: 0.2,
        pixel_dropout: 0.2,
        seed: 0,
        batch_size: 64,
        max_seq_len: 64,
        max_examples: 2000,
    };
    let rows = score(&cfg_b, &home, |_| {}).unwrap();
    for m in &rows {
        assert_eq!((m.n, m.reliability.iter().map(|b| b.count).sum::<usize>()), (2000, 2000));
        assert!(m.accuracy > 0.6, "{}: accuracy {} after one epoch", m.model, m.accuracy);
        let auroc = m.ood_auroc["mnist10k"];
        assert!((0.0..=1.0).contains(&auroc) && m.ece < 0.5 && m.nll > 0.0, "{m:?}");
        let fgsm = m.corrupted_accuracy["FGSM on pixels, eps 0.1"];
        assert!(fgsm < m.accuracy - 0.1, "{}: FGSM {fgsm} vs clean {}", m.model, m.accuracy);
        for c in ["Gaussian noise σ 0.2", "pixel dropout 0.2"] {
            assert!(m.corrupted_accuracy[c] > 0.1, "{}: {c} {:?}", m.model, m.corrupted_accuracy);
        }
    }
    let moved = rows.iter().flat_map(|m| ["Gaussian noise σ 0.2", "pixel dropout 0.2"].map(|c| m.corrupted_accuracy[c] != m.accuracy)).filter(|d| *d).count();
    assert!(moved >= 12, "the corruptions change the accuracy of most of the 8 models ({moved} of 16)");
    assert!(rows[0].sparsity == 0.0 && (rows[1].sparsity - target).abs() < 0.01);
    assert!(table(&rows).contains("| dense (1) |"));
    let figs = metric_figures(&rows).unwrap();
    let fig_names: Vec<&str> = figs.iter().map(|f| f.0.as_str()).collect();
    assert!(fig_names.contains(&"accuracy.svg") && fig_names.contains(&"ece.svg") && fig_names.contains(&"ood-auroc-vs-mnist10k.svg"), "{fig_names:?}");
    assert_eq!(figs.len(), 7, "accuracy, NLL, ECE, one OOD, three corruptions: {fig_names:?}");
    assert!(figs[0].1.contains("dense (") && VARIANTS.iter().all(|v| figs[0].1.contains(v)), "every variant is a line");
    // A rerun trains nothing: every checkpoint is left as it was.
    let stamp = |n: &str| std::fs::metadata(out.join("models").join(n).join("sprig.json")).unwrap().modified().unwrap();
    let before: Vec<_> = names.iter().map(|n| stamp(n)).collect();
    let t0 = std::time::Instant::now();
    assert_eq!(run_grid(&cfg, &data, &out, &Device::Cpu).unwrap(), dirs);
    assert_eq!(names.iter().map(|n| stamp(n)).collect::<Vec<_>>(), before);
    assert!(t0.elapsed().as_secs_f64() < 5.0, "a finished grid reruns in {:?}", t0.elapsed());
    // Refusals: another recipe in the same directory, an unknown variant, models of another task.
    let other = GridConfig { train: TrainConfig { epochs: 2, ..cfg.train.clone() }, ..cfg.clone() };
    let e = format!("{:#}", run_grid(&other, &data, &out, &Device::Cpu).unwrap_err());
    assert!(e.contains("epochs"), "{e}");
    let e = format!("{:#}", run_grid(&GridConfig { variants: vec!["magic".into()], ..cfg.clone() }, &data, &tmp.path().join("g2"), &Device::Cpu).unwrap_err());
    assert!(e.contains("magic"), "{e}");
    let e = format!("{:#}", score(&BlessingsConfig { task: "mnist10k".into(), ood: vec!["fashion-mnist".into()], ..cfg_b.clone() }, &home, |_| {}).unwrap_err());
    assert!(e.contains("fashion-mnist") && e.contains("dense-s0"), "{e}");
    let e = format!("{:#}", score(&BlessingsConfig { ood: vec!["trec6".into()], ..cfg_b }, &home, |_| {}).unwrap_err());
    assert!(e.contains("not an image task"), "{e}");
}

/// LeNet-5 in the grid: the ticket prunes the convs too; RigL keeps its convs dense and reaches
/// the ticket's weight count with sparser linears; the small dense net is a narrower LeNet-5.
#[test]
fn the_lenet5_grid_matches_the_tickets_weight_count() {
    let data = fashion_mnist(3000);
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("grid5");
    let cfg = GridConfig { arch: Arch::Lenet5, variants: vec!["rigl".into(), "small-dense".into(), "snip".into()], ..config() };
    let dirs = run_grid(&cfg, &data, &out, &Device::Cpu).unwrap();
    let man = |d: &std::path::Path| sprig_prune::checkpoint::read_manifest(d).unwrap();
    let imp = man(&out.join("imp").join("round-02").join("seed-0"));
    let kept = |m: &sprig_prune::checkpoint::Manifest| m.prunable_numel as f64 * (1.0 - m.prunable_sparsity);
    assert!((0.70..0.75).contains(&imp.prunable_sparsity), "ticket sparsity {}", imp.prunable_sparsity);
    for d in &dirs[1..] {
        let (m, name) = (man(d), d.file_name().unwrap().to_string_lossy().into_owned());
        let loaded = sprig_prune::checkpoint::load(d, &Device::Cpu).unwrap();
        let arch = Arch::of_tensors(&loaded.tensors).unwrap();
        assert!((kept(&m) / kept(&imp) - 1.0).abs() < 0.03, "{name}: keeps {} weights, the ticket {}", kept(&m), kept(&imp));
        let conv_kept = loaded.masks.get("conv2.weight").map(|k| k.count_kept());
        match name.split('-').next().unwrap() {
            "rigl" => assert_eq!((arch, conv_kept), (Arch::Lenet5, Some(16 * 6 * 25)), "{name}: dense convs"),
            "small" => assert!(matches!(arch, Arch::Cnn { conv1, fc1, .. } if conv1 < 6 && fc1 < 120), "{name}: {arch:?}"),
            _ => assert!(arch == Arch::Lenet5 && conv_kept.unwrap() < 16 * 6 * 25, "{name}: {arch:?}, conv2 keeps {conv_kept:?}"),
        }
    }
}
