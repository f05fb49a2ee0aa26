//! A `tokenizer.json` (Hugging Face fast tokenizer) with padding and truncation under our control.
use crate::error::{BertError, Result};
use std::path::{Path, PathBuf};
use tokenizers::{Tokenizer, TruncationParams};

/// Token ids and segment ids of one text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

pub struct BertTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    path: PathBuf,
}

impl BertTokenizer {
    /// Load `tokenizer.json`. Baked-in padding is turned off (batches are padded dynamically) and
    /// truncation is set to `max_len` tokens including `[CLS]`/`[SEP]`.
    pub fn from_file(path: &Path, max_len: usize) -> Result<Self> {
        let err = |msg: String| BertError::Tokenizer { path: path.into(), msg };
        if !path.is_file() {
            return Err(err("file not found".into()));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams { max_length: max_len, ..Default::default() }))
            .map_err(|e| err(e.to_string()))?;
        let pad_id = inner.token_to_id("[PAD]").unwrap_or(0);
        Ok(Self { inner, pad_id, path: path.into() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Encode texts (in parallel), with special tokens.
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Encoded>> {
        let enc = self
            .inner
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| BertError::Tokenizer { path: self.path.clone(), msg: e.to_string() })?;
        Ok(enc.into_iter().map(|e| Encoded { ids: e.get_ids().to_vec(), type_ids: e.get_type_ids().to_vec() }).collect())
    }
}
