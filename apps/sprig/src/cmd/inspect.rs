//! `sprig inspect CKPT`: per-layer sparsity table of a sparse checkpoint (and its manifest).
//!
//! By default every number printed is recomputed from the masks and weights by
//! [`sprig_prune::checkpoint::load`], which refuses a checkpoint whose manifest disagrees with
//! them; `--fast` only reads the manifest and prints its claims, verifying nothing.
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A sparse checkpoint directory (model.safetensors + masks.safetensors + sprig.json), e.g. a
    /// ticket `OUT/round-RR/seed-S` of `sprig lottery`, `ticket` or `upstream`, or a `sprig prune` run.
    pub ckpt: PathBuf,
    /// Only read the manifest and print its claims (verifies nothing: no hashes, masks or zeros).
    #[arg(long)]
    pub fast: bool,
}

fn header(a: &Args, m: &sprig_prune::checkpoint::Manifest) {
    println!("checkpoint {}", a.ckpt.display());
    println!("method {} | seed {:?} | sprig {} | parent {}", m.meta.method, m.meta.seed, m.sprig_version, m.meta.parent_sha256.as_deref().unwrap_or("-"));
    if let Some(s) = &m.meta.schedule {
        println!("schedule {s}");
    }
}

pub fn run(a: Args) -> Result<()> {
    if a.fast {
        let m = sprig_prune::checkpoint::read_manifest(&a.ckpt).with_context(|| format!("reading {}", a.ckpt.display()))?;
        println!("NOT VERIFIED (--fast): the numbers below are what sprig.json claims; nothing was checked against the weights or masks");
        header(&a, &m);
        let claimed = sprig_prune::SparsityReport {
            tensors: m.tensors.clone(),
            prunable_sparsity: m.prunable_sparsity,
            model_sparsity: m.model_sparsity,
            prunable_numel: m.prunable_numel,
            model_numel: m.model_numel,
        };
        print!("{}", claimed.table());
        println!("verified: nothing (--fast; run without --fast to verify)");
        return Ok(());
    }
    let c = sprig_prune::checkpoint::load(&a.ckpt, &Device::Cpu).with_context(|| format!("verifying {}", a.ckpt.display()))?;
    header(&a, &c.manifest);
    print!("{}", c.report.table());
    println!(
        "verified: sha256 of {} and {}; mask sizes and padding; pruned weights exactly 0 and kept weights finite; \
         every count and sparsity above recomputed from the masks and weights and equal to sprig.json's",
        sprig_prune::checkpoint::WEIGHTS_FILE,
        sprig_prune::checkpoint::MASKS_FILE
    );
    if c.manifest_hashed {
        println!("manifest: sprig.json's manifest_sha256 matches its content");
    } else {
        println!("manifest: unhashed (written by an older sprig: no manifest_sha256), so its other fields (method, seed, schedule, parent) are unverified");
    }
    Ok(())
}
