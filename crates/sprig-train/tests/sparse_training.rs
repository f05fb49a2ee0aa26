//! Real-data tests of mask discipline in the vision trainer (Fashion-MNIST from `sprig_home()`;
//! CI runs `scripts/fetch-assets` first, so missing files are a failure, not a skip).
use candle_core::{Device, Var};
use sprig_data::{load_image_task, sprig_home, ImageDataset, ImageSplit};
use sprig_prune::{criteria, prune, Allocation, Granularity, Selector};
use sprig_train::vision::{evaluate, train, Arch, OptimChoice, TrainConfig, VisionModel};

fn take(s: &ImageSplit, n: usize, hw: usize) -> ImageSplit {
    let n = n.min(s.len());
    ImageSplit { images: s.images[..n * hw].to_vec(), labels: s.labels[..n].to_vec() }
}

fn small_fashion() -> ImageDataset {
    let mut d = load_image_task("fashion-mnist", &sprig_home(), 42).unwrap_or_else(|e| panic!("loading fashion-mnist: {e}"));
    let hw = d.height * d.width;
    d.train = take(&d.train, 3000, hw);
    d.dev = take(&d.dev, 500, hw);
    d.test = take(&d.test, 1000, hw);
    d
}

#[test]
fn realised_sparsity_holds_after_every_step() {
    let data = small_fashion();
    let dev = Device::Cpu;
    for (optim, min_acc) in [(OptimChoice::Adam { lr: 1.2e-3 }, 0.5), (OptimChoice::Sgd { lr: 0.05, momentum: 0.9 }, 0.3)] {
        let model = VisionModel::new(Arch::Lenet300, data.height, data.width, 10, 1, &dev).unwrap();
        let prunable: Vec<(String, Var)> = Selector::weights().select(&model.params);
        let shapes: Vec<(String, Vec<usize>)> = prunable.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
        let masks = prune(&criteria::magnitude(&prunable).unwrap(), &shapes, 0.9, Granularity::Unstructured, &Allocation::global(), None).unwrap();
        let bools: Vec<(String, Vec<bool>)> = masks.iter().map(|(n, m)| (n.clone(), m.to_bools())).collect();
        let cfg = TrainConfig { epochs: 1, batch_size: 60, optim: optim.clone(), data_seed: 3, snapshot_step: None };
        let mut checked = 0;
        let out = train(&model, &data.train, &cfg, &masks, &mut |_, m| {
            for (name, keep) in &bools {
                let w = m.params.iter().find(|(n, _)| n == name).unwrap().1.as_tensor().flatten_all()?.to_vec1::<f32>()?;
                let zeros_at_pruned = w.iter().zip(keep).filter(|(x, k)| !**k && **x == 0.0).count();
                let pruned = keep.iter().filter(|k| !**k).count();
                assert_eq!(zeros_at_pruned, pruned, "{name}: a pruned weight moved");
                assert!(w.iter().zip(keep).any(|(x, k)| *k && *x != 0.0));
            }
            checked += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(checked, out.steps);
        assert_eq!(out.steps, 50);
        let realised = 1.0 - masks.count_kept() as f64 / masks.numel() as f64;
        assert!((realised - 0.9).abs() < 1e-5);
        let acc = evaluate(&model, &data.test).unwrap();
        eprintln!("{optim:?}: test accuracy {acc}");
        assert!(acc > min_acc, "{optim:?}: 90%-sparse LeNet-300-100 reached only {acc} after one epoch of 3000 images");
    }
}

#[test]
fn lenet5_trains_with_a_mask() {
    let data = small_fashion();
    let model = VisionModel::new(Arch::Lenet5, data.height, data.width, 10, 2, &Device::Cpu).unwrap();
    let prunable: Vec<(String, Var)> = Selector::weights().select(&model.params);
    assert_eq!(prunable.len(), 5); // two conv kernels, three linears
    let shapes: Vec<(String, Vec<usize>)> = prunable.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
    let masks = prune(&criteria::random(&prunable, 5), &shapes, 0.5, Granularity::Unstructured, &Allocation::erk(), None).unwrap();
    let bools: Vec<(String, Vec<bool>)> = masks.iter().map(|(n, m)| (n.clone(), m.to_bools())).collect();
    let cfg = TrainConfig { epochs: 1, batch_size: 100, optim: OptimChoice::Adam { lr: 2e-3 }, data_seed: 1, snapshot_step: None };
    let out = train(&model, &data.train, &cfg, &masks, &mut |_, _| Ok(())).unwrap();
    assert_eq!(out.steps, 30);
    let w = model.params.iter().find(|(n, _)| n == "conv2.weight").unwrap().1.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let keep = &bools.iter().find(|(n, _)| n == "conv2.weight").unwrap().1;
    assert!(w.iter().zip(keep).all(|(x, k)| *k || *x == 0.0));
    let acc = evaluate(&model, &data.test).unwrap();
    assert!(acc > 0.4, "LeNet-5 at 50% ERK sparsity reached only {acc} after 30 steps");
}
