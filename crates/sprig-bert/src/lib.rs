//! sprig-bert: a BERT encoder on candle whose every parameter is a named `Var` (so pruning can mask
//! any linear), Hugging Face checkpoint loading (local directory or hub cache), tokenization,
//! pooling, a sequence-classification head and fine-tuning.
pub mod checkpoint;
pub mod compile;
pub mod config;
pub mod error;
pub mod export;
pub mod finetune;
pub mod gradual;
pub mod masked;
pub mod model;
pub mod nn;
pub mod source;
pub mod ticket;
pub mod ticket_summary;
pub mod tokenizer;
pub mod transfer;
pub mod transfer_matrix;
pub mod upstream;
pub mod weights;

pub use checkpoint::{save_classifier, Checkpoint};
pub use config::{BertConfig, Pooling};
pub use error::{BertError, Result};
pub use finetune::{finetune, FinetuneConfig, FinetuneSummary};
pub use model::{is_encoder_linear_weight, pool, BertClassifier, BertEncoder, Init, Ops};
pub use source::{hub_cache_dir, ModelFiles};
pub use tokenizer::{BertTokenizer, Encoded};
