//! The blessings of sparsity beyond speed (Chen et al. 2022, "Can You Win Everything with a
//! Lottery Ticket?", TMLR): for classifier checkpoints of one text task, accuracy, negative
//! log-likelihood, expected calibration error with its reliability diagram (Guo et al. 2017),
//! out-of-distribution detection by the maximum softmax probability (Hendrycks & Gimpel 2017;
//! AUROC of in-distribution test texts against another task's test texts), and accuracy under
//! input corruption (random token dropout, shuffled word order) and under FGSM on the word
//! embeddings. Image tasks go to [`crate::blessings_image`] (Gaussian noise, pixel dropout, FGSM on
//! the pixels); both fill the same [`ModelBlessings`], [`table`] and [`reliability_svg`].
//!
//! Each model is scored on the test split of the seed it was fine-tuned with (the seed recorded in
//! its `config.json`), so seeds never see their own training texts; models are grouped by their
//! directory name without a trailing `-s<seed>`, and groups report mean ± std over their models.
use anyhow::{bail, Context, Result};
use candle_core::Device;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use candle_core::Tensor;
use sprig_bert::finetune::{batch_tensors, predict, tokenize, Tokenized};
use sprig_bert::{is_encoder_linear_weight, BertClassifier, BertTokenizer, Checkpoint};
use sprig_data::metrics::{auroc, max_prob, nll, reliability, report, ReliabilityBin, ECE_BINS};
use sprig_data::TextExample;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What to measure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlessingsConfig {
    pub task: String,
    pub models: Vec<PathBuf>,
    /// Other text tasks whose test texts serve as out-of-distribution inputs.
    pub ood: Vec<String>,
    /// Probability of dropping each word in the token-dropout corruption.
    pub token_dropout: f64,
    /// FGSM step: on the word embeddings, a fraction of the embedding table's RMS; on images, in
    /// pixel units of [0, 1] images (0: skip).
    pub fgsm_eps: f64,
    /// Standard deviation of the additive Gaussian pixel noise (images; 0: skip).
    #[serde(default)]
    pub gaussian_noise: f64,
    /// Probability of zeroing each pixel (images; 0: skip).
    #[serde(default)]
    pub pixel_dropout: f64,
    /// Seed of the corruptions (the same corrupted texts for every model of one split seed).
    pub seed: u64,
    pub batch_size: usize,
    pub max_seq_len: usize,
    /// At most this many test (and OOD) examples per model, the first of each split (0: all).
    pub max_examples: usize,
}

/// One model's scores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModelBlessings {
    pub model: String,
    pub group: String,
    /// Share of zeros in the prunable weights (BERT: the encoder linears; images: every weight
    /// matrix and kernel).
    pub sparsity: f64,
    pub split_seed: u64,
    pub n: usize,
    pub accuracy: f64,
    pub nll: f64,
    pub ece: f64,
    pub reliability: Vec<ReliabilityBin>,
    /// AUROC by maximum softmax probability, per OOD task.
    pub ood_auroc: BTreeMap<String, f64>,
    /// Accuracy on corrupted test texts, per corruption.
    pub corrupted_accuracy: BTreeMap<String, f64>,
}

impl BlessingsConfig {
    pub fn validate(&self) -> Result<()> {
        if self.models.is_empty() {
            bail!("no models given");
        }
        self.validate_options()
    }

    /// Everything [`BlessingsConfig::validate`] checks but the list of models.
    pub fn validate_options(&self) -> Result<()> {
        let image = sprig_data::is_image_task(&self.task);
        if !image && !sprig_data::is_text_task(&self.task) {
            bail!("unknown task {:?}: expected one of {:?} or {:?}", self.task, sprig_data::TEXT_TASKS, sprig_data::IMAGE_TASKS);
        }
        if let Some(o) = self.ood.iter().find(|o| **o == self.task) {
            bail!("OOD task {o:?} is the in-distribution task itself: its inputs cannot be out of distribution");
        }
        if let Some(o) = self.ood.iter().find(|o| sprig_data::is_image_task(o) != image) {
            bail!("OOD task {o:?} is not {} task like {}", if image { "an image" } else { "a text" }, self.task);
        }
        if !(self.gaussian_noise.is_finite() && self.gaussian_noise >= 0.0) {
            bail!("Gaussian noise must be a finite number >= 0, got {}", self.gaussian_noise);
        }
        if !(0.0..1.0).contains(&self.pixel_dropout) {
            bail!("pixel dropout must be in [0, 1), got {}", self.pixel_dropout);
        }
        if !(self.fgsm_eps >= 0.0 && self.fgsm_eps.is_finite()) {
            bail!("FGSM epsilon must be a finite number >= 0, got {}", self.fgsm_eps);
        }
        if !(0.0..1.0).contains(&self.token_dropout) {
            bail!("token dropout must be in [0, 1), got {}", self.token_dropout);
        }
        if self.batch_size == 0 || self.max_seq_len < 2 {
            bail!("batch size must be >= 1 and max sequence length >= 2 (got {} and {})", self.batch_size, self.max_seq_len);
        }
        Ok(())
    }
}

/// The usual out-of-distribution tasks of `task`: other tasks' inputs of the same kind.
pub fn default_ood(task: &str) -> Vec<String> {
    let v: &[&str] = match task {
        "fashion-mnist" => &["mnist10k"],
        "mnist10k" => &["fashion-mnist"],
        "sms-spam" => &["rt-sentiment", "trec6"],
        "trec6" => &["rt-sentiment", "sms-spam"],
        _ => &["sms-spam", "trec6"],
    };
    v.iter().map(|s| s.to_string()).collect()
}

/// `dir` without a trailing `-s<digits>`: the runs of one configuration over seeds.
pub fn group_of(dir: &Path) -> String {
    let name = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
    match name.rsplit_once("-s") {
        Some((head, seed)) if !seed.is_empty() && seed.chars().all(|c| c.is_ascii_digit()) => head.to_string(),
        _ => name,
    }
}

/// Each word dropped with probability `p` (at least one word kept), seeded per text.
pub fn token_dropout(text: &str, p: f64, rng: &mut ChaCha8Rng) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let kept: Vec<&str> = words.iter().copied().filter(|_| !rng.random_bool(p)).collect();
    if kept.is_empty() { words.first().copied().unwrap_or_default().to_string() } else { kept.join(" ") }
}

/// The words of `text` in a random order.
pub fn shuffle_words(text: &str, rng: &mut ChaCha8Rng) -> String {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    words.shuffle(rng);
    words.join(" ")
}

/// The generator of example `i`'s corruption: the same for every model scored with `seed`.
pub(crate) fn example_rng(seed: u64, i: usize) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

fn corrupted(examples: &[TextExample], seed: u64, f: impl Fn(&str, &mut ChaCha8Rng) -> String) -> Vec<TextExample> {
    examples.iter().enumerate().map(|(i, e)| TextExample { text: f(&e.text, &mut example_rng(seed, i)), label: e.label }).collect()
}

fn encoder_sparsity(m: &BertClassifier) -> Result<f64> {
    let (mut zeros, mut total) = (0usize, 0usize);
    for (name, v) in m.encoder.named_params().iter().filter(|(n, _)| is_encoder_linear_weight(n)) {
        let w = v.as_tensor().flatten_all()?.to_vec1::<f32>().with_context(|| format!("reading {name}"))?;
        zeros += w.iter().filter(|x| **x == 0.0).count();
        total += w.len();
    }
    Ok(if total == 0 { 0.0 } else { zeros as f64 / total as f64 })
}

/// Scores every model of `cfg` (see the module docs); `progress` hears one line per model.
pub fn run(cfg: &BlessingsConfig, home: &Path, mut progress: impl FnMut(&ModelBlessings)) -> Result<Vec<ModelBlessings>> {
    cfg.validate()?;
    if sprig_data::is_image_task(&cfg.task) {
        return crate::blessings_image::run(cfg, home, progress);
    }
    let device = Device::Cpu;
    let mut out = Vec::new();
    let mut classes: Option<Vec<String>> = None;
    for dir in &cfg.models {
        let ckpt = Checkpoint::load(&dir.to_string_lossy(), &device).with_context(|| format!("loading {}", dir.display()))?;
        if !ckpt.has_classifier() {
            bail!("{} has no classification head; give fine-tuned classifiers", dir.display());
        }
        let recorded = ckpt.config.extra.get("sprig").cloned().unwrap_or_default();
        if let Some(t) = recorded.get("task").and_then(|t| t.as_str()) {
            if t != cfg.task {
                bail!("{} was fine-tuned on {t}, not {}: one report holds the models of one task", dir.display(), cfg.task);
            }
        }
        let seed: u64 = recorded.get("seed").and_then(|s| s.as_str().and_then(|s| s.parse().ok()).or_else(|| s.as_u64())).unwrap_or(42);
        let data = sprig_data::load_text_task(&cfg.task, home, seed)?;
        let labels = ckpt.config.labels().unwrap_or_default();
        if labels.len() != data.classes.len() {
            bail!("{} has {} labels, task {} has {} classes", dir.display(), labels.len(), cfg.task, data.classes.len());
        }
        match &classes {
            Some(c) if *c != labels => bail!("{} has labels {labels:?}, the first model {c:?}: one report holds one label set", dir.display()),
            _ => classes = Some(labels.clone()),
        }
        let k = labels.len();
        let tok = BertTokenizer::from_file(ckpt.files.tokenizer()?, cfg.max_seq_len)?;
        let mut model = ckpt.classifier(seed, &device)?;
        model.encoder.set_train_word_embeddings(true);
        let probs_of = |ex: &[TextExample]| -> Result<Vec<f32>> {
            if ex.is_empty() {
                bail!("an empty split");
            }
            Ok(predict(&model, &tokenize(&tok, ex)?, cfg.batch_size, tok.pad_id())?)
        };
        let cap = |v: &[TextExample]| -> Vec<TextExample> { v.iter().take(if cfg.max_examples == 0 { usize::MAX } else { cfg.max_examples }).cloned().collect() };
        let test = cap(&data.test);
        let gold: Vec<usize> = test.iter().map(|e| e.label).collect();
        let probs = probs_of(&test)?;
        let r = report(&probs, k, &gold);
        let msp_in = max_prob(&probs, k);
        let mut ood_auroc = BTreeMap::new();
        for o in &cfg.ood {
            let od = sprig_data::load_text_task(o, home, seed)?;
            let texts: Vec<TextExample> = cap(&od.test).into_iter().map(|e| TextExample { text: e.text, label: 0 }).collect();
            let msp_out = max_prob(&probs_of(&texts)?, k);
            ood_auroc.insert(o.clone(), auroc(&msp_in, &msp_out));
        }
        let acc = |ex: &[TextExample]| -> Result<f64> { Ok(report(&probs_of(ex)?, k, &gold).accuracy) };
        let mut corrupted_accuracy = BTreeMap::new();
        let p = cfg.token_dropout;
        corrupted_accuracy.insert(format!("token dropout {p}"), acc(&corrupted(&test, cfg.seed, |t, r| token_dropout(t, p, r)))?);
        corrupted_accuracy.insert("word shuffle".into(), acc(&corrupted(&test, cfg.seed, shuffle_words))?);
        if cfg.fgsm_eps > 0.0 {
            let a = fgsm_accuracy(&model, &tokenize(&tok, &test)?, cfg.batch_size, tok.pad_id(), cfg.fgsm_eps)?;
            corrupted_accuracy.insert(format!("FGSM on embeddings, eps {}", cfg.fgsm_eps), a);
        }
        let m = ModelBlessings {
            model: dir.display().to_string(),
            group: group_of(dir),
            sparsity: encoder_sparsity(&model)?,
            split_seed: seed,
            n: gold.len(),
            accuracy: r.accuracy,
            nll: nll(&probs, k, &gold),
            ece: r.ece,
            reliability: reliability(&probs, k, &gold, ECE_BINS),
            ood_auroc,
            corrupted_accuracy,
        };
        progress(&m);
        out.push(m);
    }
    Ok(out)
}

/// Accuracy under FGSM (Goodfellow et al. 2015) on the word embeddings: for each batch, the
/// embedding rows of its tokens move by `eps · rms(E) · sign(∂CE/∂E)` (the gradient of the batch's
/// mean cross-entropy against its true labels), the batch is classified again, and the table is
/// restored.
pub fn fgsm_accuracy(model: &BertClassifier, data: &Tokenized, batch: usize, pad_id: u32, eps: f64) -> Result<f64> {
    let dev = Device::Cpu;
    let word = model
        .encoder
        .named_params()
        .iter()
        .find(|(n, _)| n == "embeddings.word_embeddings.weight")
        .map(|(_, v)| v.clone())
        .context("the model has no embeddings.word_embeddings.weight")?;
    let orig = word.as_tensor().copy()?;
    let step = eps * f64::from(orig.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?);
    let idx: Vec<usize> = (0..data.labels.len()).collect();
    let mut correct = 0usize;
    for b in idx.chunks(batch) {
        let (ids, types, mask) = batch_tensors(data, b, pad_id, &dev)?;
        let labels = Tensor::from_vec(b.iter().map(|&i| data.labels[i] as u32).collect::<Vec<_>>(), b.len(), &dev)?;
        let logits = model.forward(&ids, &types, &mask, false)?;
        let grads = candle_nn::loss::cross_entropy(&logits, &labels)?.backward()?;
        let g = grads.get(word.as_tensor()).context("no gradient reached the word embeddings")?;
        word.set(&(&orig + (g.sign()? * step)?)?)?;
        let pred = model.predict(&ids, &types, &mask);
        word.set(&orig)?;
        let pred = pred?.argmax(1)?.to_vec1::<u32>()?;
        correct += b.iter().zip(&pred).filter(|(i, p)| data.labels[**i] == **p as usize).count();
    }
    Ok(correct as f64 / data.labels.len().max(1) as f64)
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, var.sqrt())
}

/// The columns of the table, in order: `(header, value of a model)`.
/// A table column: its header and how to read it from a model's scores.
pub(crate) type Column = (String, Box<dyn Fn(&ModelBlessings) -> f64>);

pub(crate) fn columns(rows: &[ModelBlessings]) -> Vec<Column> {
    let mut cols: Vec<Column> = vec![
        ("sparsity".into(), Box::new(|m: &ModelBlessings| m.sparsity)),
        ("accuracy".into(), Box::new(|m: &ModelBlessings| m.accuracy)),
        ("NLL ↓".into(), Box::new(|m: &ModelBlessings| m.nll)),
        ("ECE ↓".into(), Box::new(|m: &ModelBlessings| m.ece)),
    ];
    let first = &rows[0];
    for o in first.ood_auroc.keys() {
        let o2 = o.clone();
        cols.push((format!("OOD AUROC vs {o}"), Box::new(move |m: &ModelBlessings| m.ood_auroc.get(&o2).copied().unwrap_or(f64::NAN))));
    }
    for c in first.corrupted_accuracy.keys() {
        let c2 = c.clone();
        cols.push((format!("accuracy, {c}"), Box::new(move |m: &ModelBlessings| m.corrupted_accuracy.get(&c2).copied().unwrap_or(f64::NAN))));
    }
    cols
}

/// Markdown: one row per group (mean ± std over its models, their count), then one per model.
pub fn table(rows: &[ModelBlessings]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let cols = columns(rows);
    let head = |first: &str| format!("| {first} | {} |\n|---|{}\n", cols.iter().map(|c| c.0.as_str()).collect::<Vec<_>>().join(" | "), "---|".repeat(cols.len()));
    let mut groups: BTreeMap<&str, Vec<&ModelBlessings>> = BTreeMap::new();
    rows.iter().for_each(|m| groups.entry(m.group.as_str()).or_default().push(m));
    let mut s = head("group (models)");
    for (g, ms) in &groups {
        let cells: Vec<String> = cols
            .iter()
            .map(|(_, f)| {
                let (m, sd) = mean_std(&ms.iter().map(|x| f(x)).collect::<Vec<_>>());
                if ms.len() > 1 { format!("{m:.4} ± {sd:.4}") } else { format!("{m:.4}") }
            })
            .collect();
        s += &format!("| {g} ({}) | {} |\n", ms.len(), cells.join(" | "));
    }
    s += "\n";
    s += &head("model (split seed)");
    for m in rows {
        let cells: Vec<String> = cols.iter().map(|(_, f)| format!("{:.4}", f(m))).collect();
        s += &format!("| {} ({}) | {} |\n", m.model, m.split_seed, cells.join(" | "));
    }
    s
}

/// Reliability diagram: accuracy against mean confidence per bin, pooled over each group's models
/// (bins weighted by their counts), with the diagonal of perfect calibration.
pub fn reliability_svg(rows: &[ModelBlessings], title: &str) -> Result<String> {
    let mut groups: BTreeMap<&str, Vec<&ModelBlessings>> = BTreeMap::new();
    rows.iter().for_each(|m| groups.entry(m.group.as_str()).or_default().push(m));
    let series: Vec<(String, Vec<(f64, f64)>)> = groups
        .iter()
        .map(|(g, ms)| {
            let nb = ms[0].reliability.len();
            let pts = (0..nb)
                .filter_map(|b| {
                    let (n, a, c) = ms.iter().fold((0usize, 0f64, 0f64), |(n, a, c), m| {
                        let r = &m.reliability[b];
                        (n + r.count, a + r.accuracy * r.count as f64, c + r.confidence * r.count as f64)
                    });
                    (n > 0).then(|| (c / n as f64, a / n as f64))
                })
                .collect();
            (format!("{g} ({} model(s))", ms.len()), pts)
        })
        .collect();
    let axes = ("confidence (mean max probability in the bin)", "accuracy in the bin");
    crate::plot::line_chart(&crate::plot::Chart::new(title, axes, (0.0, 1.0), (0.0, 1.0), &series).reference("perfect calibration", vec![(0.0, 0.0), (1.0, 1.0)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_drop_only_a_trailing_seed() {
        assert_eq!(group_of(Path::new("runs/rt-gmp-90-kd-s42")), "rt-gmp-90-kd");
        assert_eq!(group_of(Path::new("dense-rt-s7")), "dense-rt");
        assert_eq!(group_of(Path::new("runs/rt-s-x")), "rt-s-x");
        assert_eq!(group_of(Path::new("model-s")), "model-s");
    }

    #[test]
    fn corruptions_keep_words_and_are_seeded() {
        let t = "the quick brown fox jumps over the lazy dog";
        let mut r = ChaCha8Rng::seed_from_u64(1);
        let s = shuffle_words(t, &mut r);
        let (mut a, mut b): (Vec<&str>, Vec<&str>) = (t.split(' ').collect(), s.split(' ').collect());
        a.sort();
        b.sort();
        assert_eq!(a, b, "a shuffle keeps the words");
        assert_ne!(s, t, "nine words come back in another order");
        let d = token_dropout(t, 0.5, &mut ChaCha8Rng::seed_from_u64(2));
        assert_eq!(d, token_dropout(t, 0.5, &mut ChaCha8Rng::seed_from_u64(2)), "same seed, same text");
        let kept = d.split(' ').count();
        assert!((1..9).contains(&kept), "{d}");
        assert_eq!(token_dropout("one", 0.999, &mut ChaCha8Rng::seed_from_u64(3)), "one", "at least one word stays");
    }

    #[test]
    fn bad_configs_are_refused() {
        let cfg = BlessingsConfig { task: "rt-sentiment".into(), models: vec!["m".into()], ood: vec!["trec6".into()], token_dropout: 0.2, fgsm_eps: 0.5, gaussian_noise: 0.0, pixel_dropout: 0.0, seed: 0, batch_size: 8, max_seq_len: 64, max_examples: 0 };
        cfg.validate().unwrap();
        let e = BlessingsConfig { ood: vec!["rt-sentiment".into()], ..cfg.clone() }.validate().unwrap_err().to_string();
        assert!(e.contains("in-distribution task itself"), "{e}");
        assert!(BlessingsConfig { token_dropout: 1.0, ..cfg.clone() }.validate().is_err());
        assert!(BlessingsConfig { fgsm_eps: f64::NAN, ..cfg.clone() }.validate().is_err());
        assert!(BlessingsConfig { ood: vec!["mnist10k".into()], ..cfg.clone() }.validate().unwrap_err().to_string().contains("not a text task"));
        assert!(BlessingsConfig { task: "cifar".into(), ..cfg.clone() }.validate().unwrap_err().to_string().contains("unknown task"));
        assert!(BlessingsConfig { pixel_dropout: 1.0, ..cfg.clone() }.validate().is_err());
        assert!(BlessingsConfig { gaussian_noise: -0.1, ..cfg.clone() }.validate().is_err());
        assert!(BlessingsConfig { models: vec![], ..cfg }.validate().unwrap_err().to_string().contains("no models"));
    }
}
