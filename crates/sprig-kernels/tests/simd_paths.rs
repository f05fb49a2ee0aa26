//! The lower instruction-set paths (portable arrays, and AVX2 on an AVX-512 machine), forced on,
//! against the references; the best path is checked by the other tests.
mod common;
use common::*;
use sprig_kernels::{Bsr, Csr, NmSparse, SimdLevel};

/// The forced level is process-wide: tests that set it take turns.
static FORCE: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn lower_simd_paths_match_reference() {
    let _turn = FORCE.lock().unwrap_or_else(|e| e.into_inner());
    let best = SimdLevel::detected();
    for level in [SimdLevel::Portable, SimdLevel::Avx2, SimdLevel::Avx512] {
        if level > best {
            continue;
        }
        sprig_kernels::force_simd(Some(level));
        assert_eq!(sprig_kernels::simd_level(), level.name());
        check_all().unwrap_or_else(|e| panic!("{}: {e}", level.name()));
    }
    sprig_kernels::force_simd(None);
}

#[test]
fn simd_env_values_parse() {
    assert_eq!(SimdLevel::parse("AVX2"), Some(SimdLevel::Avx2));
    assert_eq!(SimdLevel::parse("avx512"), Some(SimdLevel::Avx512));
    assert_eq!(SimdLevel::parse("portable"), Some(SimdLevel::Portable));
    assert_eq!(SimdLevel::parse("sse9"), None);
}

/// Every format at batch sizes that take each panel width (1-3: dot products; 5: 8 lanes;
/// 9: 16; 17: 32; 65 and 70: 64) against the references.
fn check_all() -> Result<(), String> {
    let shapes = [(1usize, 7usize, 33usize), (3, 16, 40), (5, 16, 48), (9, 24, 40), (17, 24, 64), (70, 9, 1200), (65, 8, 2500)];
    for (i, &(m, n, k)) in shapes.iter().enumerate() {
        let mut r = rng(i as u64);
        let w = randn(&mut r, n * k);
        let mask = random_mask(&mut r, n, k, 0.3, true);
        check_against_reference(&Csr::from_dense(&w, n, k, &mask).unwrap(), m, 1)?;
        if n % 4 == 0 {
            check_against_reference(&Bsr::from_dense(&w, n, k, (4, 1), &mask).unwrap(), m, 2)?;
            check_against_reference(&Bsr::from_dense(&w, n, k, (2, 2), &mask).unwrap(), m, 5)?;
        }
        if k % 4 == 0 {
            let mut keep = vec![false; n * k];
            for g in 0..n * k / 4 { keep[g * 4] = true; keep[g * 4 + 3] = true; }
            let mk = sprig_kernels::Bitmask::from_bools(n, k, &keep).unwrap();
            check_against_reference(&NmSparse::from_dense(&w, n, k, (2, 4), &mk).unwrap(), m, 3)?;
        }
        if k % 8 == 0 {
            let mut keep = vec![false; n * k];
            for g in 0..n * k / 8 { for o in [1, 2, 5, 7] { keep[g * 8 + o] = true; } }
            let mk = sprig_kernels::Bitmask::from_bools(n, k, &keep).unwrap();
            check_against_reference(&NmSparse::from_dense(&w, n, k, (4, 8), &mk).unwrap(), m, 4)?;
        }
    }
    Ok(())
}

/// The fused ops (GELU, softmax, add + LayerNorm, attention) on every path this CPU has agree
/// with the portable path.
#[test]
fn fused_ops_agree_across_simd_paths() {
    let _turn = FORCE.lock().unwrap_or_else(|e| e.into_inner());
    use sprig_kernels::nn::{attention, layer_norm, math, softmax, AttentionSpec};
    let best = SimdLevel::detected();
    let mut r = rng(11);
    let (b, s, heads, hd) = (2usize, 37usize, 3usize, 32usize);
    let h = heads * hd;
    let x = randn(&mut r, b * s * h);
    let res = randn(&mut r, b * s * h);
    let qkv = randn(&mut r, b * s * 3 * h);
    let gamma = randn(&mut r, h);
    let beta = randn(&mut r, h);
    let mut key_bias = vec![0f32; b * s];
    key_bias[s - 3..s].fill(-1e4);
    let spec = AttentionSpec { batch: b, seq: s, heads, head_dim: hd, scale: 0.17, key_bias, dropout: None };
    let run = || {
        let mut g = vec![0f32; x.len()];
        math::gelu_slice(&x, &mut g);
        let mut gb = res.clone();
        math::gelu_backward_inplace(&x, &mut gb);
        let mut sm = x[..s].to_vec();
        softmax::scaled_softmax_row(&mut sm, 0.3, &res[..s]);
        let mut ln = vec![0f32; x.len()];
        layer_norm::forward(&x, Some(&res), &gamma, &beta, 1e-12, &mut ln);
        let mut ctx = vec![0f32; b * s * h];
        attention::forward(&qkv, &spec, &mut ctx, None);
        [g, gb, sm, ln, ctx]
    };
    sprig_kernels::force_simd(Some(SimdLevel::Portable));
    let want = run();
    for level in [SimdLevel::Avx2, SimdLevel::Avx512] {
        if level > best {
            continue;
        }
        sprig_kernels::force_simd(Some(level));
        for (i, (got, want)) in run().iter().zip(&want).enumerate() {
            let e = rel_err(got, want);
            assert!(e <= 1e-5, "{}: op {i} rel err {e}", level.name());
        }
    }
    sprig_kernels::force_simd(None);
}
