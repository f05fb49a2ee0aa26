//! `cargo run --release -p sprig-theory --example quickstart`: the three checks in miniature,
//! without any dataset (random inputs for the NTK).
use sprig_theory::malach::{malach_sweep, Construction, MalachConfig};
use sprig_theory::ntk::{empirical_ntk, relative_frobenius, NtkMlp, PruneMask};

fn main() -> Result<(), sprig_theory::TheoryError> {
    // 1. NTK distance of a 90%-pruned, rescaled MLP from its dense parent, growing width
    let (n, d) = (16, 64);
    let x: Vec<f32> = (0..n * d).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect();
    for width in [64, 256, 1024] {
        let mlp = NtkMlp::new(d, width, 2, 0)?;
        let dense = empirical_ntk(&mlp, &x, n, None)?;
        let mask = PruneMask::random(&mlp, 0.9, true, 1)?;
        let pruned = empirical_ntk(&mlp, &x, n, Some(&mask))?;
        println!("width {width:5}: ||Θ_pruned − Θ_dense||_F / ||Θ_dense||_F = {:.4}", relative_frobenius(&pruned, &dense));
    }
    // 2. a weight approximated by pruning a random ReLU layer (Malach et al. 2020)
    let cfg = MalachConfig { construction: Construction::Malach, widths: vec![16, 256, 4096], trials: 100, neuron_inputs: 4, neuron_points: 100, seed: 0 };
    for r in malach_sweep(&cfg)? {
        println!("malach width {:5}: mean sup-error {:.2e}", r.width, r.weight_err_mean);
    }
    // 3. edge-popup needs Fashion-MNIST: see `sprig theory edge-popup` and the README.
    Ok(())
}
