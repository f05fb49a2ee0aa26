//! Real datasets for sprig: text classification (RT sentiment, SMS spam, TREC-6, Reuters R8,
//! 20 Newsgroups, BBC News) and images (Fashion-MNIST, 10k MNIST digits), with seeded stratified
//! splits, batching helpers and evaluation metrics (accuracy, macro-F1, MCC, ECE).
//!
//! Files are fetched by `scripts/fetch-assets` into [`sprig_home`]`/data/<task>/`; nothing here
//! touches the network. Every split is a pure function of the files and the seed
//! (`rand_chacha::ChaCha8Rng`), so it is identical across runs and machines.

use std::path::{Path, PathBuf};

pub mod batch;
mod image;
mod io;
pub mod metrics;
mod split;
mod text;

/// Text classification tasks known to [`load_text_task`].
pub const TEXT_TASKS: &[&str] = &["rt-sentiment", "sms-spam", "trec6", "r8", "20ng", "bbc"];
/// Image classification tasks known to [`load_image_task`].
pub const IMAGE_TASKS: &[&str] = &["fashion-mnist", "mnist10k"];

/// Hint appended to every missing-file error.
pub const FETCH_HINT: &str = "run scripts/fetch-assets";

/// Root of sprig's local assets: `$SPRIG_HOME` when set and non-empty, else `~/.cache/sprig`.
pub fn sprig_home() -> PathBuf {
    match std::env::var_os("SPRIG_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => {
            let home = std::env::var_os("HOME")
                .or_else(|| std::env::var_os("USERPROFILE"))
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("."));
            home.join(".cache").join("sprig")
        }
    }
}

/// Everything that can go wrong while loading a dataset; each variant names the file or value.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// An expected data file or folder does not exist.
    #[error("missing data file {path}: {hint}")]
    MissingFile { path: PathBuf, hint: &'static str },
    /// A line of a text file could not be parsed.
    #[error("{path}:{line}: malformed line: {what}")]
    Malformed {
        path: PathBuf,
        line: usize,
        what: String,
    },
    /// A text file is not valid in its declared encoding (UTF-8 for every text task except BBC
    /// News): `byte` is the offset in the file of the first bad byte, `column` its offset in its
    /// line (both 0-based), `bytes` the offending byte(s) in hex.
    #[error(
        "{path}:{line}: invalid UTF-8 at byte {byte} of the file (byte {column} of line {line}): {bytes}; \
         the file must be UTF-8 (re-download it with scripts/fetch-assets if it is corrupt)"
    )]
    Encoding {
        path: PathBuf,
        line: usize,
        byte: usize,
        column: usize,
        bytes: String,
    },
    /// A binary file (IDX, JSON) has the wrong structure.
    #[error("{path}: bad file: {what}")]
    BadFile { path: PathBuf, what: String },
    /// The file parsed but held no usable example.
    #[error("empty dataset: no examples in {path}")]
    Empty { path: PathBuf },
    /// The task name is not one of the known tasks.
    #[error("unknown task '{name}' (known: {known})")]
    UnknownTask { name: String, known: String },
    /// Any other I/O error, with the path it happened on.
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One labelled text; `label` indexes [`TextDataset::classes`].
#[derive(Clone, Debug)]
pub struct TextExample {
    pub text: String,
    pub label: usize,
}

/// How a dataset was split: the seed, a human-readable method and the split sizes.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct SplitInfo {
    pub seed: u64,
    pub method: String,
    pub train: usize,
    pub dev: usize,
    pub test: usize,
}

/// A text classification task with train/dev/test splits.
#[derive(Clone, Debug)]
pub struct TextDataset {
    pub task: String,
    /// Class names; sorted, except RT sentiment which is `["negative", "positive"]`.
    pub classes: Vec<String>,
    pub train: Vec<TextExample>,
    pub dev: Vec<TextExample>,
    pub test: Vec<TextExample>,
    pub split: SplitInfo,
}

/// Images of one split: `images` holds `len() * height * width` values, pixel/255 in [0, 1].
#[derive(Clone, Debug)]
pub struct ImageSplit {
    pub images: Vec<f32>,
    pub labels: Vec<usize>,
}

impl ImageSplit {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when the split holds no image.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// An image classification task with train/dev/test splits.
#[derive(Clone, Debug)]
pub struct ImageDataset {
    pub task: String,
    /// Class names in label order.
    pub classes: Vec<String>,
    pub height: usize,
    pub width: usize,
    pub train: ImageSplit,
    pub dev: ImageSplit,
    pub test: ImageSplit,
    pub split: SplitInfo,
}

/// True for the names in [`TEXT_TASKS`].
pub fn is_text_task(name: &str) -> bool {
    TEXT_TASKS.contains(&name)
}

/// True for the names in [`IMAGE_TASKS`].
pub fn is_image_task(name: &str) -> bool {
    IMAGE_TASKS.contains(&name)
}

fn unknown(name: &str, known: &[&str]) -> DataError {
    DataError::UnknownTask {
        name: name.to_string(),
        known: known.join(", "),
    }
}

/// Where the files of `task` live under `home` (`home/data/<dir>`).
pub fn task_dir(home: &Path, task: &str) -> PathBuf {
    let dir = if task == "trec6" { "trec" } else { task };
    home.join("data").join(dir)
}

/// Loads a text task from `home` (normally [`sprig_home`]) and splits it with `seed`.
///
/// Official train/test splits are kept (R8, 20NG) with a stratified 10% of train as dev; the
/// others get a stratified 80/10/10 split. `split.method` records which.
pub fn load_text_task(name: &str, home: &Path, seed: u64) -> Result<TextDataset, DataError> {
    if !is_text_task(name) {
        return Err(unknown(name, TEXT_TASKS));
    }
    let dir = task_dir(home, name);
    let raw = match name {
        "rt-sentiment" => text::load_rt(&dir)?,
        "sms-spam" => text::load_sms(&dir)?,
        "trec6" => text::load_trec(&dir)?,
        "r8" => text::load_orange(&dir, "reuters-r8")?,
        "20ng" => text::load_orange(&dir, "20newsgroups")?,
        "bbc" => text::load_bbc(&dir)?,
        _ => unreachable!("checked by is_text_task"),
    };
    let classes = raw.classes.clone();
    let (train, dev, test, info) = raw.into_splits(seed);
    Ok(TextDataset {
        task: name.to_string(),
        classes,
        train,
        dev,
        test,
        split: info,
    })
}

impl TextDataset {
    /// A stratified, seeded subsample with at most `max_train`/`max_dev`/`max_test` examples per
    /// split (a split already small enough is kept whole). Class proportions are kept to within
    /// one example per class (largest-remainder rounding).
    pub fn subsample(
        &self,
        max_train: usize,
        max_dev: usize,
        max_test: usize,
        seed: u64,
    ) -> TextDataset {
        let labels = |v: &[TextExample]| v.iter().map(|e| e.label).collect::<Vec<_>>();
        let pick = |v: &[TextExample], max: usize, salt: u64| -> Vec<TextExample> {
            split::stratified_subsample(&labels(v), self.classes.len(), max, seed, salt)
                .into_iter()
                .map(|i| v[i].clone())
                .collect()
        };
        let train = pick(&self.train, max_train, 1);
        let dev = pick(&self.dev, max_dev, 2);
        let test = pick(&self.test, max_test, 3);
        let split = SplitInfo {
            seed: self.split.seed,
            method: format!(
                "{}; stratified subsample (seed {seed}, max {max_train}/{max_dev}/{max_test})",
                self.split.method
            ),
            train: train.len(),
            dev: dev.len(),
            test: test.len(),
        };
        TextDataset {
            task: self.task.clone(),
            classes: self.classes.clone(),
            train,
            dev,
            test,
            split,
        }
    }

    /// Number of examples over all three splits.
    pub fn len(&self) -> usize {
        self.train.len() + self.dev.len() + self.test.len()
    }

    /// True when no split holds an example.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Loads an image task from `home` (normally [`sprig_home`]) and splits it with `seed`.
///
/// Fashion-MNIST keeps its official 60k/10k split with a stratified 10% of train as dev;
/// mnist10k (the first 10,000 MNIST training digits) gets a stratified 80/10/10 split.
pub fn load_image_task(name: &str, home: &Path, seed: u64) -> Result<ImageDataset, DataError> {
    if !is_image_task(name) {
        return Err(unknown(name, IMAGE_TASKS));
    }
    let dir = task_dir(home, name);
    match name {
        "fashion-mnist" => image::load_fashion(&dir, seed),
        "mnist10k" => image::load_mnist10k(&dir, seed),
        _ => unreachable!("checked by is_image_task"),
    }
}
