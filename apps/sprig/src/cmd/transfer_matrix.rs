//! `sprig transfer-matrix`: the source × target matrix of several `sprig transfer` runs (ticket −
//! dense on the target) as `matrix.json`, `matrix.md` and a heat-map `matrix.svg`.
use anyhow::{Context, Result};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// `sprig transfer` output directories.
    #[arg(long, num_args = 1.., required = true)]
    pub runs: Vec<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let m = sprig_lab::transfer_matrix::build(&a.runs)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    sprig_train::write_json(&a.out.join("matrix.json"), &m)?;
    sprig_train::write_atomic(&a.out.join("matrix.md"), m.markdown().as_bytes())?;
    m.plot_svg(&a.out.join("matrix.svg"))?;
    print!("{}", m.markdown());
    println!("wrote {}/matrix.{{json,md,svg}}", a.out.display());
    Ok(())
}
