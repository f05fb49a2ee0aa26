//! The README's Pruner example: gradual magnitude pruning (Zhu & Gupta 2017) of a toy model whose
//! "training" shrinks the weights, then the lottery's IMP with a slower output layer.
use candle_core::{Device, Var};
use sprig_prune::{Allocation, GroupRate, Inputs, Pruner, PrunerConfig, Rewind, RoundRate};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let params: Vec<(String, Var)> = vec![
        ("fc1.weight".into(), Var::randn(0f32, 1.0, (300, 784), &dev)?),
        ("fc2.weight".into(), Var::randn(0f32, 1.0, (10, 300), &dev)?),
    ];
    // GMP: 0 -> 90% between steps 100 and 1000, every 100 steps, one global threshold.
    let mut gmp = Pruner::for_params(PrunerConfig::gmp(0.9, 100, 1000, 100), &params)?;
    for step in 0..=1000 {
        // ... forward, backward, optimizer step ...
        if let Some(masks) = gmp.step(step, &params, &mut Inputs::none())? {
            masks.apply(&params)?; // or opt.set_masks(masks) with sprig-train's optimizers
            println!("step {step}: sparsity {:.3}", masks.sparsity());
        }
    }
    gmp.masks().check_pruned_zero(&params)?;

    // IMP (Frankle & Carbin 2019): hidden layers lose 20% of what remains per round, the output
    // layer 10%, each layer on its own.
    let cfg = PrunerConfig::imp(5, RoundRate::FractionOfRemaining(0.2), Rewind::Init)
        .allocation(Allocation::uniform())
        .group(["fc2.weight"], GroupRate::Round(RoundRate::FractionOfRemaining(0.1)));
    let mut imp = Pruner::for_params(cfg, &params)?;
    for r in 1..=5 {
        // ... train, then prune the trained weights and rewind ...
        let m = imp.round(r, &params, &mut Inputs::none())?;
        println!("round {r}: fc1 {:.3}, fc2 {:.3}", m.get("fc1.weight").map_or(0.0, |m| m.sparsity()), m.get("fc2.weight").map_or(0.0, |m| m.sparsity()));
    }
    Ok(())
}
