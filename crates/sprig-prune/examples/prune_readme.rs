use candle_core::{DType, Device, Var};
use sprig_prune::{checkpoint, criteria, prune, Allocation, Granularity, Selector};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dev = Device::Cpu;
    let params: Vec<(String, Var)> = vec![
        ("fc1.weight".into(), Var::randn(0f32, 1.0, (300, 784), &dev)?),
        ("fc1.bias".into(), Var::zeros(300, DType::F32, &dev)?),
        ("fc2.weight".into(), Var::randn(0f32, 1.0, (10, 300), &dev)?),
    ];
    let prunable = Selector::weights().select(&params); // rank >= 2: skips the bias
    let shapes: Vec<_> = prunable.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
    let scores = criteria::magnitude(&prunable)?;
    let masks = prune(&scores, &shapes, 0.9, Granularity::Unstructured, &Allocation::erk(), None)?;
    masks.apply(&params)?; // zero the pruned weights
    let all: Vec<_> = params.iter().map(|(n, v)| (n.clone(), v.dims().to_vec())).collect();
    print!("{}", masks.report(&all)?.table());
    let tensors: Vec<_> = params.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
    checkpoint::save(&std::env::temp_dir().join("sprig-example-ckpt"), &tensors, &masks, &Default::default())?;
    Ok(())
}
