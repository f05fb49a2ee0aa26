//! `sprig predict`: run a (pruned) classifier directory on texts, JSON lines out. On load, every
//! pruned encoder linear is compiled to the format that is fastest on this CPU
//! (`sprig_bert::formats`), measured once and cached beside the model in `sprig-formats.json`.
use anyhow::{bail, Context, Result};
use candle_core::Device;
use sprig_bert::formats::{masks_from_zeros, measure_formats, FormatCache, FormatPlan, LinearChoice, LinearFormat, MeasureOptions, FORMATS_FILE};
use sprig_bert::hf::from_hf_name;
use sprig_bert::{is_encoder_linear_weight, BertClassifier, BertTokenizer, Checkpoint};
use sprig_prune::MaskSet;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A classifier directory written by sprig (config.json with id2label, model.safetensors,
    /// tokenizer.json; optionally masks.safetensors + sprig.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Texts, one per line (`-`: standard input, the default); one output line per input line, a
    /// blank line being an empty text (with --jsonl blank lines are skipped).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// The input is JSON lines, each an object with a "text" field; its other fields are copied
    /// into the output line.
    #[arg(long)]
    pub jsonl: bool,
    /// Write the JSON lines here (atomically) instead of standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Texts per forward pass; `auto` formats are chosen for batch-size x max-seq-len rows.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Tokens per text, [CLS] and [SEP] included [default: the max_seq_len the model records, else 128].
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    /// Format of the pruned encoder linears: auto (the fastest of dense, csr, bsr4x1, bsr1x4 and
    /// 2:4 per linear, measured on this CPU and cached in MODEL/sprig-formats.json), or one of
    /// dense, csr, bsr4x1, bsr1x4, bsr4x4, 2:4 for all.
    #[arg(long, default_value = "auto")]
    pub formats: String,
    /// Run the encoder linears in int8 (weights per output channel, activations per token, VNNI
    /// where the CPU has it; pruned weights stay pruned), instead of the f32 formats.
    #[arg(long, conflicts_with = "formats")]
    pub int8: bool,
}

/// What `--formats` asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Formats {
    /// Measure (or reuse the cached measurement) and take each linear's fastest.
    Auto,
    /// One format for every pruned linear (`Dense`: run the masked dense model as stored).
    All(LinearFormat),
}

pub fn parse_formats(s: &str) -> Result<Formats> {
    if s == "auto" {
        return Ok(Formats::Auto);
    }
    s.parse().map(Formats::All).map_err(|e| anyhow::anyhow!("--formats: {e}; or auto"))
}

/// A classifier directory loaded for inference, with the masks of its pruned encoder linears.
pub struct Loaded {
    pub dir: PathBuf,
    pub ckpt: Checkpoint,
    pub labels: Vec<String>,
    /// By the encoder's weight names (`encoder.layer.{i}.….weight`).
    pub masks: MaskSet,
    /// sha256 of `masks.safetensors` when the masks came from it.
    pub masks_sha256: Option<String>,
}

/// Loads `dir`: config, weights, labels, and the masks (`masks.safetensors` through sprig-prune's
/// checkpoint reader when present, else the exact zeros of each encoder linear weight).
pub fn load(dir: &Path) -> Result<Loaded> {
    if !dir.is_dir() {
        bail!("model directory {} does not exist (pass a classifier directory written by sprig)", dir.display());
    }
    let spec = dir.to_str().with_context(|| format!("{} is not a UTF-8 path", dir.display()))?;
    let ckpt = Checkpoint::load(spec, &Device::Cpu).with_context(|| format!("loading {}", dir.display()))?;
    if !ckpt.has_classifier() {
        bail!("{} has no classification head (classifier.weight); fine-tune it first with `sprig finetune`", dir.display());
    }
    let n = ckpt.tensors["classifier.weight"].dims()[0];
    let labels = match ckpt.config.labels() {
        Some(l) if l.len() == n => l,
        Some(l) => bail!("{}/config.json names {} labels (id2label) but the head has {n} outputs", dir.display(), l.len()),
        None => (0..n).map(|i| format!("LABEL_{i}")).collect(),
    };
    let (masks, masks_sha256) = if dir.join(sprig_prune::checkpoint::MASKS_FILE).is_file() {
        let ck = sprig_prune::checkpoint::load(dir, &Device::Cpu).with_context(|| format!("loading the masks of {}", dir.display()))?;
        let mut set = MaskSet::new();
        for (name, m) in ck.masks.iter() {
            let own = from_hf_name(name);
            if is_encoder_linear_weight(own) {
                set.insert(own, m.clone());
            } else {
                tracing::debug!("mask {name} is not an encoder linear: its tensor runs dense");
            }
        }
        (set, Some(ck.manifest.masks_sha256))
    } else {
        (masks_from_zeros(&ckpt.encoder(0, &Device::Cpu)?)?, None)
    };
    if !masks.is_empty() {
        tracing::info!(
            "{}: {} pruned encoder linears, sparsity {:.3} (masks from {})",
            dir.display(),
            masks.len(),
            masks.sparsity(),
            if masks_sha256.is_some() { "masks.safetensors" } else { "the weights' zeros" }
        );
    }
    Ok(Loaded { dir: dir.to_path_buf(), ckpt, labels, masks, masks_sha256 })
}

/// A classifier ready to run and how its linears were chosen.
pub struct Compiled {
    pub model: BertClassifier,
    pub plan: FormatPlan,
    /// `measured`, `cached` (reused from `sprig-formats.json`) or `fixed` (`--formats` named one).
    pub source: &'static str,
}

/// Builds the classifier of `l` and compiles its pruned linears per `formats`, choosing for
/// inputs of `rows` rows (batch x sequence length).
pub fn compile(l: &Loaded, formats: Formats, rows: usize) -> Result<Compiled> {
    let mut model = l.ckpt.classifier(0, &Device::Cpu)?;
    let (plan, source) = match formats {
        Formats::Auto => auto_plan(l, &model, rows)?,
        Formats::All(f) => (fixed_plan(&model, &l.masks, f, rows), "fixed"),
    };
    model
        .encoder
        .compile_sparse_each(&l.masks, &plan.sparse_formats())
        .with_context(|| format!("compiling {} ({:?})", l.dir.display(), plan.counts()))?;
    Ok(Compiled { model, plan, source })
}

/// The classifier of `l` with its encoder linears in int8 (see `--int8`).
pub fn int8_model(l: &Loaded) -> Result<BertClassifier> {
    let mut model = l.ckpt.classifier(0, &Device::Cpu)?;
    let s = model.encoder.quantize_int8().with_context(|| format!("quantizing {} to int8", l.dir.display()))?;
    if s.path != "avx512-vnni" {
        tracing::warn!("int8 runs the {} path here (no AVX-512 VNNI): measured slower than the f32 sparse kernels on such CPUs (docs/results/int8.md); leave out --int8 for speed", s.path);
    }
    tracing::info!(
        "int8 ({}, attention {}): {} linears, {} of {} non-zero weights stay non-zero, {:.1} MB against {:.1} MB of f32 dense",
        s.path,
        s.attention,
        s.linears,
        s.nonzero_int8,
        s.nonzero_f32,
        s.bytes_int8 as f64 / 1e6,
        s.bytes_f32_dense as f64 / 1e6
    );
    Ok(model)
}

fn fixed_plan(model: &BertClassifier, masks: &MaskSet, f: LinearFormat, rows: usize) -> FormatPlan {
    let choices = model
        .encoder
        .named_params()
        .iter()
        .filter(|(n, _)| is_encoder_linear_weight(n))
        .map(|(n, _)| {
            let (format, sparsity) = masks.get(n).map_or((LinearFormat::Dense, 0.0), |m| (f, m.sparsity()));
            (n.clone(), LinearChoice { format, sparsity, ms: BTreeMap::new() })
        })
        .collect();
    FormatPlan { rows, threads: sprig_kernels::bench::threads(), seconds: 0.0, choices }
}

/// The plan cached in `DIR/sprig-formats.json` when it was measured on this machine, build and
/// files for these rows and threads; else a fresh measurement, cached there (kept in memory with
/// a warning when the directory is not writable).
fn auto_plan(l: &Loaded, model: &BertClassifier, rows: usize) -> Result<(FormatPlan, &'static str)> {
    let weights = sprig_prune::checkpoint::weights_sha256(&l.dir).with_context(|| format!("hashing the weights of {}", l.dir.display()))?;
    let mut cache = FormatCache::for_this_machine(weights, l.masks_sha256.clone());
    let path = l.dir.join(FORMATS_FILE);
    let threads = sprig_kernels::bench::threads();
    match FormatCache::read(&path) {
        Ok(Some(old)) if old.same_keys(&cache) => {
            if let Some(p) = old.plan(rows, threads) {
                tracing::info!("formats: reusing {} (measured for {rows} rows, {threads} threads): {:?}", path.display(), p.counts());
                return Ok((p.clone(), "cached"));
            }
            cache = old;
        }
        Ok(Some(_)) => tracing::info!("formats: {} was measured for another CPU, build or weights file: measuring again", path.display()),
        Ok(None) => {}
        Err(e) => tracing::warn!("formats: {e:#}; measuring again"),
    }
    if l.masks.is_empty() {
        return Ok((fixed_plan(model, &l.masks, LinearFormat::Dense, rows), "measured"));
    }
    tracing::info!("formats: measuring {} pruned linears at {rows} rows x {threads} threads", l.masks.len());
    let plan = measure_formats(&model.encoder, &l.masks, &MeasureOptions { rows, ..Default::default() })?;
    tracing::info!("formats: measured in {:.1} s: {:?}", plan.seconds, plan.counts());
    cache.insert(plan.clone());
    if let Err(e) = cache.write(&path) {
        tracing::warn!("formats: cannot write {} ({e:#}); the choice is kept in memory only and measured again next time", path.display());
    }
    Ok((plan, "measured"))
}

/// One input: its text and the other fields of its JSON object (empty for plain text).
struct Item {
    text: String,
    fields: serde_json::Map<String, serde_json::Value>,
}

/// Splits `bytes` into lines (`\n`, optional `\r`) and parses them; errors name `name:line`.
fn parse_items(name: &str, bytes: &[u8], jsonl: bool) -> Result<Vec<Item>> {
    let mut items = vec![];
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if body.is_empty() {
        bail!("{name}: no texts to predict (the input is empty)");
    }
    for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let line = std::str::from_utf8(raw).map_err(|e| anyhow::anyhow!("{name}:{}: invalid UTF-8 ({e})", i + 1))?;
        if !jsonl {
            items.push(Item { text: line.to_string(), fields: Default::default() });
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{name}:{}: not JSON", i + 1))?;
        let serde_json::Value::Object(mut fields) = v else { bail!("{name}:{}: not a JSON object", i + 1) };
        let Some(serde_json::Value::String(text)) = fields.remove("text") else {
            bail!("{name}:{}: the object has no \"text\" string field", i + 1)
        };
        items.push(Item { text, fields });
    }
    if items.is_empty() || items.iter().all(|it| it.text.trim().is_empty()) {
        bail!("{name}: no texts to predict (only blank lines)");
    }
    Ok(items)
}

fn read_input(input: Option<&Path>) -> Result<(String, Vec<u8>)> {
    match input {
        Some(p) if p != Path::new("-") => Ok((p.display().to_string(), std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)),
        _ => {
            let mut b = vec![];
            std::io::stdin().read_to_end(&mut b).context("reading standard input")?;
            Ok(("<stdin>".to_string(), b))
        }
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.batch_size == 0 {
        bail!("--batch-size must be at least 1, got 0");
    }
    if let Some(n @ 0..=1) = a.max_seq_len {
        bail!("--max-seq-len must be at least 2 ([CLS] and [SEP]), got {n}");
    }
    let formats = parse_formats(&a.formats)?;
    let (name, bytes) = read_input(a.input.as_deref())?;
    let items = parse_items(&name, &bytes, a.jsonl)?;
    let loaded = load(&a.model)?;
    let recorded = loaded.ckpt.config.extra.get("sprig").and_then(|s| s.get("max_seq_len")).and_then(|v| v.as_u64().map(|n| n as usize).or_else(|| v.as_str()?.parse().ok()));
    let max_len = a.max_seq_len.or(recorded).unwrap_or(128);
    if max_len > loaded.ckpt.config.max_position_embeddings {
        bail!("--max-seq-len {max_len} exceeds the model's max_position_embeddings {}", loaded.ckpt.config.max_position_embeddings);
    }
    let tok = BertTokenizer::from_file(loaded.ckpt.files.tokenizer()?, max_len)?;
    let model = if a.int8 { int8_model(&loaded)? } else { compile(&loaded, formats, a.batch_size * max_len)?.model };

    let texts: Vec<&str> = items.iter().map(|it| it.text.as_str()).collect();
    let t = std::time::Instant::now();
    let data = sprig_bert::finetune::Tokenized { encoded: tok.encode_batch(&texts)?, labels: vec![0; texts.len()] };
    let probs = sprig_bert::finetune::predict(&model, &data, a.batch_size, tok.pad_id())?;
    tracing::info!("predicted {} texts in {:.2} s", texts.len(), t.elapsed().as_secs_f64());

    let k = loaded.labels.len();
    let mut out = Vec::with_capacity(items.len() * 64);
    let mut clashes = std::collections::BTreeSet::new();
    for (it, p) in items.iter().zip(probs.chunks(k)) {
        let best = p.iter().enumerate().max_by(|x, y| x.1.total_cmp(y.1)).map_or(0, |(i, _)| i);
        let mut line = it.fields.clone();
        for (key, v) in [
            ("label", serde_json::json!(loaded.labels[best])),
            ("label_id", serde_json::json!(best)),
            ("probs", serde_json::json!(p)),
        ] {
            if line.insert(key.to_string(), v).is_some() {
                clashes.insert(key);
            }
        }
        serde_json::to_writer(&mut out, &line)?;
        out.push(b'\n');
    }
    if !clashes.is_empty() {
        tracing::warn!("input fields {clashes:?} are replaced by the prediction's in the output");
    }
    match &a.out {
        Some(p) => sprig_train::write_atomic(p, &out)?,
        None => std::io::stdout().lock().write_all(&out).context("writing standard output")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_split_into_lines_and_errors_name_the_line() {
        let items = parse_items("f", b"a\r\n\nb\n", false).unwrap();
        assert_eq!(items.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(), ["a", "", "b"]);
        let items = parse_items("f", b"{\"text\": \"x\", \"id\": 7}\n\n", true).unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].fields["id"], 7);
        for (bytes, jsonl, want) in [
            (&b""[..], false, "f: no texts"),
            (b"\n\n", false, "f: no texts"),
            (b"ok\n\xff\n", false, "f:2: invalid UTF-8"),
            (b"{\"id\": 1}", true, "f:1: the object has no \"text\""),
            (b"{\"text\": \"a\"}\n[1]", true, "f:2: not a JSON object"),
            (b"{", true, "f:1: not JSON"),
        ] {
            let e = format!("{:#}", parse_items("f", bytes, jsonl).err().unwrap());
            assert!(e.contains(want), "{e} lacks {want}");
        }
    }

    #[test]
    fn formats_argument() {
        assert_eq!(parse_formats("auto").unwrap(), Formats::Auto);
        assert_eq!(parse_formats("dense").unwrap(), Formats::All(LinearFormat::Dense));
        assert!(format!("{:#}", parse_formats("fast").unwrap_err()).contains("\"fast\""));
    }
}
