//! LayerNorm (Ba et al. 2016) of a residual sum, `y = LN(a + r)·γ + β` over rows of length `h`,
//! forward and backward, parallel over rows. The backward recomputes the row statistics from
//! `a + r` instead of keeping them.
use rayon::prelude::*;

const ROWS_PER_TASK: usize = 32;

#[inline(always)]
fn row_stats(z: &[f32], eps: f32) -> (f32, f32) {
    let h = z.len() as f32;
    let mean = z.iter().sum::<f32>() / h;
    let var = z.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h;
    (mean, 1.0 / (var + eps).sqrt())
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
            let (mean, rstd) = row_stats(yr, eps);
            for ((y, g), b) in yr.iter_mut().zip(gamma).zip(beta) {
                *y = (*y - mean) * rstd * g + b;
            }
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
                let (mean, rstd) = row_stats(&xhat, eps);
                let dyr = &dy[off..off + h];
                let (mut s1, mut s2) = (0f32, 0f32);
                for j in 0..h {
                    xhat[j] = (xhat[j] - mean) * rstd;
                    let g = dyr[j] * gamma[j];
                    s1 += g;
                    s2 += g * xhat[j];
                    dg[j] += dyr[j] * xhat[j];
                    db[j] += dyr[j];
                }
                let (m1, m2) = (s1 / h as f32, s2 / h as f32);
                for j in 0..h {
                    dzr[j] = rstd * (dyr[j] * gamma[j] - m1 - xhat[j] * m2);
                }
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
