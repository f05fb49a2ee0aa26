//! `sprig export`: a ticket checkpoint as a Hugging Face-loadable directory (see
//! `sprig_lab::export`), or, with `--logits`, sprig's logits on test sentences for any such
//! directory (a `sprig export` or a `sprig finetune --out` run) for `scripts/verify-hf-export`.
use anyhow::{bail, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A ticket checkpoint: `DIR/round-RR/seed-S` written by `sprig ticket`.
    #[arg(long, conflicts_with = "logits", required_unless_present = "logits")]
    pub ticket: Option<PathBuf>,
    /// Instead of exporting: a Hugging Face classifier directory written by sprig; writes sprig's
    /// logits for `--examples` test sentences of its task as JSON to `--out`.
    #[arg(long)]
    pub logits: Option<PathBuf>,
    /// The new export directory (must not exist), or with `--logits` the JSON file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Test sentences whose logits are stored for `scripts/verify-hf-export`.
    #[arg(long, default_value_t = 100)]
    pub examples: usize,
}

pub fn run(a: Args) -> Result<()> {
    let home = sprig_data::sprig_home();
    match (&a.ticket, &a.logits) {
        (_, Some(dir)) => {
            let v = sprig_lab::export::reference_logits(dir, a.examples, &home)?;
            sprig_train::write_json(&a.out, &v)?;
            println!("wrote {} ({} sentences)", a.out.display(), v["examples"].as_array().map_or(0, Vec::len));
        }
        (Some(ticket), None) => {
            sprig_lab::export::export(ticket, &a.out, a.examples, &home)?;
            println!("wrote {} (check with scripts/verify-hf-export {})", a.out.display(), a.out.display());
        }
        (None, None) => bail!("give --ticket (export) or --logits (reference logits)"),
    }
    Ok(())
}
