//! sprig-bert: a BERT encoder on candle whose every parameter is a named `Var` (so pruning can mask
//! any linear), Hugging Face checkpoint loading (local directory or hub cache), tokenization,
//! pooling, a sequence-classification head, fine-tuning, and masked / gradually pruned
//! fine-tuning (`masked`, `gradual`: GMP, movement), and each pruned linear compiled to its fastest
//! sparse format for this CPU (`formats`, behind `sprig predict`). Errors are [`BertError`]; no plots. The
//! experiments on top (BERT tickets, transfer, upstream tickets, compile/export of tickets) live
//! in `sprig-lab`.

/// `bail!`-like: `return Err(BertError::Invalid(format!(...)))`.
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::BertError::Invalid(format!($($arg)*))) };
}

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod finetune;
pub mod formats;
pub mod gradual;
pub mod hf;
pub mod masked;
pub mod model;
pub mod moe_finetune;
pub mod nn;
pub mod prune;
pub mod source;
pub mod tokenizer;
pub mod weights;

pub use checkpoint::{save_classifier, Checkpoint};
pub use config::{BertConfig, Pooling};
pub use error::{BertError, Result};
pub use finetune::{finetune, FinetuneConfig, FinetuneSummary};
pub use model::{is_encoder_linear_weight, pool, BertClassifier, BertEncoder, Init, Ops};
pub use source::{hub_cache_dir, ModelFiles};
pub use tokenizer::{BertTokenizer, Encoded};
