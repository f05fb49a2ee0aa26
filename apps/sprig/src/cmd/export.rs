//! `sprig export`: a ticket checkpoint as a Hugging Face-loadable directory (see `sprig_lab::export`).
use anyhow::Result;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A ticket checkpoint: `DIR/round-RR/seed-S` written by `sprig ticket`.
    #[arg(long)]
    pub ticket: PathBuf,
    /// The new export directory (must not exist).
    #[arg(long)]
    pub out: PathBuf,
    /// Test sentences whose logits are stored for `scripts/verify-hf-export`.
    #[arg(long, default_value_t = 8)]
    pub examples: usize,
}

pub fn run(a: Args) -> Result<()> {
    sprig_lab::export::export(&a.ticket, &a.out, a.examples, &sprig_data::sprig_home())?;
    println!("wrote {} (check with scripts/verify-hf-export {})", a.out.display(), a.out.display());
    Ok(())
}
