//! LayerNorm (Ba et al. 2016) of a residual sum, `y = LN(a + r)·γ + β` over rows of length `h`,
//! forward and backward, parallel over rows. The backward recomputes the row statistics from
//! `a + r` instead of keeping them.
use super::math::{dot8, simd_dispatch, sum8};
use rayon::prelude::*;

const ROWS_PER_TASK: usize = 32;

#[inline(always)]
fn row_stats(z: &[f32], eps: f32) -> (f32, f32) {
    let h = z.len() as f32;
    let mean = sum8(z) / h;
    // E[z²] − mean² loses digits when |mean| ≫ std; the centred form costs one more pass.
    let mut c = [0f32; 8];
    let mut it = z.chunks_exact(8);
    for ch in &mut it {
        for l in 0..8 {
            let d = ch[l] - mean;
            c[l] = d.mul_add(d, c[l]);
        }
    }
    let var = (c.iter().sum::<f32>() + it.remainder().iter().map(|v| (v - mean) * (v - mean)).sum::<f32>()) / h;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_dispatch! {
    /// One row of the forward, in place on `y` (holding `a + r` on entry).
    fn forward_row(y: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
        let (mean, rstd) = row_stats(y, eps);
        for ((y, g), b) in y.iter_mut().zip(gamma).zip(beta) {
            *y = (*y - mean) * rstd * g + b;
        }
    }
}

simd_dispatch! {
    /// One row of the backward: `xhat` holds `a + r` on entry; accumulates `dg`, `db`.
    fn backward_row(xhat: &mut [f32], dy: &[f32], gamma: &[f32], eps: f32, dz: &mut [f32], dg: &mut [f32], db: &mut [f32]) {
        let h = gamma.len();
        let (mean, rstd) = row_stats(xhat, eps);
        for x in xhat.iter_mut() {
            *x = (*x - mean) * rstd;
        }
        // dz uses Σ dy·γ and Σ dy·γ·x̂; dz is scratch for dy·γ until the last loop.
        for ((z, &d), &g) in dz.iter_mut().zip(dy).zip(gamma) {
            *z = d * g;
        }
        let (m1, m2) = (sum8(dz) / h as f32, dot8(dz, xhat) / h as f32);
        for j in 0..h {
            dg[j] = dy[j].mul_add(xhat[j], dg[j]);
            db[j] += dy[j];
            dz[j] = rstd * (dz[j] - m1 - xhat[j] * m2);
        }
    }
}

/// Forward: `y [rows, h]`; `r` may be absent (plain LayerNorm of `a`).
pub fn forward(a: &[f32], r: Option<&[f32]>, gamma: &[f32], beta: &[f32], eps: f32, y: &mut [f32]) {
    let h = gamma.len();
    y.par_chunks_mut(h * ROWS_PER_TASK).enumerate().for_each(|(c, yc)| {
        let start = c * h * ROWS_PER_TASK;
        for (i, yr) in yc.chunks_mut(h).enumerate() {
            let off = start + i * h;
            let ar = &a[off..off + h];
            match r {
                Some(r) => yr.iter_mut().zip(ar.iter().zip(&r[off..off + h])).for_each(|(y, (a, r))| *y = a + r),
                None => yr.copy_from_slice(ar),
            }
            forward_row(yr, gamma, beta, eps);
        }
    });
}

/// Backward: `dz = d(a + r)` (the same for both inputs), `dgamma`, `dbeta`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    a: &[f32],
    r: Option<&[f32]>,
    gamma: &[f32],
    eps: f32,
    dy: &[f32],
    dz: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let h = gamma.len();
    let partials: Vec<(Vec<f32>, Vec<f32>)> = dz
        .par_chunks_mut(h * ROWS_PER_TASK)
        .enumerate()
        .map(|(c, dzc)| {
            let (mut dg, mut db) = (vec![0f32; h], vec![0f32; h]);
            let mut xhat = vec![0f32; h];
            let start = c * h * ROWS_PER_TASK;
            for (i, dzr) in dzc.chunks_mut(h).enumerate() {
                let off = start + i * h;
                let ar = &a[off..off + h];
                match r {
                    Some(r) => xhat.iter_mut().zip(ar.iter().zip(&r[off..off + h])).for_each(|(x, (a, r))| *x = a + r),
                    None => xhat.copy_from_slice(ar),
                }
                backward_row(&mut xhat, &dy[off..off + h], gamma, eps, dzr, &mut dg, &mut db);
            }
            (dg, db)
        })
        .collect();
    dgamma.fill(0.0);
    dbeta.fill(0.0);
    for (dg, db) in &partials {
        dgamma.iter_mut().zip(dg).for_each(|(a, b)| *a += b);
        dbeta.iter_mut().zip(db).for_each(|(a, b)| *a += b);
    }
}
