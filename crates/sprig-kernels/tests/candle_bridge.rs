//! The candle `SparseLinear` op: outputs and gradients equal the masked-dense reference built
//! from candle's own matmul and autograd.
#![cfg(feature = "candle")]
mod common;
use candle_core::{Device, Tensor, Var};
use common::*;
use proptest::prelude::*;
use sprig_kernels::candle::{Format, SparseLinear};

fn vec_of(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Runs sparse and masked-dense forward/backward; returns the max relative error over
/// (y, dx, d values, d bias).
fn compare(m: usize, n: usize, k: usize, density: f64, empty: bool, format: Format, seed: u64) -> Result<f64, String> {
    let dev = Device::Cpu;
    let mut r = rng(seed);
    let w = randn(&mut r, n * k);
    let mut mask = random_mask(&mut r, n, k, density, empty);
    if let Format::Nm(nn, mm) = format {
        let mut keep = vec![false; n * k];
        for g in 0..n * k / mm {
            for t in 0..nn {
                keep[g * mm + (g + 2 * t) % mm] = true;
            }
        }
        mask = sprig_kernels::Bitmask::from_bools(n, k, &keep).unwrap();
    }
    let x_data = randn(&mut r, m * k);
    let g_data = randn(&mut r, m * n);
    let b_data = randn(&mut r, n);
    let wt = Tensor::from_vec(w.clone(), (n, k), &dev).unwrap();
    let bias = Var::from_vec(b_data.clone(), n, &dev).unwrap();
    let layer = SparseLinear::from_dense(&wt, &mask.to_bools(), Some(bias.as_tensor().clone()), format).map_err(|e| e.to_string())?;
    // The reference zeroes exactly what the sparse layer does not store.
    let pattern = layer.pattern().pattern_mask();
    let mut w_masked = layer.dense_weight().map(|t| vec_of(&t)).map_err(|e| e.to_string())?;
    pattern.apply(&mut w_masked).unwrap();

    let x = Var::from_vec(x_data.clone(), (m, k), &dev).unwrap();
    let gy = Tensor::from_vec(g_data, (m, n), &dev).unwrap();
    let y = layer.forward(x.as_tensor()).map_err(|e| e.to_string())?;
    let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().map_err(|e| e.to_string())?;
    let dx = grads.get(x.as_tensor()).ok_or("no dx")?;
    let dv = grads.get(layer.values().as_tensor()).ok_or("no d values")?;
    let db = grads.get(bias.as_tensor()).ok_or("no d bias")?;

    let xr = Var::from_vec(x_data, (m, k), &dev).unwrap();
    let wr = Var::from_vec(w_masked, (n, k), &dev).unwrap();
    let br = Var::from_vec(b_data, n, &dev).unwrap();
    let yr = xr.as_tensor().matmul(&wr.as_tensor().t().unwrap()).unwrap().broadcast_add(br.as_tensor()).unwrap();
    let gr = (&yr * &gy).unwrap().sum_all().unwrap().backward().unwrap();
    let dxr = gr.get(xr.as_tensor()).unwrap();
    let dwr = vec_of(gr.get(wr.as_tensor()).unwrap());
    let dbr = gr.get(br.as_tensor()).unwrap();
    // Reference gradient of the stored values: dW at the stored positions, in storage order.
    let dv_dense = layer.pattern().to_dense_with(&vec_of(dv)).unwrap();
    let mut dwr_masked = dwr;
    pattern.apply(&mut dwr_masked).unwrap();

    let errs = [
        rel_err(&vec_of(&y), &vec_of(&yr)),
        rel_err(&vec_of(dx), &vec_of(dxr)),
        rel_err(&dv_dense, &dwr_masked),
        rel_err(&vec_of(db), &vec_of(dbr)),
    ];
    Ok(errs.into_iter().fold(0.0, f64::max))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn csr_op_matches_masked_dense(m in prop_oneof![Just(1usize), 1usize..90], n in 1usize..40, k in 1usize..60,
                                   d in prop_oneof![Just(1.0f64), Just(0.0), 0.0f64..1.0],
                                   empty in any::<bool>(), seed in any::<u64>()) {
        let e = compare(m, n, k, d, empty, Format::Csr, seed).map_err(TestCaseError::fail)?;
        prop_assert!(e <= 1e-5, "rel err {e}");
    }
}

#[test]
fn block_and_nm_ops_match_masked_dense() {
    for (i, (m, n, k, f)) in [
        (1usize, 8usize, 12usize, Format::Bsr(4, 1)),
        (37, 16, 24, Format::Bsr(4, 1)),
        (70, 16, 32, Format::Bsr(8, 1)),
        (5, 6, 16, Format::Bsr(1, 4)),
        (33, 8, 16, Format::Bsr(4, 4)),
        (20, 10, 16, Format::Nm(2, 4)),
        (3, 7, 24, Format::Nm(4, 8)),
    ]
    .into_iter()
    .enumerate()
    {
        let e = compare(m, n, k, 0.3, false, f, i as u64).unwrap();
        assert!(e <= 1e-5, "{f:?} m={m}: rel err {e}");
    }
}

#[test]
fn batched_input_and_bad_input() {
    let dev = Device::Cpu;
    let w = Tensor::from_vec((0..12).map(|v| v as f32).collect::<Vec<_>>(), (3, 4), &dev).unwrap();
    let mask = Tensor::from_vec(vec![1u8, 0, 1, 0, 0, 0, 0, 0, 1, 1, 1, 1], (3, 4), &dev).unwrap();
    let layer = SparseLinear::from_dense_mask_tensor(&w, &mask, None, Format::Csr).unwrap();
    assert_eq!(layer.pattern().nnz(), 6);
    let x = Tensor::ones((2, 5, 4), candle_core::DType::F32, &dev).unwrap();
    let y = layer.forward(&x).unwrap();
    assert_eq!(y.dims(), &[2, 5, 3]);
    assert_eq!(y.get(1).unwrap().get(4).unwrap().to_vec1::<f32>().unwrap(), vec![2.0, 0.0, 38.0]);
    let bad = Tensor::ones((2, 5), candle_core::DType::F32, &dev).unwrap();
    let e = layer.forward(&bad).unwrap_err().to_string();
    assert!(e.contains("last dimension must be 4"), "{e}");
    assert!(SparseLinear::from_dense(&w, &[true; 5], None, Format::Csr).is_err());
}
