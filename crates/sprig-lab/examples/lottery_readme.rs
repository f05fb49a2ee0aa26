//! The README's example: a two-round lottery ticket on 3000 Fashion-MNIST images.
use candle_core::Device;
use sprig_lab::imp::Control;
use sprig_lab::lottery::{run_lottery, LotteryConfig};
use sprig_prune::Rewind;
use sprig_train::vision::{Arch, OptimChoice, TrainConfig};

fn main() -> anyhow::Result<()> {
    let mut data = sprig_data::load_image_task("fashion-mnist", &sprig_data::sprig_home(), 42)?; // scripts/fetch-assets
    let hw = data.height * data.width;
    data.train.labels.truncate(3000);
    data.train.images.truncate(3000 * hw);
    let cfg = LotteryConfig {
        arch: Arch::Lenet300,
        dataset: "fashion-mnist".into(),
        rounds: 2,
        rate: 0.5,
        output_rate: 0.25,
        rewind: Rewind::Step(10),
        seeds: vec![0],
        train: TrainConfig { epochs: 1, batch_size: 100, optim: OptimChoice::Adam { lr: 1.2e-3 }, data_seed: 0, snapshot_step: None },
        controls: vec![Control::RandomMask, Control::Reinit],
        control_rounds: vec![],
    };
    let out = std::env::temp_dir().join("sprig-lottery-readme");
    for row in run_lottery(&cfg, &data, &out, &Device::Cpu)? {
        println!("{row:?}");
    }
    println!("plot: {}", out.join("lottery.svg").display());
    Ok(())
}
