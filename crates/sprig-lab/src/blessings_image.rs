//! The blessings report ([`crate::blessings`]) for image classifiers: sprig-prune checkpoints of
//! LeNet-300-100, LeNet-5 or an MLP of other widths (what `sprig lottery` and `sprig
//! blessings-grid` write), scored on the task's test images. Out-of-distribution inputs are every
//! image of another image task (Fashion-MNIST against MNIST digits: Hendrycks & Gimpel 2017);
//! corruptions are additive Gaussian noise and pixel dropout (clipped to [0, 1]), and FGSM
//! (Goodfellow et al. 2015) moves each pixel by `eps` along the sign of the loss gradient.
use anyhow::{bail, Context, Result};
use candle_core::{Device, Var, D};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sprig_data::metrics::{auroc, max_prob, nll, reliability, report, ECE_BINS};
use sprig_data::{ImageDataset, ImageSplit};
use sprig_prune::checkpoint;
use sprig_train::vision::{batch_tensor, Arch, VisionModel};
use std::collections::BTreeMap;
use std::path::Path;

use crate::blessings::{example_rng, group_of, BlessingsConfig, ModelBlessings};

const BATCH: usize = 1000;

/// A checkpoint directory as a model of `data`'s shape; its architecture is read off its
/// tensors, and its sparsity is the share of zeros over its weight matrices and kernels.
pub fn load_model(dir: &Path, data: &ImageDataset, device: &Device) -> Result<(VisionModel, f64)> {
    let ck = checkpoint::load(dir, device).with_context(|| format!("loading {}", dir.display()))?;
    if let Some(t) = ck.manifest.meta.extra.get("dataset").and_then(|d| d.as_str()) {
        if t != data.task {
            bail!("{} was trained on {t}, not {}: one report holds the models of one task", dir.display(), data.task);
        }
    }
    let arch = Arch::of_tensors(&ck.tensors).with_context(|| format!("reading the architecture of {}", dir.display()))?;
    let model = VisionModel::new(arch, data.height, data.width, data.classes.len(), 0, device)?;
    let (mut zeros, mut total) = (0usize, 0usize);
    for (name, var) in &model.params {
        let t = ck.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t).with_context(|| format!("{} has no tensor {name}", dir.display()))?;
        if t.dims() != var.dims() {
            bail!("{}: {name} has shape {:?}, a {:?} model of {} needs {:?} (a checkpoint of another task?)", dir.display(), t.dims(), arch, data.task, var.dims());
        }
        var.set(t)?;
        if t.rank() >= 2 {
            zeros += t.flatten_all()?.to_vec1::<f32>()?.iter().filter(|x| **x == 0.0).count();
            total += t.elem_count();
        }
    }
    Ok((model, zeros as f64 / total.max(1) as f64))
}

/// Softmax probabilities `[n * classes]` of `split`'s images.
pub fn probs(model: &VisionModel, split: &ImageSplit) -> Result<Vec<f32>> {
    if split.is_empty() {
        bail!("an empty image split");
    }
    let hw = model.height * model.width;
    let all: Vec<usize> = (0..split.len()).collect();
    let mut out = Vec::with_capacity(split.len() * 10);
    for idx in all.chunks(BATCH) {
        let (x, _) = batch_tensor(split, idx, hw, model.params[0].1.device())?;
        out.extend(candle_nn::ops::softmax(&model.forward(&x)?, D::Minus1)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Every image of `split` corrupted by `f(pixels, rng)`, seeded per image, clipped to [0, 1].
fn corrupted(split: &ImageSplit, hw: usize, seed: u64, f: impl Fn(&mut [f32], &mut ChaCha8Rng)) -> ImageSplit {
    let mut images = split.images.clone();
    for (i, img) in images.chunks_mut(hw).enumerate() {
        f(img, &mut example_rng(seed, i));
        img.iter_mut().for_each(|p| *p = p.clamp(0.0, 1.0));
    }
    ImageSplit { images, labels: split.labels.clone() }
}

/// Additive N(0, std²) noise on every pixel (Box–Muller), clipped to [0, 1].
pub fn gaussian_noise(split: &ImageSplit, hw: usize, std: f64, seed: u64) -> ImageSplit {
    corrupted(split, hw, seed, |img, r| {
        for p in img.iter_mut() {
            let (u1, u2): (f64, f64) = (r.random::<f64>().max(f64::MIN_POSITIVE), r.random());
            *p += (std * (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32;
        }
    })
}

/// Each pixel set to 0 with probability `p`.
pub fn pixel_dropout(split: &ImageSplit, hw: usize, p: f64, seed: u64) -> ImageSplit {
    corrupted(split, hw, seed, |img, r| img.iter_mut().for_each(|x| if r.random_bool(p) { *x = 0.0 }))
}

/// Accuracy under FGSM on the pixels: each batch moves by `eps · sign(∂CE/∂x)` (the gradient of the
/// batch's mean cross-entropy against its true labels), clipped to [0, 1], and is classified again.
pub fn fgsm_accuracy(model: &VisionModel, split: &ImageSplit, eps: f64) -> Result<f64> {
    let hw = model.height * model.width;
    let all: Vec<usize> = (0..split.len()).collect();
    let mut correct = 0usize;
    for idx in all.chunks(BATCH) {
        let (x, y) = batch_tensor(split, idx, hw, model.params[0].1.device())?;
        let xv = Var::from_tensor(&x)?;
        let grads = candle_nn::loss::cross_entropy(&model.forward(xv.as_tensor())?, &y)?.backward()?;
        let g = grads.get(xv.as_tensor()).context("no gradient reached the input")?;
        let adv = (&x + (g.sign()? * eps)?)?.clamp(0f32, 1f32)?;
        let pred = model.forward(&adv)?.argmax(D::Minus1)?.to_vec1::<u32>()?;
        correct += idx.iter().zip(&pred).filter(|(i, p)| split.labels[**i] == **p as usize).count();
    }
    Ok(correct as f64 / split.len().max(1) as f64)
}

fn capped(split: &ImageSplit, hw: usize, max: usize) -> ImageSplit {
    let n = if max == 0 { split.len() } else { split.len().min(max) };
    ImageSplit { images: split.images[..n * hw].to_vec(), labels: split.labels[..n].to_vec() }
}

/// All images of an OOD task (its three splits), capped at `max` (0: all).
fn ood_images(d: &ImageDataset, max: usize) -> ImageSplit {
    let hw = d.height * d.width;
    let mut all = ImageSplit { images: Vec::new(), labels: Vec::new() };
    for s in [&d.train, &d.dev, &d.test] {
        all.images.extend_from_slice(&s.images);
        all.labels.extend_from_slice(&s.labels);
    }
    capped(&all, hw, max)
}

/// Scores every model of `cfg` on its image task (see the module docs).
pub fn run(cfg: &BlessingsConfig, home: &Path, mut progress: impl FnMut(&ModelBlessings)) -> Result<Vec<ModelBlessings>> {
    cfg.validate()?;
    let device = Device::Cpu;
    let data = sprig_data::load_image_task(&cfg.task, home, 42)?;
    let hw = data.height * data.width;
    let mut oods = Vec::new();
    for o in &cfg.ood {
        let d = sprig_data::load_image_task(o, home, 42).with_context(|| format!("the OOD task {o}"))?;
        if (d.height, d.width) != (data.height, data.width) {
            bail!("OOD task {o} has {}x{} images, {} {}x{}", d.height, d.width, cfg.task, data.height, data.width);
        }
        oods.push((o.clone(), ood_images(&d, cfg.max_examples)));
    }
    let test = capped(&data.test, hw, cfg.max_examples);
    let k = data.classes.len();
    let mut corruptions: Vec<(String, ImageSplit)> = Vec::new();
    if cfg.gaussian_noise > 0.0 {
        corruptions.push((format!("Gaussian noise σ {}", cfg.gaussian_noise), gaussian_noise(&test, hw, cfg.gaussian_noise, cfg.seed)));
    }
    if cfg.pixel_dropout > 0.0 {
        corruptions.push((format!("pixel dropout {}", cfg.pixel_dropout), pixel_dropout(&test, hw, cfg.pixel_dropout, cfg.seed)));
    }
    let mut out = Vec::new();
    for dir in &cfg.models {
        let (model, sparsity) = load_model(dir, &data, &device)?;
        let p = probs(&model, &test)?;
        let r = report(&p, k, &test.labels);
        let msp_in = max_prob(&p, k);
        let mut ood_auroc = BTreeMap::new();
        for (o, split) in &oods {
            ood_auroc.insert(o.clone(), auroc(&msp_in, &max_prob(&probs(&model, split)?, k)));
        }
        let mut corrupted_accuracy = BTreeMap::new();
        for (name, split) in &corruptions {
            corrupted_accuracy.insert(name.clone(), report(&probs(&model, split)?, k, &test.labels).accuracy);
        }
        if cfg.fgsm_eps > 0.0 {
            corrupted_accuracy.insert(format!("FGSM on pixels, eps {}", cfg.fgsm_eps), fgsm_accuracy(&model, &test, cfg.fgsm_eps)?);
        }
        let m = ModelBlessings {
            model: dir.display().to_string(),
            group: group_of(dir),
            sparsity,
            split_seed: 42,
            n: test.len(),
            accuracy: r.accuracy,
            nll: nll(&p, k, &test.labels),
            ece: r.ece,
            reliability: reliability(&p, k, &test.labels, ECE_BINS),
            ood_auroc,
            corrupted_accuracy,
        };
        progress(&m);
        out.push(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split() -> ImageSplit {
        ImageSplit { images: (0..4 * 16).map(|i| (i % 5) as f32 / 4.0).collect(), labels: vec![0, 1, 2, 3] }
    }

    #[test]
    fn corruptions_are_seeded_and_stay_in_range() {
        let s = split();
        let a = gaussian_noise(&s, 16, 0.3, 7);
        assert_eq!(a.images, gaussian_noise(&s, 16, 0.3, 7).images, "same seed, same noise");
        assert_ne!(a.images, gaussian_noise(&s, 16, 0.3, 8).images);
        assert!(a.images.iter().all(|p| (0.0..=1.0).contains(p)));
        let moved = a.images.iter().zip(&s.images).filter(|(x, y)| x != y).count();
        assert!(moved > 32, "noise moves most pixels ({moved} of 64)");
        let d = pixel_dropout(&s, 16, 0.5, 1);
        let zeroed = d.images.iter().zip(&s.images).filter(|(x, y)| **x == 0.0 && **y != 0.0).count();
        assert!(d.images.iter().zip(&s.images).all(|(x, y)| *x == 0.0 || x == y), "dropout only zeroes pixels");
        assert!((10..40).contains(&zeroed), "about half of the ~51 nonzero pixels dropped, got {zeroed}");
        assert_eq!(a.labels, s.labels);
    }
}
