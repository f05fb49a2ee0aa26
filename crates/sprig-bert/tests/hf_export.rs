//! What sprig writes as a Hugging Face classifier is what `transformers` runs with sprig's numerics:
//! `config.json` sends `AutoModelForSequenceClassification` (trust_remote_code) to the shipped
//! `modeling_sprig_bert.py` (mean or [CLS] pooling, dropout, one linear, no pooler) and records the
//! pooling; the tensors carry the names that class expects and no pooler. The Python side of the
//! check (same logits as sprig) is `scripts/verify-hf-export`; this test needs no Python.
mod common;
use candle_core::{Device, Tensor};
use sprig_bert::hf::{ARCHITECTURE, MODELING_FILE, MODELING_PY};
use sprig_bert::{BertClassifier, Checkpoint, Pooling};
use std::collections::HashMap;
use std::path::Path;

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The attribute names `self.NAME = ...` assigned in the Python class's `__init__`.
fn py_attributes(src: &str) -> Vec<String> {
    src.lines()
        .filter_map(|l| l.trim().strip_prefix("self.")?.split_once(" = ").map(|(a, _)| a.to_string()))
        .collect()
}

fn save(pooling: Pooling, dir: &Path) -> (BertClassifier, Vec<String>) {
    let ck = Checkpoint::load(common::MINILM, &Device::Cpu).expect("run scripts/fetch-assets");
    let model = BertClassifier::new(ck.encoder(0, &Device::Cpu).unwrap(), 3, pooling, None, 7).unwrap();
    let labels: Vec<String> = ["neg", "neutral", "pos"].iter().map(|s| s.to_string()).collect();
    let meta: HashMap<String, String> = [("task".to_string(), "toy".to_string())].into();
    sprig_bert::save_classifier(&model, &labels, ck.files.tokenizer().unwrap(), dir, meta).unwrap();
    (model, labels)
}

fn check_dir(pooling: Pooling, word: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (model, labels) = save(pooling, dir.path());
    let cfg = json(&dir.path().join("config.json"));

    // The loader lands on the shipped class, which pools as sprig does.
    assert_eq!(cfg["architectures"], serde_json::json!([ARCHITECTURE]), "config.json architectures");
    assert_eq!(cfg["auto_map"]["AutoModelForSequenceClassification"], format!("modeling_sprig_bert.{ARCHITECTURE}"), "config.json auto_map");
    assert_eq!(cfg["sprig_pooling"], word);
    assert_eq!(cfg["model_type"], "bert");
    assert_eq!(cfg["id2label"]["2"], "pos");
    assert_eq!(cfg["label2id"]["neg"], 0);

    // The .py on disk is the embedded one, which is the source file in this crate.
    let on_disk = std::fs::read_to_string(dir.path().join(MODELING_FILE)).expect("modeling_sprig_bert.py written");
    assert_eq!(on_disk, MODELING_PY);
    let source = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/hf/modeling_sprig_bert.py")).unwrap();
    assert_eq!(on_disk, source);
    assert!(on_disk.contains(&format!("class {ARCHITECTURE}(BertPreTrainedModel)")));
    assert!(on_disk.contains("BertModel(config, add_pooling_layer=False)"), "the class must build BERT without pooler");
    assert!(on_disk.contains("hidden[:, 0]") && on_disk.contains("m.sum(1).clamp(min=1e-9)"), "cls and masked-mean pooling");

    // Tensors: the class's submodules are `bert` (BertModel) and `classifier` (nn.Linear);
    // `dropout` has no parameters. No pooler tensors.
    let attrs = py_attributes(&on_disk);
    for a in ["bert", "dropout", "classifier"] {
        assert!(attrs.iter().any(|x| x == a), "modeling_sprig_bert.py assigns no self.{a}");
    }
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    let h = model.encoder.config.hidden_size;
    assert_eq!(st.tensor("classifier.weight").unwrap().shape(), &[labels.len(), h]);
    assert_eq!(st.tensor("classifier.bias").unwrap().shape(), &[labels.len()]);
    for n in &names {
        assert!(!n.contains("pooler"), "{n}: mean/cls pooling must not claim a pooler");
        let ok = n.starts_with("classifier.") || n.starts_with("bert.embeddings.") || n.starts_with("bert.encoder.layer.");
        assert!(ok, "{n} is not a parameter of {ARCHITECTURE}");
    }
    assert_eq!(names.len(), model.named_params().len());
    for l in 0..model.encoder.config.num_hidden_layers {
        for p in ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense", "intermediate.dense", "output.dense"] {
            assert!(names.contains(&format!("bert.encoder.layer.{l}.{p}.weight")), "layer {l} {p}");
        }
    }

    // sprig reads the directory back to the same classifier (pooling included).
    let back = Checkpoint::load(dir.path().to_str().unwrap(), &Device::Cpu).unwrap();
    let again = back.classifier(0, &Device::Cpu).unwrap();
    assert_eq!(again.pooling, pooling);
    let ids = Tensor::new(&[[101u32, 2023, 3185, 2001, 2307, 102, 0, 0]], &Device::Cpu).unwrap();
    let types = ids.zeros_like().unwrap();
    let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 1, 0, 0]], &Device::Cpu).unwrap();
    let (a, b) = (model.predict(&ids, &types, &mask).unwrap(), again.predict(&ids, &types, &mask).unwrap());
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
}

#[test]
fn mean_pooling_export_loads_as_the_shipped_class() {
    check_dir(Pooling::Mean, "mean");
}

#[test]
fn cls_pooling_export_loads_as_the_shipped_class() {
    // sprig's [CLS] head reads the raw [CLS] state (no dense + tanh pooler), so plain
    // BertForSequenceClassification would not match either: same class, pooling "cls".
    check_dir(Pooling::Cls, "cls");
}
