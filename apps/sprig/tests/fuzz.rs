//! Fuzz targets for every reader of untrusted files: the text datasets, a BERT checkpoint's
//! `config.json` and `model.safetensors`, sparse checkpoints with masks, `Mask::from_bytes`, and
//! the run configs (`config.toml` of `sprig finetune` and `sprig prune`).
//!
//! Each target writes a small valid seed file, mutates it with one shared strategy ([`input`]: a
//! list of byte and JSON-number edits, or purely random bytes), runs the reader and checks the
//! property: it returns `Ok` or an error naming the file, and never panics. A failure is shrunk
//! by proptest and reported with the seed that reproduces it.
//!
//! - `SPRIG_FUZZ_CASES`: cases per target (default [`DEFAULT_CASES`], a few seconds in all);
//!   `SPRIG_FUZZ_CASES=20000 cargo test --release -p sprig --test fuzz -- --nocapture` runs long.
//! - `SPRIG_FUZZ_SEED`: the RNG seed (default: from the clock; printed with every target's count).
//! - `SPRIG_FUZZ_VERBOSE=1`: print every error message the readers return (to see how deep the
//!   mutations get).
//! - `SPRIG_FUZZ_TRACE=DIR`: write each target's current input to `DIR/<target>.bin` before
//!   running it, so that an abort (which proptest cannot catch) leaves its reproducer behind.
use std::fmt::Debug;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use sha2::{Digest, Sha256};

/// Cases per target when `SPRIG_FUZZ_CASES` is unset.
const DEFAULT_CASES: u32 = 500;

// ------------------------------------------------------------------------------------- mutations

/// Values that replace a number (of a JSON file, or any digit run): bounds, overflows, non-numbers.
const EXTREME_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "1e9",
    "1e308",
    "-1e308",
    "1.5",
    "4294967296",
    "9223372036854775807",
    "18446744073709551615",
    "18446744073709551616",
    "NaN",
    "\"NaN\"",
    "Infinity",
    "null",
    "\"\"",
    "[]",
];

/// Values that replace an innermost JSON array (a shape or a pair of data offsets).
const EXTREME_ARRAYS: &[&str] =
    &["[]", "[0]", "[1]", "[-1]", "[0,0]", "[1,1,1,1,1,1,1,1]", "[4294967296,4294967296]", "[18446744073709551615]"];

/// Where a position falls: anywhere, or in the first or last 64 bytes (headers; data and tails).
#[derive(Clone, Copy, Debug)]
enum Region {
    Any,
    Head,
    Tail,
}

/// A position in the file, drawn in a [`Region`].
#[derive(Clone, Debug)]
struct Pos {
    region: Region,
    index: Index,
}

impl Pos {
    /// A position in `0..len` (0 for an empty range).
    fn get(&self, len: usize) -> usize {
        let (start, n) = match self.region {
            Region::Any => (0, len),
            Region::Head => (0, len.min(64)),
            Region::Tail => (len.saturating_sub(64), len.min(64)),
        };
        if n == 0 {
            0
        } else {
            start + self.index.index(n)
        }
    }
}

/// One edit of a file.
#[derive(Clone, Debug)]
enum Op {
    Flip {
        at: Pos,
        bit: u8,
    },
    Set {
        at: Pos,
        byte: u8,
    },
    Truncate {
        at: Pos,
    },
    Insert {
        at: Pos,
        bytes: Vec<u8>,
    },
    Delete {
        at: Pos,
        len: usize,
    },
    Duplicate {
        at: Pos,
        len: usize,
    },
    /// Replace the `nth` number (modulo their count) by [`EXTREME_NUMBERS`]`[value]`.
    Number {
        nth: Index,
        value: Index,
    },
    /// Replace the `nth` innermost JSON array by [`EXTREME_ARRAYS`]`[value]`.
    Array {
        nth: Index,
        value: Index,
    },
}

/// What a case does to the seed file.
#[derive(Clone, Debug)]
enum Input {
    Mutate(Vec<Op>),
    Random(Vec<u8>),
}

fn pos() -> impl Strategy<Value = Pos> {
    let region = prop_oneof![Just(Region::Any), Just(Region::Head), Just(Region::Tail)];
    (region, any::<Index>()).prop_map(|(region, index)| Pos { region, index })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        1 => (pos(), 0u8..8).prop_map(|(at, bit)| Op::Flip { at, bit }),
        1 => (pos(), any::<u8>()).prop_map(|(at, byte)| Op::Set { at, byte }),
        1 => pos().prop_map(|at| Op::Truncate { at }),
        1 => (pos(), prop::collection::vec(any::<u8>(), 1..32)).prop_map(|(at, bytes)| Op::Insert { at, bytes }),
        1 => (pos(), 1usize..512).prop_map(|(at, len)| Op::Delete { at, len }),
        1 => (pos(), 1usize..512).prop_map(|(at, len)| Op::Duplicate { at, len }),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(nth, value)| Op::Number { nth, value }),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(nth, value)| Op::Array { nth, value }),
    ]
}

/// The one mutation strategy of every target: one edit of the seed (6 in 10; a single edit gets
/// past a file's header more often), 2 to 5 edits (3 in 10), or random bytes (1 in 10).
fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        6 => prop::collection::vec(op(), 1..2).prop_map(Input::Mutate),
        3 => prop::collection::vec(op(), 2..6).prop_map(Input::Mutate),
        1 => prop::collection::vec(any::<u8>(), 0..1024).prop_map(Input::Random),
    ]
}

/// Byte ranges of the numbers in `b` (a digit run with its sign, point and exponent).
fn numbers(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_digit() || (b[i] == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit));
        if starts {
            let start = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_digit() || b"+-.eE".contains(&b[i])) {
                i += 1;
            }
            out.push((start, i));
        } else {
            i += 1;
        }
    }
    out
}

/// Byte ranges of the innermost `[...]` in `b`.
fn arrays(b: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut open = None;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'[' => open = Some(i),
            b']' => {
                if let Some(s) = open.take() {
                    out.push((s, i + 1));
                }
            }
            _ => {}
        }
    }
    out
}

fn replace_nth(b: &mut Vec<u8>, ranges: &[(usize, usize)], nth: &Index, with: &str) {
    if !ranges.is_empty() {
        let (s, e) = ranges[nth.index(ranges.len())];
        b.splice(s..e, with.bytes());
    }
}

/// The JSON header of a safetensors file (8-byte little-endian length, then `{...}`), if `b` is one.
fn safetensors_header(b: &[u8]) -> Option<usize> {
    let n = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let n = usize::try_from(n).ok()?;
    (b.get(8) == Some(&b'{') && n <= b.len() - 8).then_some(n)
}

/// Applies a JSON edit to the text part of `b`: in a safetensors file only to its header, keeping
/// the length prefix right, so that the header's JSON parser and the checks after it are reached.
fn edit_json(b: &mut Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) {
    match safetensors_header(b) {
        Some(n) => {
            let mut header = b[8..8 + n].to_vec();
            edit(&mut header);
            let rest = b.split_off(8 + n);
            *b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(&header);
            b.extend_from_slice(&rest);
        }
        None => edit(b),
    }
}

/// The bytes a case feeds to the reader.
fn apply(seed: &[u8], input: &Input) -> Vec<u8> {
    let ops = match input {
        Input::Random(bytes) => return bytes.clone(),
        Input::Mutate(ops) => ops,
    };
    let mut b = seed.to_vec();
    for op in ops {
        let len = b.len();
        match op {
            Op::Flip { at, bit } if len > 0 => b[at.get(len)] ^= 1 << bit,
            Op::Set { at, byte } if len > 0 => b[at.get(len)] = *byte,
            Op::Truncate { at } => b.truncate(at.get(len)),
            Op::Insert { at, bytes } => {
                let i = at.get(len + 1);
                b.splice(i..i, bytes.iter().copied());
            }
            Op::Delete { at, len: n } => {
                let i = at.get(len);
                b.drain(i..(i + n).min(len));
            }
            Op::Duplicate { at, len: n } => {
                let i = at.get(len);
                let chunk = b[i..(i + n).min(len)].to_vec();
                b.splice(i..i, chunk);
            }
            Op::Number { nth, value } => edit_json(&mut b, |h| {
                let r = numbers(h);
                replace_nth(h, &r, nth, EXTREME_NUMBERS[value.index(EXTREME_NUMBERS.len())]);
            }),
            Op::Array { nth, value } => edit_json(&mut b, |h| {
                let r = arrays(h);
                replace_nth(h, &r, nth, EXTREME_ARRAYS[value.index(EXTREME_ARRAYS.len())]);
            }),
            _ => {}
        }
    }
    b
}

// ---------------------------------------------------------------------------------------- runner

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a non-negative integer")))
}

/// Runs `body` on `cases` values of `strategy`: a panic or an `Err` is a crash. Prints the count.
fn fuzz<S: Strategy>(target: &str, strategy: S, body: impl Fn(&S::Value) -> Result<(), String>)
where
    S::Value: Debug,
{
    let cases = env_u64("SPRIG_FUZZ_CASES").map_or(DEFAULT_CASES, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let seed = env_u64("SPRIG_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    });
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    for (i, b) in target.bytes().enumerate() {
        key[8 + i % 24] ^= b;
    }
    let config = Config { cases, failure_persistence: None, max_shrink_iters: 4096, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &key));
    let runs = AtomicU64::new(0);
    REJECTED.with(|r| r.set(0));
    let result = runner.run(&strategy, |v| {
        runs.fetch_add(1, Ordering::Relaxed);
        body(&v).map_err(TestCaseError::fail)
    });
    let n = runs.load(Ordering::Relaxed);
    match result {
        Ok(()) => {
            let rejected = REJECTED.with(|r| r.get());
            eprintln!("fuzz {target}: {n} executions, 0 crashes ({rejected} inputs rejected with a clean error; SPRIG_FUZZ_SEED={seed})")
        }
        Err(e) => panic!("fuzz {target}: crash after {n} executions (SPRIG_FUZZ_SEED={seed}): {e}"),
    }
}

/// With `SPRIG_FUZZ_TRACE=DIR`, keeps the input about to run as `DIR/<target>.bin`.
fn trace(target: &str, bytes: &[u8]) {
    if let Some(dir) = std::env::var_os("SPRIG_FUZZ_TRACE") {
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(Path::new(&dir).join(format!("{target}.bin")), bytes);
    }
}

thread_local! {
    /// Inputs the readers rejected with an error, in this thread's target (proptest runs the cases
    /// in the test's own thread).
    static REJECTED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn rejected() {
    REJECTED.with(|r| r.set(r.get() + 1));
}

/// `Ok` stays `Ok`; an error must name one of `files` (by file name).
fn names_a_file<T, E: std::fmt::Display>(r: Result<T, E>, files: &[&str]) -> Result<Option<T>, String> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) => {
            let msg = e.to_string();
            if std::env::var_os("SPRIG_FUZZ_VERBOSE").is_some() {
                eprintln!("fuzz error: {msg}");
            }
            if files.iter().any(|f| msg.contains(f)) {
                rejected();
                Ok(None)
            } else {
                Err(format!("the error names none of {files:?}: {msg}"))
            }
        }
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

// ---------------------------------------------------------------------------------- run configs

/// Parses and validates a mutated run `config.toml` (`sprig finetune` / `sprig prune --config`
/// read theirs this way: TOML into the config type, then `validate`): the TOML parser or the
/// validation refuses it, or it is a config whose every number is in range; never a panic.
fn fuzz_run_config<C>(target: &str, seed: &C, validate: impl Fn(&C) -> Result<(), String>)
where
    C: serde::Serialize + serde::de::DeserializeOwned,
{
    let seed = toml::to_string(seed).unwrap().into_bytes();
    fuzz(target, input(), |inp| {
        let bytes = apply(&seed, inp);
        let Ok(text) = std::str::from_utf8(&bytes) else {
            rejected();
            return Ok(());
        };
        match toml::from_str::<C>(text) {
            Ok(c) => {
                if validate(&c).is_err() {
                    rejected();
                }
            }
            Err(_) => rejected(),
        }
        Ok(())
    });
}

#[test]
fn fuzz_finetune_config() {
    fuzz_run_config("finetune-config", &sprig_bert::FinetuneConfig::default(), |c| c.validate().map_err(|e| e.to_string()));
}

#[test]
fn fuzz_prune_config() {
    fuzz_run_config("prune-config", &sprig_bert::prune::PruneConfig::default(), |c| c.validate().map_err(|e| e.to_string()));
}

// -------------------------------------------------------------------------------------- datasets

/// Fuzzes `load_text_task(task)` on a data directory holding `files` (paths under `data/`, as
/// `scripts/fetch-assets` lays them out); each case mutates one of them.
fn fuzz_text_task(task: &str, files: &[(&str, Vec<u8>)]) {
    let home = tempfile::tempdir().unwrap();
    let path = |rel: &str| home.path().join("data").join(rel);
    for (rel, bytes) in files {
        write(&path(rel), bytes);
    }
    let target = format!("data-{task}");
    fuzz(&target, (input(), any::<Index>()), |(inp, which)| {
        let (rel, seed) = &files[which.index(files.len())];
        let bytes = apply(seed, inp);
        trace(&target, &bytes);
        let p = path(rel);
        std::fs::write(&p, &bytes).unwrap();
        let r = sprig_data::load_text_task(task, home.path(), 0);
        std::fs::write(&p, seed).unwrap();
        let file = p.to_string_lossy().into_owned();
        if let Some(d) = names_a_file(r, &[&file])? {
            let all = d.train.iter().chain(&d.dev).chain(&d.test);
            if let Some(e) = all.clone().find(|e| e.label >= d.classes.len()) {
                return Err(format!("label {} >= {} classes", e.label, d.classes.len()));
            }
            if d.len() != d.split.train + d.split.dev + d.split.test {
                return Err(format!("split sizes {:?} do not add up to {}", d.split, d.len()));
            }
        }
        Ok(())
    });
}

fn lines(n: usize, line: impl Fn(usize) -> String) -> Vec<u8> {
    (0..n).map(line).collect::<String>().into_bytes()
}

#[test]
fn fuzz_rt_sentiment() {
    let mut f = b"id\tsentiment\ttext\n".to_vec();
    f.extend(lines(20, |i| {
        format!("{i}\t{:.3}\tsnippet {i} caf\u{e9} \"quoted\"\r\n", if i % 2 == 0 { 1.5 } else { -2.25 })
    }));
    fuzz_text_task("rt-sentiment", &[("rt-sentiment/movieReviewSnippets_GroundTruth.txt", f)]);
}

#[test]
fn fuzz_sms_spam() {
    let mut f = b",spam,text\n".to_vec();
    f.extend(lines(20, |i| format!("{i},{},\"win, {i} \"\"now\"\"\nline two \u{a3}\"\n", i % 2)));
    fuzz_text_task("sms-spam", &[("sms-spam/sms-spam.csv", f)]);
}

#[test]
fn fuzz_trec() {
    let classes = ["NUM:date", "LOC:city", "HUM:ind"];
    let f = lines(21, |i| format!("{} question {i} ?\n", classes[i % 3]));
    fuzz_text_task("trec6", &[("trec/question_labels.txt", f)]);
}

#[test]
fn fuzz_orange_r8() {
    let tab = |n: usize| {
        let mut f = b"Category\tText\nd\tstring\nclass\tinclude=True\n".to_vec();
        f.extend(lines(n, |i| format!("{}\tarticle {i} text\n", ["earn", "acq", "trade"][i % 3])));
        f
    };
    fuzz_text_task("r8", &[("r8/reuters-r8-train.tab", tab(24)), ("r8/reuters-r8-test.tab", tab(6))]);
}

#[test]
fn fuzz_bbc() {
    let mut files = vec![("bbc/sports/199.txt".to_string(), b"Mutu, a \xa315.8m signing\n".to_vec())];
    for class in ["business", "sports", "tech"] {
        for i in 1..5 {
            files.push((
                format!("bbc/{class}/00{i}.txt"),
                format!("{class} story {i}: a \u{a3}2bn deal\n").into_bytes(),
            ));
        }
    }
    let files: Vec<(&str, Vec<u8>)> = files.iter().map(|(p, b)| (p.as_str(), b.clone())).collect();
    fuzz_text_task("bbc", &files);
}

// ------------------------------------------------------------------------------- BERT checkpoint

/// A tiny BERT classifier in Hugging Face names (vocab 64, hidden 16, 2 layers, 2 heads,
/// intermediate 32, 3 labels): `(config.json, model.safetensors)`.
fn tiny_bert() -> (Vec<u8>, Vec<u8>) {
    let (v, h, l, i, p, labels) = (64, 16, 2, 32, 32, 3);
    let config = serde_json::json!({
        "architectures": ["BertForSequenceClassification"], "model_type": "bert",
        "vocab_size": v, "hidden_size": h, "num_hidden_layers": l, "num_attention_heads": 2,
        "intermediate_size": i, "max_position_embeddings": p, "type_vocab_size": 2,
        "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
        "layer_norm_eps": 1e-12, "pad_token_id": 0,
        "id2label": {"0": "a", "1": "b", "2": "c"}, "label2id": {"a": 0, "b": 1, "c": 2},
        "sprig_pooling": "mean"
    });
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("bert.embeddings.word_embeddings.weight".into(), vec![v, h]),
        ("bert.embeddings.position_embeddings.weight".into(), vec![p, h]),
        ("bert.embeddings.token_type_embeddings.weight".into(), vec![2, h]),
        ("bert.embeddings.LayerNorm.gamma".into(), vec![h]),
        ("bert.embeddings.LayerNorm.beta".into(), vec![h]),
        ("classifier.weight".into(), vec![labels, h]),
        ("classifier.bias".into(), vec![labels]),
    ];
    for k in 0..l {
        let q = format!("bert.encoder.layer.{k}");
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", i, h),
            ("output.dense", h, i),
        ] {
            shapes.push((format!("{q}.{name}.weight"), vec![out, inp]));
            shapes.push((format!("{q}.{name}.bias"), vec![out]));
        }
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            shapes.push((format!("{q}.{norm}.weight"), vec![h]));
            shapes.push((format!("{q}.{norm}.bias"), vec![h]));
        }
    }
    let mut data: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .enumerate()
        .map(|(t, (name, shape))| {
            let n: usize = shape.iter().product();
            let bytes = (0..n).flat_map(|j| (((t * 31 + j * 7) % 13) as f32 * 0.01 - 0.06).to_le_bytes()).collect();
            (name, safetensors::Dtype::F32, shape, bytes)
        })
        .collect();
    // An integer buffer, as in real checkpoints (skipped by the loader).
    data.push((
        "bert.embeddings.position_ids".into(),
        safetensors::Dtype::I64,
        vec![1, p],
        (0..p as i64).flat_map(i64::to_le_bytes).collect(),
    ));
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, dt, s, b)| (n.clone(), safetensors::tensor::TensorView::new(*dt, s.clone(), b).unwrap()))
        .collect();
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let st = safetensors::serialize(views, Some(meta)).unwrap();
    (serde_json::to_vec_pretty(&config).unwrap(), st)
}

/// Loads the checkpoint in `dir` and builds its classifier (encoder and head), as `sprig predict` does.
fn load_bert(dir: &Path) -> Result<(), String> {
    let ckpt = names_a_file(
        sprig_bert::Checkpoint::load(dir.to_str().unwrap(), &Device::Cpu),
        &["config.json", "model.safetensors"],
    )?;
    if let Some(ckpt) = ckpt {
        names_a_file(ckpt.encoder(0, &Device::Cpu), &["config.json", "model.safetensors"])?;
        names_a_file(ckpt.classifier(0, &Device::Cpu), &["config.json", "model.safetensors"])?;
    }
    Ok(())
}

/// Fuzzes one file (`config.json` or `model.safetensors`) of the tiny checkpoint.
fn fuzz_bert_file(target: &str, file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (config, weights) = tiny_bert();
    write(&dir.path().join("config.json"), &config);
    write(&dir.path().join("model.safetensors"), &weights);
    load_bert(dir.path()).expect("the seed checkpoint loads");
    let seed = if file == "config.json" { config } else { weights };
    let p = dir.path().join(file);
    fuzz(target, input(), |inp| {
        let bytes = apply(&seed, inp);
        trace(target, &bytes);
        std::fs::write(&p, &bytes).unwrap();
        if file == "config.json" && names_a_file(sprig_bert::BertConfig::from_file(&p), &["config.json"])?.is_none() {
            return Ok(());
        }
        load_bert(dir.path())
    });
}

#[test]
fn fuzz_bert_config() {
    fuzz_bert_file("bert-config", "config.json");
}

/// `"num_hidden_layers": 2^64-1` in `config.json` is an error at load (it passed validation and
/// building the encoder panicked on "capacity overflow"; 2^32 aborted the process on a 4 TB
/// allocation).
#[test]
fn bert_huge_num_hidden_layers_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (config, weights) = tiny_bert();
    let mut config: serde_json::Value = serde_json::from_slice(&config).unwrap();
    config["num_hidden_layers"] = u64::MAX.into();
    write(&dir.path().join("config.json"), config.to_string().as_bytes());
    write(&dir.path().join("model.safetensors"), &weights);
    let ckpt = sprig_bert::Checkpoint::load(dir.path().to_str().unwrap(), &Device::Cpu);
    let e = ckpt.err().expect("a config with 2^64-1 layers loads").to_string();
    assert!(e.contains("config.json") && e.contains("num_hidden_layers"), "{e}");
}

#[test]
fn fuzz_bert_safetensors() {
    fuzz_bert_file("bert-safetensors", "model.safetensors");
}

/// `model.safetensors` bytes with tensor `name` replaced by `shape` and `data` (F32).
fn with_tensor(st: &[u8], name: &str, shape: Vec<usize>, data: &[u8]) -> Vec<u8> {
    let parsed = safetensors::SafeTensors::deserialize(st).unwrap();
    let views: Vec<(String, safetensors::tensor::TensorView)> = parsed
        .tensors()
        .into_iter()
        .map(|(n, v)| match n == name {
            true => (n, safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data).unwrap()),
            false => (n, v),
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

/// A well-formed `model.safetensors` whose `classifier.weight` has rank 0 (shape `[]`, one f32)
/// is an error naming model.safetensors (it panicked on `dims()[0]`). The byte mutations rarely
/// reach it: the header's shape and data offsets must change together.
#[test]
fn bert_rank0_classifier_weight_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (config, weights) = tiny_bert();
    write(&dir.path().join("config.json"), &config);
    write(
        &dir.path().join("model.safetensors"),
        &with_tensor(&weights, "classifier.weight", vec![], &1f32.to_le_bytes()),
    );
    let r = std::panic::catch_unwind(|| load_bert(dir.path()));
    match r {
        Ok(r) => r.unwrap(),
        Err(_) => panic!("loading a rank-0 classifier.weight panics"),
    }
}

// ------------------------------------------------------------------------------ sparse checkpoint

const CKPT_FILES: [&str; 3] = ["model.safetensors", "masks.safetensors", "sprig.json"];

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// A tiny sparse checkpoint saved by `sprig_prune::checkpoint::save`: its three files' bytes.
fn tiny_sparse_checkpoint(dir: &Path) -> Vec<Vec<u8>> {
    let t = |shape: &[usize], k: usize| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|j| ((j * 7 + k) % 11) as f32 * 0.1 - 0.5).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap().to_dtype(DType::F32).unwrap()
    };
    let tensors = vec![
        ("l.weight".to_string(), t(&[4, 6], 1)),
        ("l.bias".to_string(), t(&[4], 2)),
        ("m.weight".to_string(), t(&[3, 5], 3)),
    ];
    let mut masks = sprig_prune::MaskSet::new();
    masks.insert(
        "l.weight",
        sprig_prune::Mask::from_bools(&[4, 6], &(0..24).map(|i| i % 3 != 0).collect::<Vec<_>>()).unwrap(),
    );
    masks.insert(
        "m.weight",
        sprig_prune::Mask::from_bools(&[3, 5], &(0..15).map(|i| i % 2 == 0).collect::<Vec<_>>()).unwrap(),
    );
    let meta = sprig_prune::checkpoint::CheckpointMeta { method: "fuzz".into(), seed: Some(1), ..Default::default() };
    sprig_prune::checkpoint::save(dir, &tensors, &masks, &meta).unwrap();
    CKPT_FILES.iter().map(|f| std::fs::read(dir.join(f)).unwrap()).collect()
}

/// Sets the manifest's sha256 fields to the files' actual hashes (when the manifest is a JSON object).
fn rehash(dir: &Path) {
    let read = |f: &str| std::fs::read(dir.join(f)).unwrap();
    let Ok(serde_json::Value::Object(mut m)) = serde_json::from_slice(&read("sprig.json")) else {
        return;
    };
    m.insert("weights_sha256".into(), sha256_hex(&read("model.safetensors")).into());
    m.insert("masks_sha256".into(), sha256_hex(&read("masks.safetensors")).into());
    let mut m = serde_json::Value::Object(m);
    m["manifest_sha256"] = sprig_prune::checkpoint::manifest_sha256(&m).into();
    std::fs::write(dir.join("sprig.json"), serde_json::to_vec(&m).unwrap()).unwrap();
}

#[test]
fn fuzz_sparse_checkpoint() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("ckpt");
    let seeds = tiny_sparse_checkpoint(&dir);
    sprig_prune::checkpoint::load(&dir, &Device::Cpu).expect("the seed checkpoint loads");
    // In half the cases the manifest's hashes are rewritten after the mutation, so that the
    // parsing behind the sha256 check (safetensors, Mask::from_bytes, shapes, zeros) is reached.
    fuzz("sparse-checkpoint", (input(), any::<Index>(), any::<bool>()), |(inp, which, fix_hashes)| {
        let k = which.index(CKPT_FILES.len());
        for (f, b) in CKPT_FILES.iter().zip(&seeds) {
            std::fs::write(dir.join(f), b).unwrap();
        }
        let bytes = apply(&seeds[k], inp);
        trace("sparse-checkpoint", &bytes);
        std::fs::write(dir.join(CKPT_FILES[k]), &bytes).unwrap();
        if *fix_hashes {
            rehash(&dir);
        }
        let r = sprig_prune::checkpoint::load(&dir, &Device::Cpu);
        if let Some(ck) = names_a_file(r, &CKPT_FILES)? {
            for (name, m) in ck.masks.iter() {
                let t = ck.tensors.iter().find(|(n, _)| n == name).ok_or(format!("mask `{name}` has no tensor"))?;
                if m.shape() != t.1.dims() {
                    return Err(format!("mask `{name}` has shape {:?}, its tensor {:?}", m.shape(), t.1.dims()));
                }
            }
        }
        Ok(())
    });
}

// ------------------------------------------------------------------------------ Mask::from_bytes

/// Shapes whose element count fits in `usize`: rank 0 to 3, dims small or large (up to 2^21).
fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![4 => 0usize..40, 1 => Just(1usize << 20), 1 => Just((1usize << 21) + 3)], 0..4)
}

#[test]
fn fuzz_mask_from_bytes() {
    // The seed bytes are a valid mask of the shape (length ceil(n/8), zero padding) when the shape
    // is small, then mutated; large shapes get the mutation of an empty seed.
    fuzz("mask-from-bytes", (shape(), prop::collection::vec(any::<u8>(), 0..256), input()), |(shape, raw, inp)| {
        let n: usize = shape.iter().product();
        let mut seed =
            if n <= 2048 { raw.iter().copied().cycle().take(n.div_ceil(8)).collect::<Vec<u8>>() } else { vec![] };
        if !n.is_multiple_of(8) {
            if let Some(last) = seed.last_mut() {
                *last &= (1u8 << (n % 8)) - 1;
            }
        }
        if n <= 2048 && seed.len() == n.div_ceil(8) {
            sprig_prune::Mask::from_bytes(shape, &seed).map_err(|e| format!("a valid seed mask is rejected: {e}"))?;
        }
        let bytes = apply(&seed, inp);
        match sprig_prune::Mask::from_bytes(shape, &bytes) {
            Ok(m) => {
                if m.len() != n || m.shape() != shape.as_slice() {
                    return Err(format!("mask of {} weights, shape {:?}; expected {n}, {shape:?}", m.len(), m.shape()));
                }
                if m.to_bytes() != bytes {
                    return Err("to_bytes does not give back the bytes".into());
                }
            }
            Err(_) if bytes.len() != n.div_ceil(8) => rejected(),
            Err(e) => {
                rejected();
                let padding = !n.is_multiple_of(8) && bytes.last().is_some_and(|b| b >> (n % 8) != 0);
                if !padding {
                    return Err(format!("bytes of the right length and zero padding rejected: {e}"));
                }
            }
        }
        Ok(())
    });
}

/// `Mask::from_bytes` refuses a shape whose element count overflows `usize` (an unchecked product
/// wrapped to 0 in release builds, so `[2^32, 2^32]` was accepted with the empty byte string).
/// Through `checkpoint::load` such shapes are rejected earlier by safetensors; the public call
/// takes any shape.
#[test]
fn mask_from_bytes_rejects_an_overflowing_shape() {
    let r = sprig_prune::Mask::from_bytes(&[1 << 32, 1 << 32], &[]);
    assert!(r.is_err(), "a [2^32, 2^32] mask is accepted with {:?} weights", r.map(|m| m.len()));
}
