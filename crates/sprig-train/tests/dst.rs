//! DST driver on a small slice of real Fashion-MNIST: exact sparsity after every step, grown weights
//! start at zero, kept weights keep value and optimizer state, sparse = masked-dense numerics,
//! same seed = same masks.
type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
use candle_core::Device;
use sprig_train::dst::{DstArch, DstConfig, DstTrainer, FcWeight, Method};
use sprig_train::vision::batch_tensor;

fn data(n: usize) -> sprig_data::ImageDataset {
    let mut d = sprig_data::load_image_task("fashion-mnist", &sprig_data::sprig_home(), 42).expect("run scripts/fetch-assets first");
    d.train.labels.truncate(n);
    d.train.images.truncate(n * d.height * d.width);
    d
}

fn cfg(method: Method, sparsity: f64, arch: DstArch) -> DstConfig {
    DstConfig { arch, method, sparsity, epochs: 1, batch_size: 50, lr: 2e-3, optimizer: Default::default(), lr_schedule: Default::default(), weight_decay: 0.0, delta_t: 4, alpha: 0.3, end_fraction: 0.75, granet_initial: 0.5 }
}

/// Runs `steps` steps by hand, checking the invariants after each; returns the trainer.
fn drive(c: &DstConfig, d: &sprig_data::ImageDataset, steps: usize) -> Result<DstTrainer> {
    let dev = Device::Cpu;
    let mut t = DstTrainer::new(c, d.height, d.width, 10, d.train.len(), 0, &dev)?;
    let hw = d.height * d.width;
    let target = c.sparsity;
    let mut updates = 0;
    for step in 1..=steps {
        let idx: Vec<usize> = ((step - 1) * c.batch_size..step * c.batch_size).map(|i| i % d.train.len()).collect();
        let (x, y) = batch_tensor(&d.train, &idx, hw, &dev)?;
        let loss = candle_nn::loss::cross_entropy(&t.model.forward(&x, None)?, &y)?;
        t.opt.step(&loss.backward()?)?;
        let before: Vec<(Vec<f32>, sprig_prune::Mask)> = t.model.fcs.iter().map(|f| Ok((f.dense_weight()?, f.mask.clone()))).collect::<Result<_>>()?;
        let kept_before: Vec<usize> = before.iter().map(|(_, m)| m.count_kept()).collect();
        if t.maybe_update(step, &x, &y)? {
            updates += 1;
            for (f, ((w0, m0), k0)) in t.model.fcs.iter().zip(before.iter().zip(&kept_before)) {
                let w1 = f.dense_weight()?;
                for i in 0..w1.len() {
                    match (m0.get(i), f.mask.get(i)) {
                        (false, true) => assert_eq!(w1[i], 0.0, "{}: grown weight {i} is not zero", f.name),
                        (true, true) => assert_eq!(w1[i], w0[i], "{}: kept weight {i} changed", f.name),
                        _ => {}
                    }
                }
                if matches!(c.method, Method::Set | Method::Rigl) {
                    assert_eq!(f.mask.count_kept(), *k0, "{}: SET/RigL must keep the count", f.name);
                }
            }
        }
        t.check_exact()?;
    }
    if c.method == Method::Static {
        assert_eq!(updates, 0, "static sparse training must never change its mask");
    } else {
        assert!(updates >= 2, "{:?}: only {updates} updates", c.method);
    }
    if matches!(c.method, Method::Set | Method::Rigl | Method::Static) {
        assert!((t.model.sparsity() - target).abs() < 2e-3, "{:?}: sparsity {}", c.method, t.model.sparsity());
    }
    Ok(t)
}

#[test]
fn every_method_keeps_exact_sparsity_and_zero_grown_weights() -> Result<()> {
    let d = data(1000);
    for m in [Method::Static, Method::Set, Method::Rigl] {
        let t = drive(&cfg(m, 0.9, DstArch::Lenet300), &d, 20)?;
        assert!(t.model.fcs.iter().all(|f| matches!(f.weight, FcWeight::Sparse { .. })), "{m:?} must compute sparse");
        if m != Method::Static {
            assert!(t.itop_rate() > 1.0 - 0.9 + 1e-3, "{m:?}: R_s {} did not grow", t.itop_rate());
        } else {
            assert!((t.itop_rate() - (1.0 - t.model.sparsity())).abs() < 1e-12);
        }
    }
    // GraNet and GMP reach the target exactly at the last pruning step (20 steps, t_end 15, last update 12).
    for m in [Method::Granet, Method::Gmp] {
        let t = drive(&cfg(m, 0.9, DstArch::Lenet300), &d, 20)?;
        let want: usize = sprig_prune::dst::kept_counts(&sprig_train::dst::DstModel::fc_shapes(DstArch::Lenet300, 28, 28, 10), 0.9, &sprig_prune::Allocation::erk())?.values().sum();
        let kept: usize = t.model.fcs.iter().map(|f| f.mask.count_kept()).sum();
        assert_eq!(kept, want, "{m:?}");
    }
    Ok(())
}

#[test]
fn sparse_forward_matches_masked_dense_and_conv_runs() -> Result<()> {
    let d = data(1000);
    for arch in [DstArch::Lenet300, DstArch::Conv] {
        let t = drive(&cfg(Method::Rigl, 0.8, arch), &d, 12)?;
        let (x, _) = batch_tensor(&d.test, &(0..64).collect::<Vec<_>>(), 784, &Device::Cpu)?;
        let ws: Vec<candle_core::Var> = t.model.fcs.iter().map(|f| Ok(candle_core::Var::from_vec(f.dense_weight()?, (f.n, f.k), &Device::Cpu)?)).collect::<Result<_>>()?;
        let a = t.model.forward(&x, None)?;
        let b = t.model.forward(&x, Some(&ws))?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-4, "{arch:?}: sparse vs dense logits differ by {diff}");
    }
    Ok(())
}

#[test]
fn same_seed_same_masks_bit_for_bit() -> Result<()> {
    let d = data(1000);
    let masks = |m| -> Result<(sprig_prune::MaskSet, Vec<f32>)> {
        let t = drive(&cfg(m, 0.95, DstArch::Lenet300), &d, 8)?;
        Ok((t.model.masks(), t.model.fcs[0].dense_weight()?))
    };
    for m in [Method::Set, Method::Rigl] {
        let (a, wa) = masks(m)?;
        let (b, wb) = masks(m)?;
        assert_eq!(a.sha256(), b.sha256(), "{m:?}");
        assert_eq!(wa, wb, "{m:?}");
    }
    let (s, _) = masks(Method::Set)?;
    let (r, _) = masks(Method::Rigl)?;
    assert_ne!(s.sha256(), r.sha256(), "SET and RigL grew the same weights");
    Ok(())
}
