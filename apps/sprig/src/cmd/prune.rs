//! `sprig prune`: prune a pretrained or fine-tuned BERT to a sparsity while fine-tuning it on a
//! task, distilling from a dense teacher, and write it as a Hugging Face directory (exact zeros,
//! masks, manifest). See `sprig_bert::prune` for the methods and `sprig_lab::prune` for the run.
use anyhow::{Context, Result};
use sprig_bert::prune::{PruneConfig, PruneMethod, PruneSummary};
use std::path::Path;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The fine-tuning recipe (`--model`, `--task`, `--epochs`, `--lr`, ...; `--config` takes a
    /// `sprig prune` config.toml, flags override its fields; `--out` must be a new directory unless `--overwrite`).
    #[command(flatten)]
    pub ft: crate::cmd::finetune::Args,
    /// Final sparsity of the encoder linears, in [0, 1) [default: 0.8].
    #[arg(long)]
    pub sparsity: Option<f64>,
    /// gmp (gradual magnitude), movement, obert (second-order block OBS with weight update),
    /// obert-diag (diagonal Fisher), oneshot (magnitude once, then fine-tuning) or wanda (|w|·‖x‖
    /// on 128 training examples once, then fine-tuning) [default: gmp].
    #[arg(long)]
    pub method: Option<PruneMethod>,
    /// unstructured, RxC blocks (4x1, 1x4), N:M (2:4), ffn-neurons (whole FFN neurons, the
    /// same share in every layer: `--sparsity` is the share of neurons removed, and `OUT/narrow`
    /// holds the model with them removed physically, a dense BERT with a narrower
    /// `intermediate_size`) or attention-heads (whole heads by their value rows, the same share
    /// in every layer; `OUT/narrow` has fewer heads per layer, `sprig_attention_heads`)
    /// [default: unstructured].
    #[arg(long)]
    pub granularity: Option<String>,
    /// global, uniform, er or erk [default: the method's: uniform for movement and wanda, else global].
    #[arg(long)]
    pub allocation: Option<String>,
    /// A fine-tuned dense classifier of the task to distil from; `none` for none [default: the
    /// model itself when it is a fine-tuned classifier of the task].
    #[arg(long)]
    pub teacher: Option<String>,
    /// Distil from the teacher [default: true when there is one].
    #[arg(long)]
    pub distill: Option<bool>,
    /// Distillation temperature [default: 2].
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Weight of the soft-target loss, 1 - alpha on the labels [default: 0.5].
    #[arg(long)]
    pub alpha: Option<f64>,
    /// Start of the pruning schedule, as a fraction of training [default: 0].
    #[arg(long)]
    pub prune_start: Option<f64>,
    /// End of the pruning schedule (then the mask is fixed) [default: 0.67].
    #[arg(long)]
    pub prune_end: Option<f64>,
    /// Steps between pruning events [default: 10].
    #[arg(long)]
    pub prune_every: Option<usize>,
    /// oBERT: weights per block of the empirical Fisher, B [default: 50].
    #[arg(long)]
    pub obert_block: Option<usize>,
    /// oBERT: gradients kept for the empirical Fisher, m [default: 32; each costs 4 bytes per
    /// encoder weight, 42 MB for MiniLM-L6].
    #[arg(long)]
    pub obert_grads: Option<usize>,
    /// oBERT in 4x1 / 1x4 blocks: Fisher blocks of whole tiles, each tile scored jointly (the
    /// paper's block pruning) [default: true; false: B consecutive weights, tiles scored by the
    /// mean of their weights' saliencies].
    #[arg(long)]
    pub obert_tiles: Option<bool>,
    /// Replace a finished run in `--out` (only once the new run is complete; `--out` may still
    /// never be or lie inside `--model` or `--teacher`).
    #[arg(long)]
    pub overwrite: bool,
    /// Save the resumable training state every N steps (and at each epoch end; 0 = epoch ends
    /// only). A killed run started again with the same config and `--out` continues from there.
    #[arg(long, default_value_t = 100)]
    pub save_every: usize,
}

impl Args {
    /// The resolved config: defaults, then the config file, then the flags.
    pub fn resolve(&self) -> Result<PruneConfig> {
        let mut c = match &self.ft.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
            }
            None => PruneConfig::default(),
        };
        c.train = self.ft.apply(c.train)?;
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f.clone() { c.$f = v; } )* };
        }
        set!(sparsity, method, granularity, allocation, teacher, temperature, alpha, prune_start, prune_end, prune_every);
        // Optional in the config too: a flag given overrides the file.
        c.distill = self.distill.or(c.distill);
        c.obert_block = self.obert_block.or(c.obert_block);
        c.obert_grads = self.obert_grads.or(c.obert_grads);
        c.obert_tiles = self.obert_tiles.or(c.obert_tiles);
        c.validate()?;
        Ok(c)
    }
}

pub fn print_summary(s: &PruneSummary, out: &Path) {
    println!("| task | method | granularity | sparsity | distill | dense test acc | dev acc | test acc | train s |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let dense = s.dense_test_accuracy.map_or("-".into(), |a| format!("{a:.4}"));
    println!(
        "| {} | {} | {} | {:.4} | {} | {dense} | {:.4} | {:.4} | {:.0} |",
        s.task, s.method, s.granularity, s.sparsity, s.distill, s.dev_accuracy, s.test_accuracy, s.train_seconds
    );
    println!("pruned model: {} (sprig eval --model, sprig predict --model, sprig inspect)", out.display());
}

pub fn run(a: Args) -> Result<()> {
    let cfg = a.resolve()?;
    let opts = sprig_lab::prune::Options { overwrite: a.overwrite, save_every: a.save_every };
    let s = sprig_lab::prune::run_to(&cfg, &a.ft.out, &sprig_data::sprig_home(), opts)?;
    print_summary(&s, &a.ft.out);
    Ok(())
}

/// `sprig prune-report RUN... --svg FILE`: test accuracy vs sparsity of finished runs.
#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// Run directories of `sprig prune` (and `sprig finetune` for the dense lines).
    #[arg(required = true)]
    pub runs: Vec<std::path::PathBuf>,
    /// Where to write the figure (written whole or not at all).
    #[arg(long)]
    pub svg: std::path::PathBuf,
    /// The figure's title.
    #[arg(long, default_value = "sprig prune: test accuracy vs sparsity")]
    pub title: String,
}

pub fn report(a: ReportArgs) -> Result<()> {
    let points = a.runs.iter().map(|d| sprig_lab::prune_report::read_run(d)).collect::<Result<Vec<_>>>()?;
    let svg = sprig_lab::prune_report::plot_svg(&points, &a.title)?;
    sprig_train::run::write_atomic(&a.svg, svg.as_bytes()).with_context(|| format!("writing {}", a.svg.display()))?;
    for p in &points {
        println!("{}\t{}\t{:.4}\t{:.4}", p.dir.display(), p.series.as_deref().unwrap_or("dense"), p.sparsity, p.test_accuracy);
    }
    println!("figure: {}", a.svg.display());
    Ok(())
}
