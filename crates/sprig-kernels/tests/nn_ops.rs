//! The fused ops of `sprig_kernels::nn::ops` against candle's reference ops (outputs and every
//! gradient) and against finite differences.
use candle_core::{DType, Device, Result, Tensor, Var, D};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sprig_kernels::nn::ops::{add_layer_norm, attention, linear, softmax_cross_entropy};
use sprig_kernels::nn::{Act, AttentionSpec, DropoutSpec};

fn rand_t(shape: &[usize], rng: &mut ChaCha8Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn vars(ts: &[Tensor]) -> Vec<Var> {
    ts.iter().map(|t| Var::from_tensor(t).unwrap()).collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// Output and gradients of `Σ f(inputs) ⊙ r` for a fixed random `r`.
fn eval(f: &dyn Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], seed: u64) -> (Vec<f32>, Vec<Vec<f32>>) {
    let vs = vars(inputs);
    let ts: Vec<Tensor> = vs.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&ts).unwrap();
    let r = rand_t(y.dims(), &mut ChaCha8Rng::seed_from_u64(seed));
    let loss = (y.clone() * r).unwrap().sum_all().unwrap();
    let g = loss.backward().unwrap();
    (flat(&y), vs.iter().map(|v| flat(g.get(v).expect("gradient"))).collect())
}

fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
    // A NaN anywhere fails (f32::max would skip it): outputs start NaN-filled where a test checks
    // that every element is written.
    assert!(a.iter().zip(b).all(|(x, y)| x.is_nan() == y.is_nan()), "{what}: NaN where the reference has none");
    let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst <= tol * scale, "{what}: max abs diff {worst} vs scale {scale}");
}

fn compare(what: &str, fused: &dyn Fn(&[Tensor]) -> Result<Tensor>, reference: &dyn Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor], tol: f32) {
    let (ya, ga) = eval(fused, inputs, 99);
    let (yb, gb) = eval(reference, inputs, 99);
    assert_close(&format!("{what} output"), &ya, &yb, tol);
    for (i, (a, b)) in ga.iter().zip(&gb).enumerate() {
        assert_close(&format!("{what} grad of input {i}"), a, b, tol);
    }
}

/// Central finite differences of `Σ f ⊙ r` at a few coordinates of each input (f64 accumulation).
fn finite_diff(what: &str, f: &dyn Fn(&[Tensor]) -> Result<Tensor>, inputs: &[Tensor]) {
    let (_, grads) = eval(f, inputs, 7);
    let loss = |ts: &[Tensor]| -> f64 {
        let y = f(ts).unwrap();
        let r = rand_t(y.dims(), &mut ChaCha8Rng::seed_from_u64(7));
        flat(&y).iter().zip(flat(&r)).map(|(a, b)| *a as f64 * b as f64).sum()
    };
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (i, x) in inputs.iter().enumerate() {
        let base = flat(x);
        for _ in 0..4 {
            let j = rng.random_range(0..base.len());
            let h = 1e-2f32;
            let mut plus = base.clone();
            plus[j] += h;
            let mut minus = base.clone();
            minus[j] -= h;
            let mut tp = inputs.to_vec();
            tp[i] = Tensor::from_vec(plus, x.dims(), &Device::Cpu).unwrap();
            let mut tm = inputs.to_vec();
            tm[i] = Tensor::from_vec(minus, x.dims(), &Device::Cpu).unwrap();
            let fd = (loss(&tp) - loss(&tm)) / (2.0 * h as f64);
            let g = grads[i][j] as f64;
            assert!((fd - g).abs() <= 2e-2 * (1.0 + g.abs()), "{what}: input {i}[{j}] analytic {g} vs finite difference {fd}");
        }
    }
}

fn ref_linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (n, k) = w.dims2()?;
    let rows = x.elem_count() / k;
    let mut od = x.dims().to_vec();
    *od.last_mut().unwrap() = n;
    x.reshape((rows, k))?.matmul(&w.t()?)?.broadcast_add(b)?.reshape(od)
}

/// A 0/scale mask tensor equal to what `d` applies to a buffer of `shape`.
fn dropout_mask(d: &DropoutSpec, shape: &[usize]) -> Tensor {
    let mut m = vec![1f32; shape.iter().product()];
    d.apply(&mut m, 0);
    Tensor::from_vec(m, shape, &Device::Cpu).unwrap()
}

#[test]
fn linear_matches_reference_and_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (m, k, n) in [(1, 5, 3), (7, 13, 11), (33, 24, 40)] {
        let inputs = [rand_t(&[m, k], &mut rng), rand_t(&[n, k], &mut rng), rand_t(&[n], &mut rng)];
        let d = DropoutSpec { p: 0.25, seed: 5 };
        let drop = dropout_mask(&d, &[m, n]);
        compare("linear", &|t| linear(&t[0], &t[1], &t[2], Act::Identity, None), &|t| ref_linear(&t[0], &t[1], &t[2]), &inputs, 1e-5);
        compare("linear+gelu", &|t| linear(&t[0], &t[1], &t[2], Act::Gelu, None), &|t| ref_linear(&t[0], &t[1], &t[2])?.gelu_erf(), &inputs, 1e-5);
        compare(
            "linear+gelu+dropout",
            &|t| linear(&t[0], &t[1], &t[2], Act::Gelu, Some(d)),
            &|t| ref_linear(&t[0], &t[1], &t[2])?.gelu_erf()?.mul(&drop),
            &inputs,
            1e-5,
        );
        finite_diff("linear+gelu", &|t| linear(&t[0], &t[1], &t[2], Act::Gelu, None), &inputs);
    }
    // 3-d input
    let inputs = [rand_t(&[2, 3, 8], &mut rng), rand_t(&[5, 8], &mut rng), rand_t(&[5], &mut rng)];
    compare("linear 3d", &|t| linear(&t[0], &t[1], &t[2], Act::Identity, None), &|t| ref_linear(&t[0], &t[1], &t[2]), &inputs, 1e-5);
}

fn ref_layer_norm(z: &Tensor, gb: &Tensor, eps: f64) -> Result<Tensor> {
    let h = gb.elem_count() / 2;
    let mean = z.mean_keepdim(D::Minus1)?;
    let zc = z.broadcast_sub(&mean)?;
    let var = zc.sqr()?.mean_keepdim(D::Minus1)?;
    let zn = zc.broadcast_div(&(var + eps)?.sqrt()?)?;
    zn.broadcast_mul(&gb.narrow(0, 0, h)?)?.broadcast_add(&gb.narrow(0, h, h)?)
}

#[test]
fn add_layer_norm_matches_reference_and_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (rows, h) in [(1, 4), (5, 17), (70, 32)] {
        let inputs = [rand_t(&[rows, h], &mut rng), rand_t(&[rows, h], &mut rng), rand_t(&[2 * h], &mut rng)];
        compare("add_layer_norm", &|t| add_layer_norm(&t[0], &t[1], &t[2], 1e-12, None), &|t| ref_layer_norm(&(&t[0] + &t[1])?, &t[2], 1e-12), &inputs, 2e-5);
        let d = DropoutSpec { p: 0.1, seed: 9 };
        let drop = dropout_mask(&d, &[rows, h]);
        compare(
            "add_layer_norm+dropout",
            &|t| add_layer_norm(&t[0], &t[1], &t[2], 1e-5, Some(d)),
            &|t| ref_layer_norm(&(&t[0] + &t[1])?, &t[2], 1e-5)?.mul(&drop),
            &inputs,
            2e-5,
        );
        finite_diff("add_layer_norm", &|t| add_layer_norm(&t[0], &t[1], &t[2], 1e-5, None), &inputs);
        // Every element written (the candle op hands it an uninitialised buffer).
        let (a, r, gb) = (flat(&inputs[0]), flat(&inputs[1]), flat(&inputs[2]));
        let mut y = vec![f32::NAN; rows * h];
        sprig_kernels::nn::layer_norm::forward(&a, Some(&r), &gb[..h], &gb[h..], 1e-5, &mut y);
        let (want, _) = eval(&|t| add_layer_norm(&t[0], &t[1], &t[2], 1e-5, None), &inputs, 0);
        assert_close("layer norm on a NaN-filled buffer", &y, &want, 1e-6);
    }
}

fn ref_attention(qkv: &Tensor, a: &AttentionSpec, drop: Option<&Tensor>) -> Result<Tensor> {
    let (b, s, h, nh, d) = (a.batch, a.seq, a.hidden(), a.heads, a.head_dim);
    let heads = |t: Tensor| t.reshape((b, s, nh, d))?.transpose(1, 2)?.contiguous();
    let q = heads(qkv.narrow(2, 0, h)?)?;
    let k = heads(qkv.narrow(2, h, h)?)?;
    let v = heads(qkv.narrow(2, 2 * h, h)?)?;
    let bias = Tensor::from_vec(a.key_bias.clone(), (b, 1, 1, s), &Device::Cpu)?;
    let scores = (q.matmul(&k.t()?)? * a.scale as f64)?.broadcast_add(&bias)?;
    let m = scores.max_keepdim(D::Minus1)?;
    let e = scores.broadcast_sub(&m)?.exp()?;
    let mut p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    if let Some(dm) = drop {
        p = p.mul(dm)?;
    }
    p.matmul(&v)?.transpose(1, 2)?.reshape((b, s, h))
}

#[test]
fn attention_matches_reference_and_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (b, s, nh, d) in [(1, 1, 1, 4), (2, 5, 3, 4), (3, 17, 2, 8), (1, 38, 2, 32)] {
        let key_bias: Vec<f32> = (0..b * s).map(|i| if i % s >= s - (i / s) { -1e4 } else { 0.0 }).collect();
        let mut spec = AttentionSpec { batch: b, seq: s, heads: nh, head_dim: d, scale: 1.0 / (d as f32).sqrt(), key_bias, dropout: None };
        let inputs = [rand_t(&[b, s, 3 * nh * d], &mut rng)];
        let sp = spec.clone();
        compare("attention", &|t| attention(&t[0], sp.clone()), &|t| ref_attention(&t[0], &sp, None), &inputs, 2e-5);
        finite_diff("attention", &|t| attention(&t[0], sp.clone()), &inputs);
        spec.dropout = Some(DropoutSpec { p: 0.2, seed: 11 });
        let drop = dropout_mask(spec.dropout.as_ref().unwrap(), &[b, nh, s, s]);
        let sp = spec.clone();
        compare("attention+dropout", &|t| attention(&t[0], sp.clone()), &|t| ref_attention(&t[0], &sp, Some(&drop)), &inputs, 2e-5);
        // The backward without kept probabilities (recomputed) gives the same gradient.
        let (_, g_kept) = eval(&|t| attention(&t[0], sp.clone()), &inputs, 5);
        // NaN-filled outputs: forward and backward must write every element (the candle ops hand
        // them uninitialised buffers).
        let mut out = vec![f32::NAN; b * s * nh * d];
        let q = flat(&inputs[0]);
        sprig_kernels::nn::attention::forward(&q, &sp, &mut out, None);
        let (fwd, _) = eval(&|t| attention(&t[0], sp.clone()), &inputs, 5);
        assert_close("attention forward on a NaN-filled buffer", &out, &fwd, 1e-6);
        let mut probs = vec![f32::NAN; sp.probs_len()];
        sprig_kernels::nn::attention::forward(&q, &sp, &mut out, Some(&mut probs));
        assert!(probs.iter().all(|p| p.is_finite()), "attention probabilities: every element written");
        let r = flat(&rand_t(&[b, s, nh * d], &mut ChaCha8Rng::seed_from_u64(5)));
        let mut dq = vec![f32::NAN; q.len()];
        sprig_kernels::nn::attention::backward(&q, &sp, None, &r, &mut dq);
        assert_close("attention recomputed backward", &dq, &g_kept[0], 1e-6);
    }
}

#[test]
fn softmax_cross_entropy_matches_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let logits = rand_t(&[6, 3], &mut rng).affine(4.0, 0.0).unwrap();
    let labels = [0u32, 2, 1, 1, 0, 2];
    let lt = Tensor::new(&labels, &Device::Cpu).unwrap();
    let reference = |t: &[Tensor]| -> Result<Tensor> {
        let m = t[0].max_keepdim(1)?;
        let lse = t[0].broadcast_sub(&m)?.exp()?.sum_keepdim(1)?.log()?.broadcast_add(&m)?;
        let picked = t[0].gather(&lt.unsqueeze(1)?, 1)?;
        (lse - picked)?.mean_all()
    };
    compare("cross-entropy", &|t| softmax_cross_entropy(&t[0], &labels), &reference, std::slice::from_ref(&logits), 1e-5);
    assert!(softmax_cross_entropy(&logits, &[0, 1]).is_err());
    assert!(softmax_cross_entropy(&logits, &[0, 1, 2, 3, 0, 1]).is_err());
    let _ = DType::F32;
}

#[test]
fn sparse_linear_matches_masked_dense() {
    use sprig_kernels::candle::{Format, SparseLinear};
    use sprig_kernels::nn::ops::sparse_linear;
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    // m = 1100 spans three row blocks of the sparse path (partial SDDMM sums are added).
    for (m, k, n, density) in [(1, 8, 4, 0.5), (9, 16, 12, 0.1), (20, 32, 24, 0.3), (1100, 8, 12, 0.4)] {
        let keep: Vec<bool> = (0..n * k).map(|_| rng.random::<f64>() < density).collect();
        let w = rand_t(&[n, k], &mut rng);
        let mask = Tensor::from_vec(keep.iter().map(|&b| b as u8 as f32).collect::<Vec<_>>(), (n, k), &Device::Cpu).unwrap();
        let wm = w.mul(&mask).unwrap();
        let (x, b) = (rand_t(&[m, k], &mut rng), rand_t(&[n], &mut rng));
        for format in [Format::Csr, Format::Bsr(4, 1)] {
            let sl = SparseLinear::from_dense(&w, &keep, None, format).unwrap();
            let pattern = sl.pattern().clone();
            let values = sl.values().as_tensor().clone();
            let d = DropoutSpec { p: 0.2, seed: 1 };
            let (ys, gs) = eval(&|t| sparse_linear(&t[0], &t[1], &pattern, &t[2], Act::Gelu, Some(d)), &[x.clone(), values, b.clone()], 4);
            let drop = dropout_mask(&d, &[m, n]);
            let (yd, gd) = eval(&|t| ref_linear(&t[0], &t[1], &t[2])?.gelu_erf()?.mul(&drop), &[x.clone(), wm.clone(), b.clone()], 4);
            assert_close("sparse linear output", &ys, &yd, 1e-5);
            assert_close("sparse linear dx", &gs[0], &gd[0], 1e-5);
            assert_close("sparse linear db", &gs[2], &gd[2], 1e-5);
            if format == Format::Csr {
                let kept: Vec<f32> = gd[1].iter().zip(&keep).filter(|(_, &k)| k).map(|(g, _)| *g).collect();
                assert_close("sparse linear d values", &gs[1], &kept, 1e-5);
            }
        }
    }
}

#[test]
fn conv2d_matches_candle_and_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // LeNet-5's two shapes (small), an odd rectangular one, more images than one gradient group.
    for (b, cin, cout, h, w, k, pad) in [(3, 1, 6, 12, 12, 5, 2), (10, 6, 4, 9, 9, 5, 0), (5, 2, 3, 7, 6, 3, 1)] {
        let inputs = [rand_t(&[b, cin, h, w], &mut rng), rand_t(&[cout, cin, k, k], &mut rng), rand_t(&[cout], &mut rng)];
        let fused = |t: &[Tensor]| sprig_kernels::nn::ops::conv2d(&t[0], &t[1], &t[2], pad);
        let reference = |t: &[Tensor]| t[0].conv2d(&t[1], pad, 1, 1, 1)?.broadcast_add(&t[2].reshape((1, (), 1, 1))?);
        let what = format!("conv2d b{b} {cin}->{cout} {h}x{w} k{k} pad{pad}");
        compare(&what, &fused, &reference, &inputs, 1e-5);
        finite_diff(&what, &fused, &inputs);
    }
    // An untracked input (a first layer's images) gets no gradient; the others still do.
    let (x, w, bias) = (rand_t(&[2, 1, 8, 8], &mut rng), Var::from_tensor(&rand_t(&[3, 1, 5, 5], &mut rng)).unwrap(), Var::zeros(3, DType::F32, &Device::Cpu).unwrap());
    let g = sprig_kernels::nn::ops::conv2d(&x, &w, &bias, 2).unwrap().sum_all().unwrap().backward().unwrap();
    assert!(g.get(&x).is_none() && g.get(&w).is_some() && g.get(&bias).is_some());
    // Bad shapes are errors naming the problem.
    let e = sprig_kernels::nn::ops::conv2d(&x, &rand_t(&[3, 2, 5, 5], &mut rng), &bias, 2).unwrap_err().to_string();
    assert!(e.contains("1 channels, weight expects 2"), "{e}");
    let e = sprig_kernels::nn::ops::conv2d(&x, &rand_t(&[3, 1, 9, 9], &mut rng), &bias, 0).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
}

#[test]
fn relu_max_pool_matches_candle() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for shape in [[2, 3, 8, 8], [3, 2, 7, 5], [1, 1, 3, 4]] {
        let inputs = [rand_t(&shape, &mut rng)];
        let fused = |t: &[Tensor]| sprig_kernels::nn::ops::relu_max_pool2x2(&t[0]);
        // The window maximum by reshape + max: candle's own max_pool2d backward scales the
        // gradient by (maxima in the window)/4, i.e. by 1/4 for a unique maximum (candle 0.11.1;
        // checked below).
        let reference = |t: &[Tensor]| {
            let (b, c, h, w) = t[0].dims4()?;
            let (ho, wo) = (h / 2, w / 2);
            let x = t[0].relu()?.narrow(2, 0, 2 * ho)?.narrow(3, 0, 2 * wo)?.reshape((b, c, ho, 2, wo, 2))?;
            x.permute((0, 1, 2, 4, 3, 5))?.reshape((b, c, ho, wo, 4))?.max(D::Minus1)
        };
        compare(&format!("relu_max_pool2x2 {shape:?}"), &fused, &reference, &inputs, 0.0);
        if shape[2] % 2 == 1 || shape[3] % 2 == 1 {
            continue; // (with odd sizes candle's upsampling misplaces the windows as well)
        }
        let (_, ours) = eval(&fused, &inputs, 5);
        let (_, candle) = eval(&|t: &[Tensor]| t[0].relu()?.max_pool2d(2), &inputs, 5);
        let scaled: Vec<f32> = ours[0].iter().map(|g| g / 4.0).collect();
        assert_close("candle's max_pool2d gradient is 1/4 of the true one", &candle[0], &scaled, 1e-6);
    }
    // A one-row input pools to nothing, without a panic.
    let x = Tensor::zeros((1, 1, 1, 4), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(sprig_kernels::nn::ops::relu_max_pool2x2(&x).unwrap().dims(), &[1, 1, 0, 2]);
    // A NaN input is not hidden by the relu or the max.
    let x = Tensor::from_vec(vec![1.0f32, f32::NAN, -1.0, 2.0], (1, 1, 2, 2), &Device::Cpu).unwrap();
    assert!(flat(&sprig_kernels::nn::ops::relu_max_pool2x2(&x).unwrap())[0].is_nan());
}
