//! 2-D convolution (stride 1, zero padding, one group) by im2col and faer GEMMs, forward and
//! backward, on plain slices; the candle op with backward is [`super::ops::conv2d`].
//!
//! For the small convolutions of LeNet-style models. candle's CPU `conv2d` backward (a direct
//! `conv_transpose2d` for the input gradient and a conv with the output gradient as its kernel
//! for the weight gradient) took ~85% of a LeNet-5 training step here (perf, one thread); this
//! path turns every product into a GEMM on one image's im2col matrix.
//!
//! Layouts are PyTorch's: input `[B, Cin, H, W]`, weight `[Cout, Cin, kh, kw]`, output
//! `[B, Cout, Ho, Wo]` with `Ho = H + 2·pad − kh + 1`. Images run in parallel (rayon), each
//! image's GEMMs sequentially. The weight and bias gradients are summed per fixed group of
//! [`GROUP`] images and the group sums added in order, so they are the same bits whatever the
//! number of threads.
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// Images per partial weight-gradient sum (fixed, so the sum order does not follow the threads).
pub const GROUP: usize = 8;

/// Shape of a stride-1 convolution with zero padding `pad` on every side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dSpec {
    pub cin: usize,
    pub cout: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    pub pad: usize,
}

impl Conv2dSpec {
    /// `(Ho, Wo)`; an error when the kernel is larger than the padded input.
    pub fn out_hw(&self) -> Result<(usize, usize), String> {
        let (ph, pw) = (self.h + 2 * self.pad, self.w + 2 * self.pad);
        if self.kh == 0 || self.kw == 0 || self.kh > ph || self.kw > pw {
            return Err(format!(
                "conv2d: kernel {}x{} does not fit the padded input {ph}x{pw}",
                self.kh, self.kw
            ));
        }
        Ok((ph - self.kh + 1, pw - self.kw + 1))
    }

    /// Rows of one image's im2col matrix, `Cin·kh·kw` (the GEMM's inner dimension).
    pub fn patch(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    fn sizes(&self) -> (usize, usize, usize) {
        let (ho, wo) = self.out_hw().expect("conv2d: shape checked by the caller");
        (self.cin * self.h * self.w, self.cout * ho * wo, ho * wo)
    }

    /// Range of output columns `ox` whose input column `ox + j − pad` lies inside the image.
    fn valid(&self, j: usize, wo: usize) -> (usize, usize) {
        let lo = self.pad.saturating_sub(j).min(wo);
        let hi = (self.w + self.pad).saturating_sub(j).clamp(lo, wo);
        (lo, hi)
    }

    /// Checks every slice length against the shape.
    pub fn check(
        &self,
        batch: usize,
        x: usize,
        weight: usize,
        bias: usize,
        out: usize,
    ) -> Result<(), String> {
        let (ho, wo) = self.out_hw()?;
        for (what, got, want) in [
            ("input", x, batch * self.cin * self.h * self.w),
            ("weight", weight, self.cout * self.patch()),
            ("bias", bias, self.cout),
            ("output", out, batch * self.cout * ho * wo),
        ] {
            if got != want {
                return Err(format!("conv2d: {what} has {got} elements, expected {want} for {self:?} and batch {batch}"));
            }
        }
        Ok(())
    }
}

/// `c = a·b` (`Accum::Replace`) or `c += a·b` (`Accum::Add`), sequential: images already run in parallel.
fn gemm(c: MatMut<f32>, accum: Accum, a: MatRef<f32>, b: MatRef<f32>) {
    faer::linalg::matmul::matmul(c, accum, a, b, 1.0f32, Par::Seq);
}

/// Calls `f(col, src, len)` for every run of one image's im2col matrix that reads the image:
/// `cols[col + t] = x[src + t]` for `t < len`, where `cols[(c·kh + i)·kw + j][oy·Wo + ox] =
/// x[c][oy + i − pad][ox + j − pad]` and every other element of `cols` is padding (0).
fn patch_runs(s: &Conv2dSpec, mut f: impl FnMut(usize, usize, usize)) {
    let (ho, wo) = s.out_hw().expect("checked");
    for c in 0..s.cin {
        for i in 0..s.kh {
            for j in 0..s.kw {
                let row = ((c * s.kh + i) * s.kw + j) * ho * wo;
                let (lo, hi) = s.valid(j, wo);
                for oy in 0..ho {
                    let iy = (oy + i).wrapping_sub(s.pad);
                    if iy < s.h && lo < hi {
                        f(row + oy * wo + lo, (c * s.h + iy) * s.w + lo + j - s.pad, hi - lo);
                    }
                }
            }
        }
    }
}

/// One image's im2col matrix `cols [Cin·kh·kw, Ho·Wo]` of `x [Cin, H, W]` (see [`patch_runs`]).
fn im2col(s: &Conv2dSpec, x: &[f32], cols: &mut [f32]) {
    cols.fill(0.0);
    patch_runs(s, |col, src, len| cols[col..col + len].copy_from_slice(&x[src..src + len]));
}

/// The adjoint of [`im2col`]: adds every element of `cols` into the input element it was read from.
fn col2im_add(s: &Conv2dSpec, cols: &[f32], dx: &mut [f32]) {
    patch_runs(s, |col, src, len| dx[src..src + len].iter_mut().zip(&cols[col..col + len]).for_each(|(d, v)| *d += v));
}

/// `y = conv(x, weight) + bias` for `batch` images; `weight` is `[Cout, Cin·kh·kw]` row-major.
pub fn conv2d_forward(
    s: &Conv2dSpec,
    batch: usize,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    y: &mut [f32],
) -> Result<(), String> {
    s.check(batch, x.len(), weight.len(), bias.len(), y.len())?;
    if batch == 0 {
        return Ok(());
    }
    let (xs, ys, hw) = s.sizes();
    let k = s.patch();
    let wm = MatRef::from_row_major_slice(weight, s.cout, k);
    y.par_chunks_mut(ys).zip(x.par_chunks(xs)).for_each_init(
        || vec![0f32; k * hw],
        |cols, (yb, xb)| {
            im2col(s, xb, cols);
            gemm(MatMut::from_row_major_slice_mut(yb, s.cout, hw), Accum::Replace, wm, MatRef::from_row_major_slice(cols, k, hw));
            for (row, b) in yb.chunks_exact_mut(hw).zip(bias) {
                row.iter_mut().for_each(|v| *v += b);
            }
        },
    );
    Ok(())
}

/// Gradients of [`conv2d_forward`] from `dy [B, Cout, Ho, Wo]`: `dweight` and `dbias` (overwritten)
/// and, when given, `dx` (overwritten).
#[allow(clippy::too_many_arguments)]
pub fn conv2d_backward(
    s: &Conv2dSpec,
    batch: usize,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    dx: Option<&mut [f32]>,
    dweight: &mut [f32],
    dbias: &mut [f32],
) -> Result<(), String> {
    s.check(batch, x.len(), weight.len(), dbias.len(), dy.len())?;
    if dweight.len() != weight.len() {
        return Err(format!(
            "conv2d: weight gradient has {} elements, expected {}",
            dweight.len(),
            weight.len()
        ));
    }
    let (xs, ys, hw) = s.sizes();
    let k = s.patch();
    // dW = Σ_b dY_b·cols_bᵀ and db = Σ_b Σ_pixels dY_b, per fixed group of images.
    let partials: Vec<(Vec<f32>, Vec<f32>)> = x
        .par_chunks(GROUP * xs)
        .zip(dy.par_chunks(GROUP * ys))
        .map(|(xg, dyg)| {
            let mut dw = vec![0f32; s.cout * k];
            let mut db = vec![0f32; s.cout];
            let mut cols = vec![0f32; k * hw];
            for (xb, dyb) in xg.chunks_exact(xs).zip(dyg.chunks_exact(ys)) {
                im2col(s, xb, &mut cols);
                let a = MatRef::from_row_major_slice(dyb, s.cout, hw);
                let b = MatRef::from_row_major_slice(&cols, k, hw).transpose();
                gemm(MatMut::from_row_major_slice_mut(&mut dw, s.cout, k), Accum::Add, a, b);
                for (d, row) in db.iter_mut().zip(dyb.chunks_exact(hw)) {
                    *d += row.iter().sum::<f32>();
                }
            }
            (dw, db)
        })
        .collect();
    dweight.fill(0.0);
    dbias.fill(0.0);
    for (pw, pb) in &partials {
        dweight.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        dbias.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    // dX_b = col2im(Wᵀ·dY_b).
    if let Some(dx) = dx {
        if dx.len() != x.len() {
            return Err(format!(
                "conv2d: input gradient has {} elements, expected {}",
                dx.len(),
                x.len()
            ));
        }
        let wt = MatRef::from_row_major_slice(weight, s.cout, k).transpose();
        dx.par_chunks_mut(xs).zip(dy.par_chunks(ys)).for_each_init(
            || vec![0f32; k * hw],
            |dcols, (dxb, dyb)| {
                gemm(MatMut::from_row_major_slice_mut(dcols, k, hw), Accum::Replace, wt, MatRef::from_row_major_slice(dyb, s.cout, hw));
                dxb.fill(0.0);
                col2im_add(s, dcols, dxb);
            },
        );
    }
    Ok(())
}

/// Window position (`dy·2 + dx`) of an output that is 0 by the relu: no gradient flows back.
pub const NO_MAX: u8 = u8::MAX;

/// `y = max(0, max of each 2x2 window)` of `x [planes, H, W]` (stride 2, odd edges dropped, as
/// `relu` then `max_pool2d(2)`), with `arg` each window's maximum as `dy·2 + dx` (or [`NO_MAX`]).
pub fn relu_max_pool2x2(x: &[f32], planes: usize, h: usize, w: usize, y: &mut [f32], arg: &mut [u8]) {
    let (ho, wo) = (h / 2, w / 2);
    assert!(x.len() == planes * h * w && y.len() == planes * ho * wo && arg.len() == y.len(), "relu_max_pool2x2: lengths");
    if y.is_empty() {
        return;
    }
    y.par_chunks_mut(ho * wo).zip(arg.par_chunks_mut(ho * wo)).zip(x.par_chunks(h * w)).for_each(|((yp, ap), xp)| {
        for (o, (yo, ao)) in yp.iter_mut().zip(ap.iter_mut()).enumerate() {
            let top = 2 * (o / wo) * w + 2 * (o % wo);
            let (mut best, mut at) = (0f32, NO_MAX);
            for k in 0..4u8 {
                let v = xp[top + (k as usize / 2) * w + k as usize % 2];
                // A NaN input makes the output NaN (relu and max would hide it otherwise).
                if v > best || v.is_nan() {
                    (best, at) = (v, k);
                }
            }
            (*yo, *ao) = (best, at);
        }
    });
}

/// Backward of [`relu_max_pool2x2`] for `dx [planes, H, W]` (overwritten): each `dy` goes to its
/// window's maximum.
pub fn relu_max_pool2x2_backward(dy: &[f32], arg: &[u8], h: usize, w: usize, dx: &mut [f32]) {
    let (ho, wo) = (h / 2, w / 2);
    if ho * wo == 0 {
        dx.fill(0.0);
        return;
    }
    dx.par_chunks_mut(h * w).zip(dy.par_chunks(ho * wo).zip(arg.par_chunks(ho * wo))).for_each(|(dxp, (dyp, ap))| {
        dxp.fill(0.0);
        for (o, (&g, &k)) in dyp.iter().zip(ap).enumerate() {
            if k != NO_MAX {
                dxp[2 * (o / wo) * w + 2 * (o % wo) + (k as usize / 2) * w + k as usize % 2] += g;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct 7-loop convolution.
    fn naive(s: &Conv2dSpec, batch: usize, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f32> {
        let (ho, wo) = s.out_hw().unwrap();
        let mut y = vec![0f32; batch * s.cout * ho * wo];
        for n in 0..batch {
            for o in 0..s.cout {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = b[o];
                        for c in 0..s.cin {
                            for i in 0..s.kh {
                                for j in 0..s.kw {
                                    let (iy, ix) = (
                                        (oy + i) as isize - s.pad as isize,
                                        (ox + j) as isize - s.pad as isize,
                                    );
                                    if iy >= 0
                                        && ix >= 0
                                        && (iy as usize) < s.h
                                        && (ix as usize) < s.w
                                    {
                                        acc += w[((o * s.cin + c) * s.kh + i) * s.kw + j]
                                            * x[((n * s.cin + c) * s.h + iy as usize) * s.w
                                                + ix as usize];
                                    }
                                }
                            }
                        }
                        y[((n * s.cout + o) * ho + oy) * wo + ox] = acc;
                    }
                }
            }
        }
        y
    }

    #[test]
    fn forward_matches_direct_convolution_and_rejects_bad_shapes() {
        for &(cin, cout, h, w, kh, kw, pad) in &[
            (1, 6, 12, 10, 5, 5, 2),
            (3, 4, 7, 9, 3, 2, 0),
            (2, 3, 4, 4, 5, 5, 1),
            (1, 2, 1, 1, 6, 6, 3),
        ] {
            let s = Conv2dSpec {
                cin,
                cout,
                h,
                w,
                kh,
                kw,
                pad,
            };
            let batch = 11; // more than one GROUP
            let f = |n: usize, m: usize| {
                (0..n)
                    .map(|i| ((i * m) % 17) as f32 / 8.0 - 1.0)
                    .collect::<Vec<_>>()
            };
            let (x, wt, b) = (
                f(batch * cin * h * w, 7),
                f(cout * s.patch(), 5),
                f(cout, 3),
            );
            let want = naive(&s, batch, &x, &wt, &b);
            let mut y = vec![f32::NAN; want.len()];
            conv2d_forward(&s, batch, &x, &wt, &b, &mut y).unwrap();
            for (a, e) in y.iter().zip(&want) {
                assert!((a - e).abs() <= 1e-4 * (1.0 + e.abs()), "{s:?}: {a} vs {e}");
            }
        }
        let s = Conv2dSpec {
            cin: 1,
            cout: 1,
            h: 3,
            w: 3,
            kh: 5,
            kw: 5,
            pad: 0,
        };
        assert!(s.out_hw().unwrap_err().contains("does not fit"));
        let s = Conv2dSpec { pad: 1, ..s };
        assert!(
            conv2d_forward(&s, 1, &[0.0; 8], &[0.0; 25], &[0.0], &mut [0.0])
                .unwrap_err()
                .contains("input has 8")
        );
    }

    #[test]
    fn gradients_are_the_same_bits_for_any_thread_count() {
        let s = Conv2dSpec { cin: 3, cout: 4, h: 9, w: 7, kh: 3, kw: 3, pad: 1 };
        let batch = 3 * GROUP + 5;
        let (ho, wo) = s.out_hw().unwrap();
        let f = |n: usize, m: usize| (0..n).map(|i| (((i * m) % 23) as f32 / 7.0 - 1.5).sin()).collect::<Vec<_>>();
        let (x, wt, dy) = (f(batch * s.cin * s.h * s.w, 5), f(s.cout * s.patch(), 3), f(batch * s.cout * ho * wo, 11));
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| {
                let (mut dx, mut dw, mut db) = (vec![f32::NAN; x.len()], vec![f32::NAN; wt.len()], vec![f32::NAN; s.cout]);
                conv2d_backward(&s, batch, &x, &wt, &dy, Some(&mut dx), &mut dw, &mut db).unwrap();
                (dx, dw, db)
            })
        };
        let one = run(1);
        assert!(one.0.iter().chain(&one.1).chain(&one.2).all(|v| v.is_finite()), "every gradient element written");
        for threads in [2, 3, 5] {
            let other = run(threads);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&one.0) == bits(&other.0) && bits(&one.1) == bits(&other.1) && bits(&one.2) == bits(&other.2), "{threads} threads");
        }
    }
}
