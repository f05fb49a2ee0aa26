//! `sprig demo`: the main job on a default — MiniLM-L6 fine-tuned on rt-sentiment — fetching any
//! missing asset first, with a bounded runtime, ending with a result table.
use anyhow::{bail, Context, Result};
use sprig_bert::FinetuneConfig;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run directory.
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    #[arg(long, default_value = "sentence-transformers/all-MiniLM-L6-v2")]
    pub model: String,
    #[arg(long, default_value = "rt-sentiment")]
    pub task: String,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Epochs over the training split.
    #[arg(long, default_value_t = 1)]
    pub epochs: usize,
    /// Training examples (stratified, seeded subset; 0 = the whole split). The default keeps the
    /// demo within ~10 minutes on 2 cores; `sprig finetune` trains on everything.
    #[arg(long, default_value_t = 5000)]
    pub max_train: usize,
}

/// `scripts/fetch-assets` of the source tree this binary was built from (or `$SPRIG_FETCH_ASSETS`).
fn fetch_script() -> PathBuf {
    std::env::var_os("SPRIG_FETCH_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/fetch-assets"))
}

fn assets_present(model: &str, task: &str) -> bool {
    sprig_bert::ModelFiles::resolve(model).is_ok() && sprig_data::load_text_task(task, &sprig_data::sprig_home(), 42).is_ok()
}

pub fn run(a: Args) -> Result<()> {
    if !assets_present(&a.model, &a.task) {
        let script = fetch_script();
        if !script.is_file() {
            bail!("assets are missing and {} does not exist; run scripts/fetch-assets from the sprig repository", script.display());
        }
        eprintln!("fetching missing assets with {} ...", script.display());
        let status = std::process::Command::new("bash").arg(&script).status().with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!("{} failed ({status})", script.display());
        }
    }
    let cfg = FinetuneConfig { model: a.model.clone(), task: a.task.clone(), seed: a.seed, epochs: a.epochs, max_train: a.max_train, ..FinetuneConfig::default() };
    let t = std::time::Instant::now();
    let s = super::finetune::run_config(&cfg, &a.out)?;
    println!();
    println!("sprig demo: {} fine-tuned on {} ({} train examples, seed {}), {:.1} min in all", s.model, s.task, s.train_size, s.seed, t.elapsed().as_secs_f64() / 60.0);
    super::finetune::print_summary(&s);
    println!("run directory: {} (config.toml reproduces it: sprig finetune --config {}/config.toml --out DIR)", a.out.display(), a.out.display());
    Ok(())
}
