//! Edge-popup on a small real Fashion-MNIST subset: learns, keeps exactly the asked fraction.
use sprig_theory::edge_popup::{self, kept_count, topk_mask, EdgePopupConfig, EdgePopupMlp, WeightInit};

fn small() -> sprig_data::ImageDataset {
    let d = sprig_data::load_image_task("fashion-mnist", &sprig_data::sprig_home(), 42).unwrap_or_else(|e| panic!("loading fashion-mnist (run scripts/fetch-assets): {e}"));
    edge_popup::subsample(&edge_popup::standardise(&d), 3000, 500, 1000, 7)
}

#[test]
fn edge_popup_learns_with_exact_kept_fraction() {
    let data = small();
    let cfg = EdgePopupConfig { hidden: vec![256, 128], keep: 0.3, epochs: 3, batch_size: 64, ..Default::default() };
    let mut epochs = 0;
    let out = edge_popup::train_edge_popup(&cfg, &data, &mut |_| epochs += 1).unwrap();
    assert_eq!(epochs, 3);
    // chance is 10%; an untrained random subnetwork is near it, a found one far above
    assert!(out.test_acc > 0.6, "edge-popup test accuracy {}", out.test_acc);
    assert!(out.curve.iter().all(|p| p.train_loss.is_some_and(f64::is_finite)));
    let sizes = [784 * 256, 256 * 128, 128 * 10];
    for (f, n) in out.kept_per_layer.iter().zip(sizes) {
        assert_eq!(*f, kept_count(n, 0.3) as f64 / n as f64);
    }
    assert_eq!(out.kept_weights, sizes.iter().map(|&n| kept_count(n, 0.3)).sum::<usize>());
}

#[test]
fn untrained_scores_are_near_chance_and_training_beats_them() {
    let data = small();
    let m = EdgePopupMlp::new(784, &[256, 128], 10, 0.5, WeightInit::KaimingNormal, true, 3).unwrap();
    let before = m.accuracy(&data.test).unwrap();
    assert!(before < 0.4, "random subnetwork at init {before}");
}

#[test]
fn topk_mask_is_exact_with_ties() {
    let s = [0.5, -0.5, 0.5, 0.1, -0.9, 0.0];
    let m = topk_mask(&s, 3);
    assert_eq!(m, vec![1.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
    assert_eq!(topk_mask(&s, 6), vec![1.0; 6]);
    assert_eq!(kept_count(10, 0.33), 3);
    assert_eq!(kept_count(10, 0.01), 1);
}

#[test]
fn bad_configs_are_typed_errors() {
    let data = small();
    for (cfg, word) in [
        (EdgePopupConfig { keep: 0.0, ..Default::default() }, "keep"),
        (EdgePopupConfig { keep: 1.5, ..Default::default() }, "keep"),
        (EdgePopupConfig { hidden: vec![0, 10], ..Default::default() }, "hidden"),
        (EdgePopupConfig { epochs: 0, ..Default::default() }, "epochs"),
    ] {
        let e = edge_popup::train_edge_popup(&cfg, &data, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains(word), "{e}");
    }
    let empty = edge_popup::subsample(&data, 0, 10, 10, 0);
    assert!(edge_popup::train_edge_popup(&EdgePopupConfig::default(), &empty, &mut |_| {}).is_err());
    assert!("x".parse::<WeightInit>().is_err());
}
