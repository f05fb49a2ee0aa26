//! `sprig inspect CKPT`: per-layer sparsity table of a sparse checkpoint (and its manifest).
use anyhow::{Context, Result};
use candle_core::Device;
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A sparse checkpoint directory (model.safetensors + masks.safetensors + sprig.json), e.g. a
    /// ticket `OUT/round-RR/seed-S` of `sprig lottery`, `ticket` or `upstream`.
    pub ckpt: PathBuf,
    /// Only read the manifest (skip verifying hashes, masks and zeros).
    #[arg(long)]
    pub fast: bool,
}

pub fn run(a: Args) -> Result<()> {
    let (manifest, masked_numel) = if a.fast {
        let m = sprig_prune::checkpoint::read_manifest(&a.ckpt);
        m.map(|m| {
            let n = m.prunable_numel;
            (m, n)
        })
    } else {
        sprig_prune::checkpoint::load(&a.ckpt, &Device::Cpu).map(|c| (c.manifest, c.masks.numel()))
    }
    .with_context(|| format!("reading {}", a.ckpt.display()))?;
    let report = sprig_prune::SparsityReport {
        tensors: manifest.tensors.clone(),
        prunable_sparsity: manifest.prunable_sparsity,
        model_sparsity: manifest.model_sparsity,
        prunable_numel: masked_numel,
        model_numel: manifest.tensors.iter().map(|t| t.numel).sum(),
    };
    println!("checkpoint {}", a.ckpt.display());
    println!("method {} | seed {:?} | sprig {} | parent {}", manifest.meta.method, manifest.meta.seed, manifest.sprig_version, manifest.meta.parent_sha256.as_deref().unwrap_or("-"));
    if let Some(s) = &manifest.meta.schedule {
        println!("schedule {s}");
    }
    print!("{}", report.table());
    if !a.fast {
        println!("verified: hashes, mask sizes and zeros at pruned positions");
    }
    Ok(())
}
