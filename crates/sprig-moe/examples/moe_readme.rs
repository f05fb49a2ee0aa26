//! The README's example: `cargo run --release -p sprig-moe --example moe_readme`.
use candle_core::{Device, Tensor};
use sprig_moe::{Capacity, MoeConfig, MoeFfn, RouterConfig};

fn main() -> sprig_moe::Result<()> {
    let dev = Device::Cpu;
    // 8 experts of 192 neurons on a 384-wide model, top-2 routing, capacity factor 1.25.
    let router = RouterConfig { capacity: Capacity::Factor(1.25), ..RouterConfig::top_k(8, 2) };
    let moe = MoeFfn::new(MoeConfig::new(384, 192, router), 42, &dev)?;
    let x = Tensor::randn(0f32, 1.0, (256, 384), &dev)?; // 256 tokens
    let out = moe.forward(&x, None)?;
    println!("y {:?}, aux loss {:.4}", out.y.dims(), out.aux_loss.to_scalar::<f32>()?);
    println!("tokens per expert {:?}", out.stats.tokens_per_expert);
    println!("load CV {:.3}, dropped {:.1}%, router entropy {:.3} nats", out.stats.load_cv, 100.0 * out.stats.dropped_fraction, out.stats.router_entropy);
    // Training: add `out.aux_loss` to the task loss and step an optimizer over `moe.params()`.
    Ok(())
}
