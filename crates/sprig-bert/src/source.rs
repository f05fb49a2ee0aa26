//! Where a model's files come from: a local directory, or a hub id resolved through the Hugging
//! Face hub cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`) first and
//! the network only when the cache lacks a file.
use crate::error::{io_err, BertError, Result};
use std::path::{Path, PathBuf};

/// The files of one checkpoint.
#[derive(Clone, Debug)]
pub struct ModelFiles {
    /// What the user passed (`--model`).
    pub spec: String,
    pub config: PathBuf,
    /// One `model.safetensors`, or the shards listed by `model.safetensors.index.json`.
    pub weights: Vec<PathBuf>,
    pub tokenizer: Option<PathBuf>,
}

/// The hub cache directory, as the Python `huggingface_hub` library resolves it.
pub fn hub_cache_dir() -> PathBuf {
    if let Ok(p) = std::env::var("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    hf_hub::Cache::from_env().path().clone()
}

trait FileSource {
    fn get(&self, file: &str) -> Result<Option<PathBuf>>;
}

struct LocalDir(PathBuf);
impl FileSource for LocalDir {
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        let p = self.0.join(file);
        Ok(p.is_file().then_some(p))
    }
}

struct Hub {
    id: String,
    cache: hf_hub::Cache,
}
impl FileSource for Hub {
    fn get(&self, file: &str) -> Result<Option<PathBuf>> {
        if let Some(p) = self.cache.model(self.id.clone()).get(file) {
            return Ok(Some(p));
        }
        if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1") {
            return Ok(None);
        }
        let api = hf_hub::api::sync::ApiBuilder::from_cache(self.cache.clone())
            .with_progress(true)
            .build()
            .map_err(|e| BertError::Resolve { model: self.id.clone(), msg: e.to_string() })?;
        match api.model(self.id.clone()).get(file) {
            Ok(p) => Ok(Some(p)),
            Err(hf_hub::api::sync::ApiError::RequestError(e)) if e.to_string().contains("404") => Ok(None),
            Err(e) => Err(BertError::Resolve {
                model: self.id.clone(),
                msg: format!(
                    "{file} is not in the hub cache at {} and downloading it failed: {e}. \
                     Run scripts/fetch-assets, or pass a local directory",
                    self.cache.path().display()
                ),
            }),
        }
    }
}

impl ModelFiles {
    /// Resolve `spec`: an existing directory is used as is; anything else is a hub id.
    pub fn resolve(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        let source: Box<dyn FileSource> = if path.is_dir() {
            Box::new(LocalDir(path.to_path_buf()))
        } else if path.exists() {
            return Err(BertError::Resolve { model: spec.into(), msg: "is a file; pass the checkpoint's directory".into() });
        } else if spec.split('/').count() <= 2 && !spec.is_empty() && !spec.starts_with('.') && !spec.starts_with('/') {
            Box::new(Hub { id: spec.to_string(), cache: hf_hub::Cache::new(hub_cache_dir()) })
        } else {
            return Err(BertError::Resolve { model: spec.into(), msg: "no such directory".into() });
        };
        let need = |file: &str| -> Result<PathBuf> {
            source.get(file)?.ok_or_else(|| BertError::Resolve {
                model: spec.into(),
                msg: format!("has no {file} (looked in {})", describe(spec)),
            })
        };
        let config = need("config.json")?;
        let weights = if let Some(single) = source.get("model.safetensors")? {
            vec![single]
        } else if let Some(index) = source.get("model.safetensors.index.json")? {
            let shards = shard_names(&index)?;
            shards.iter().map(|s| need(s)).collect::<Result<Vec<_>>>()?
        } else {
            return Err(BertError::Resolve {
                model: spec.into(),
                msg: format!("has neither model.safetensors nor model.safetensors.index.json (looked in {})", describe(spec)),
            });
        };
        let tokenizer = source.get("tokenizer.json")?;
        Ok(Self { spec: spec.into(), config, weights, tokenizer })
    }

    /// The tokenizer file, or an error naming where it was looked for.
    pub fn tokenizer(&self) -> Result<&Path> {
        self.tokenizer.as_deref().ok_or_else(|| BertError::Tokenizer {
            path: self.config.with_file_name("tokenizer.json"),
            msg: "missing: the checkpoint has no tokenizer.json".into(),
        })
    }
}

fn describe(spec: &str) -> String {
    if Path::new(spec).is_dir() {
        spec.to_string()
    } else {
        format!("hub cache {}", hub_cache_dir().display())
    }
}

/// Shard file names listed in a `model.safetensors.index.json` (`weight_map` values), sorted and unique.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(io_err(index))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BertError::Safetensors { path: index.into(), msg: format!("bad index JSON: {e}") })?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| BertError::Safetensors {
        path: index.into(),
        msg: "index has no weight_map object".into(),
    })?;
    let mut names: Vec<String> = map.values().filter_map(|s| s.as_str().map(String::from)).collect();
    names.sort();
    names.dedup();
    if names.is_empty() {
        return Err(BertError::Safetensors { path: index.into(), msg: "weight_map is empty".into() });
    }
    Ok(names)
}
