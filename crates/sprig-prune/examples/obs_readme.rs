//! The README's oBERT example: gradual block-OBS pruning (Kurtic et al. 2022) of a toy model
//! trained by plain SGD on a quadratic loss: observe every step's gradients; on a pruning event,
//! apply the OBS weight update, then install the masks.
use candle_core::{Device, Tensor, Var};
use sprig_prune::{Inputs, Pruner, PrunerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let params: Vec<(String, Var)> = vec![
        ("fc1.weight".into(), Var::randn(0f32, 0.1, (64, 100), &dev)?),
        ("fc2.weight".into(), Var::randn(0f32, 0.1, (10, 64), &dev)?),
    ];
    let x = Tensor::randn(0f32, 1.0, (32, 100), &dev)?;
    let y = Tensor::randn(0f32, 1.0, (32, 10), &dev)?;
    // oBERT: B = 50, m = 32, λ = 1e-7, global ranking, cubic schedule 0 -> 80% over steps 40..200.
    let mut pruner = Pruner::for_params(PrunerConfig::obert(0.8, 40, 200, 20), &params)?;
    for step in 0..=200 {
        let h = x.matmul(&params[0].1.as_tensor().t()?)?.relu()?;
        let loss = (h.matmul(&params[1].1.as_tensor().t()?)? - &y)?.sqr()?.mean_all()?;
        let grads = loss.backward()?;
        pruner.observe(&params, &grads)?; // the last m gradients
        for (_, v) in &params {
            v.set(&(v.as_tensor() - (grads.get(v.as_tensor()).ok_or("no gradient")? * 0.05)?)?)?;
        }
        pruner.masks().apply(&params)?; // what sprig-train's mask-aware optimizer does
        if pruner.step(step, &params, &mut Inputs::none())?.is_some() {
            let up = pruner.obs_update(&params)?.ok_or("no OBS update pending")?; // δw, then w_Q = 0
            pruner.masks().check_pruned_zero(&params)?; // or opt.set_masks(pruner.masks())
            println!("step {step}: sparsity {:.3}, pruned {}, ρ_Q {:.2e}, loss {:.4}", pruner.sparsity(), up.pruned, up.saliency, loss.to_scalar::<f32>()?);
        }
    }
    Ok(())
}
