//! int8 inference ([`QuantLinear`]): against an exact integer emulation of the quantization, against
//! the f32 product within the quantization error, on every path the CPU has (AVX-512 VNNI, AVX2,
//! portable; lower ones forced), and its errors.
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sprig_kernels::{QuantLinear, SimdLevel};

/// The forced level is process-wide: tests that set it take turns.
static FORCE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn sparse_weight(r: &mut ChaCha8Rng, n: usize, k: usize, keep: f64) -> Vec<f32> {
    (0..n * k).map(|_| if r.random_bool(keep) { r.random_range(-1.0f32..1.0) } else { 0.0 }).collect()
}

/// `s_x·s_w·Σ x_q·w_q + b` computed in f64 from the same rounding rules as the kernel.
fn emulate(w: &[f32], x: &[f32], m: usize, n: usize, k: usize, bias: &[f32]) -> Vec<f32> {
    let q = |v: &[f32]| {
        let amax = v.iter().fold(0f32, |a, x| a.max(x.abs()));
        let s = if amax > 0.0 { amax / 127.0 } else { 0.0 };
        let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
        (s, v.iter().map(|x| (x * inv).round_ties_even() as i64).collect::<Vec<_>>())
    };
    let wq: Vec<(f32, Vec<i64>)> = (0..n)
        .map(|i| {
            let row = &w[i * k..(i + 1) * k];
            let amax = row.iter().fold(0f32, |a, x| a.max(x.abs()));
            let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            (s, row.iter().map(|x| (x / s).round_ties_even().clamp(-127.0, 127.0) as i64).collect())
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for t in 0..m {
        let (sx, xq) = q(&x[t * k..(t + 1) * k]);
        for (i, (sw, wr)) in wq.iter().enumerate() {
            let dot: i64 = xq.iter().zip(wr).map(|(a, b)| a * b).sum();
            y[t * n + i] = (dot as f64 * sx as f64 * *sw as f64 + bias[i] as f64) as f32;
        }
    }
    y
}

fn f32_product(w: &[f32], x: &[f32], m: usize, n: usize, k: usize, bias: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for t in 0..m {
        for i in 0..n {
            y[t * n + i] = bias[i] + (0..k).map(|j| x[t * k + j] * w[i * k + j]).sum::<f32>();
        }
    }
    y
}

/// Every panel width (m = 1, 15, 16, 33, 64, 130: 1 to 4 vectors and partial panels), row counts
/// that leave partial 16-row tiles, and a K that is not a multiple of 4.
fn check_path() -> Result<(), String> {
    let shapes = [(1usize, 16usize, 64usize), (15, 50, 30), (16, 16, 384), (33, 40, 97), (64, 48, 128), (130, 37, 200)];
    for (si, &(m, n, k)) in shapes.iter().enumerate() {
        let mut r = ChaCha8Rng::seed_from_u64(si as u64);
        let w = sparse_weight(&mut r, n, k, 0.1 + 0.2 * (si % 3) as f64);
        let x: Vec<f32> = (0..m * k).map(|_| r.random_range(-2.0f32..2.0)).collect();
        let bias: Vec<f32> = (0..n).map(|_| r.random_range(-0.5f32..0.5)).collect();
        let q = QuantLinear::from_dense(&w, n, k).map_err(|e| e.to_string())?;
        for gelu in [false, true] {
            let mut y = vec![f32::NAN; m * n];
            q.forward(&x, m, Some(&bias), gelu, &mut y).map_err(|e| e.to_string())?;
            let mut want = emulate(&w, &x, m, n, k, &bias);
            if gelu {
                for v in want.iter_mut() {
                    *v = 0.5 * *v * (1.0 + libm_erf(*v as f64 / std::f64::consts::SQRT_2) as f32);
                }
            }
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                if (a - b).abs() > 1e-4 * (1.0 + b.abs()) {
                    return Err(format!("m {m} n {n} k {k} gelu {gelu}: y[{i}] = {a}, emulation {b}"));
                }
            }
            if !gelu {
                // The quantization error itself: within 2% of the output's RMS.
                let exact = f32_product(&w, &x, m, n, k, &bias);
                let rms = (exact.iter().map(|v| v * v).sum::<f32>() / exact.len() as f32).sqrt();
                let err = (y.iter().zip(&exact).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / exact.len() as f32).sqrt();
                if err > 0.02 * rms {
                    return Err(format!("m {m} n {n} k {k}: int8 RMS error {err} against output RMS {rms}"));
                }
            }
        }
    }
    Ok(())
}

/// erf by Abramowitz-Stegun 7.1.26 is too coarse for 1e-4; a series/continued fraction is enough.
fn libm_erf(x: f64) -> f64 {
    // erf via the complementary error function's continued fraction for |x| > 3, Taylor below.
    if x.abs() < 3.0 {
        let mut sum = x;
        let mut term = x;
        for n in 1..200 {
            term *= -x * x / n as f64;
            let add = term / (2 * n + 1) as f64;
            sum += add;
            if add.abs() < 1e-17 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        x.signum()
    }
}

#[test]
fn int8_matches_emulation_and_f32_on_every_path() {
    let _turn = FORCE.lock().unwrap_or_else(|e| e.into_inner());
    let best = SimdLevel::detected();
    let mut seen = Vec::new();
    for level in [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512] {
        if level > best {
            continue;
        }
        sprig_kernels::force_simd(Some(level));
        let path = sprig_kernels::int8_path();
        let r = check_path();
        sprig_kernels::force_simd(None);
        r.unwrap_or_else(|e| panic!("{path}: {e}"));
        seen.push(path);
    }
    assert!(seen.contains(&"portable"), "{seen:?}");
    if best >= SimdLevel::Avx2 {
        assert!(seen.contains(&"avx2"), "{seen:?}");
    }
}

#[test]
fn int8_keeps_the_sparsity_and_zero_tokens() {
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let (n, k) = (96, 384);
    let w = sparse_weight(&mut r, n, k, 0.1);
    let q = QuantLinear::from_dense(&w, n, k).unwrap();
    let nz = w.iter().filter(|v| **v != 0.0).count();
    assert_eq!(q.nonzero_f32(), nz);
    assert!(q.nonzero() <= nz && q.nonzero() as f64 >= 0.95 * nz as f64, "{} of {nz}", q.nonzero());
    // ~1 - 0.9^4 of the quads hold a weight.
    let share = q.quads() as f64 / (n * k / 4) as f64;
    assert!((0.28..0.40).contains(&share), "quad share {share}");
    let d = q.dequantized();
    assert!(w.iter().zip(&d).all(|(a, b)| (*a == 0.0) <= (*b == 0.0)), "a pruned weight came back");
    // An all-zero token gives exactly the bias.
    let x = vec![0f32; 2 * k];
    let bias: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let mut y = vec![f32::NAN; 2 * n];
    q.forward(&x, 2, Some(&bias), false, &mut y).unwrap();
    assert!(y.chunks(n).all(|row| row == bias.as_slice()));
}

#[test]
fn int8_errors_name_the_value() {
    let e = QuantLinear::from_dense(&[1.0, f32::NAN, 0.0, 0.0], 2, 2).unwrap_err().to_string();
    assert!(e.contains("(0, 1)") && e.contains("NaN"), "{e}");
    assert!(QuantLinear::from_dense(&[1.0; 3], 2, 2).unwrap_err().to_string().contains("expected 4"));
    let q = QuantLinear::from_dense(&[1.0; 4], 2, 2).unwrap();
    let mut y = vec![0f32; 2];
    assert!(q.forward(&[1.0; 3], 1, None, false, &mut y).unwrap_err().to_string().contains("x (m*cols)"));
    let mut y3 = vec![0f32; 3];
    assert!(q.forward(&[1.0; 2], 1, None, false, &mut y3).unwrap_err().to_string().contains("y (m*rows)"));
    assert!(q.forward(&[1.0; 2], 1, Some(&[0.0]), false, &mut y).unwrap_err().to_string().contains("bias"));
    // A NaN activation gives NaN outputs, as f32 would.
    q.forward(&[f32::NAN, 1.0], 1, None, false, &mut y).unwrap();
    assert!(y.iter().all(|v| v.is_nan()));
}

/// The int8 attention: on a VNNI CPU, against its scalar emulation (the same quantization and
/// rounding: integer sums exact, so only the last float roundings may differ) and against the
/// f32 attention within the quantization error; odd lengths, padded keys, head widths 16-64.
#[test]
fn int8_attention_matches_its_emulation_and_the_f32_attention() {
    use sprig_kernels::nn::{attention, AttentionSpec};
    use sprig_kernels::quant::attention as int8;
    let _turn = FORCE.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = ChaCha8Rng::seed_from_u64(21);
    for (b, s, heads, d) in [(2usize, 37usize, 2usize, 32usize), (1, 128, 3, 16), (2, 20, 1, 64), (1, 1, 1, 32)] {
        let hid = heads * d;
        let qkv: Vec<f32> = (0..b * s * 3 * hid).map(|_| r.random_range(-2.0f32..2.0)).collect();
        let key_bias: Vec<f32> = (0..b * s).map(|i| if i % s >= s - (i / s) * 3 && i % s > 0 { -1e4 } else { 0.0 }).collect();
        let a = AttentionSpec { batch: b, seq: s, heads, head_dim: d, scale: 1.0 / (d as f32).sqrt(), key_bias, dropout: None };
        let (mut got, mut want, mut f32_ctx) = (vec![f32::NAN; b * s * hid], vec![0f32; b * s * hid], vec![0f32; b * s * hid]);
        int8::forward(&qkv, &a, &mut got);
        attention::forward(&qkv, &a, &mut f32_ctx, None);
        let err = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        if int8::attention_path(&a) == "int8-vnni" {
            int8::reference(&qkv, &a, &mut want);
            assert!(err(&got, &want) < 1e-5, "{b}x{s}x{heads}x{d}: VNNI vs emulation {}", err(&got, &want));
            // V in [-2, 2]: one code step is 2/127; the probabilities' 1/255 steps add less.
            let e = err(&got, &f32_ctx);
            assert!(e < 0.06, "{b}x{s}x{heads}x{d}: int8 vs f32 attention {e}");
            assert!(e > 0.0, "the int8 path ran");
        } else {
            assert!(got == f32_ctx, "without VNNI the f32 attention runs");
        }
    }
    let mut a = AttentionSpec { batch: 1, seq: 4, heads: 1, head_dim: 32, scale: 0.2, key_bias: vec![0.0; 4], dropout: None };
    a.dropout = Some(sprig_kernels::nn::DropoutSpec { p: 0.1, seed: 1 });
    assert_eq!(int8::attention_path(&a), "f32", "dropout runs the f32 attention");
}

/// The int8 attention's `2^u`: within 6e-5 of the exact value on [-125, 0], exactly 0 below (never
/// subnormal), NaN kept.
#[test]
fn int8_attention_exp2_is_close_and_never_subnormal() {
    use sprig_kernels::quant::attention::exp2;
    let mut worst = 0f64;
    for i in 0..124_999 {
        let u = -(i as f32) * 1e-3;
        let (got, want) = (exp2(u) as f64, (u as f64).exp2());
        worst = worst.max((got - want).abs() / want);
    }
    assert!(worst < 6e-5, "worst relative error {worst}");
    assert!(exp2(-125.5) == 0.0 && exp2(-1e4) == 0.0 && exp2(-125.0) >= f32::MIN_POSITIVE);
    assert!(exp2(f32::NAN).is_nan());
}
