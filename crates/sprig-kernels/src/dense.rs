//! Dense baseline: `y [m, n] = x [m, k] · w [n, k]ᵀ (+ bias)` with the Rust GEMMs measured in
//! `docs/results/kernels.md`. [`dense_linear`] uses faer, the fastest of them there.
use crate::error::{check_len, KernelError, Result};

/// Which dense GEMM to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseImpl {
    /// faer 0.24 (`faer::linalg::matmul`, rayon parallelism).
    Faer,
    /// matrixmultiply 0.3 (`sgemm`, its own threading).
    MatrixMultiply,
}

impl std::str::FromStr for DenseImpl {
    type Err = KernelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "faer" => Ok(Self::Faer),
            "matrixmultiply" => Ok(Self::MatrixMultiply),
            _ => Err(KernelError::Shape(format!(
                "unknown dense implementation {s:?} (faer, matrixmultiply)"
            ))),
        }
    }
}

/// `y = x·wᵀ (+ bias)` with faer; `x [m, k]`, `w [n, k]`, `y [m, n]`, row-major.
pub fn dense_linear(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
) -> Result<()> {
    dense_linear_with(DenseImpl::Faer, x, w, bias, m, n, k, y)
}

/// [`dense_linear`] with a chosen GEMM.
#[allow(clippy::too_many_arguments)]
pub fn dense_linear_with(
    imp: DenseImpl,
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
    y: &mut [f32],
) -> Result<()> {
    check_len("x (m*k)", x.len(), m * k)?;
    check_len("w (n*k)", w.len(), n * k)?;
    check_len("y (m*n)", y.len(), m * n)?;
    if let Some(b) = bias {
        check_len("bias", b.len(), n)?;
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    match imp {
        DenseImpl::Faer => {
            use faer::{Accum, MatMut, MatRef, Par};
            let a = MatRef::from_row_major_slice(x, m, k);
            let b = MatRef::from_row_major_slice(w, n, k).transpose();
            let c = MatMut::from_row_major_slice_mut(y, m, n);
            faer::linalg::matmul::matmul(c, Accum::Replace, a, b, 1.0f32, Par::rayon(0));
        }
        DenseImpl::MatrixMultiply => unsafe {
            // SAFETY: lengths checked above; strides describe row-major x, wᵀ and y.
            matrixmultiply::sgemm(
                m,
                k,
                n,
                1.0,
                x.as_ptr(),
                k as isize,
                1,
                w.as_ptr(),
                1,
                k as isize,
                0.0,
                y.as_mut_ptr(),
                n as isize,
                1,
            );
        },
    }
    if let Some(b) = bias {
        for row in y.chunks_mut(n) {
            for (v, bb) in row.iter_mut().zip(b) {
                *v += bb;
            }
        }
    }
    Ok(())
}

/// Dense input gradient of a linear layer, `dx = dy·w` (`dy [m, n]`, `w [n, k]`), with faer.
pub fn dense_input_grad(w: &[f32], dy: &[f32], m: usize, n: usize, k: usize, dx: &mut [f32]) -> Result<()> {
    use faer::{Accum, MatMut, MatRef, Par};
    check_len("w (n*k)", w.len(), n * k)?;
    check_len("dy (m*n)", dy.len(), m * n)?;
    check_len("dx (m*k)", dx.len(), m * k)?;
    faer::linalg::matmul::matmul(
        MatMut::from_row_major_slice_mut(dx, m, k),
        Accum::Replace,
        MatRef::from_row_major_slice(dy, m, n),
        MatRef::from_row_major_slice(w, n, k),
        1.0f32,
        Par::rayon(0),
    );
    Ok(())
}

/// Dense backward of a linear layer: `dx = dy·w` and `dw = dyᵀ·x` with faer.
#[allow(clippy::too_many_arguments)]
pub fn dense_linear_backward(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    m: usize,
    n: usize,
    k: usize,
    dx: &mut [f32],
    dw: &mut [f32],
) -> Result<()> {
    use faer::{Accum, MatMut, MatRef, Par};
    check_len("x (m*k)", x.len(), m * k)?;
    check_len("w (n*k)", w.len(), n * k)?;
    check_len("dy (m*n)", dy.len(), m * n)?;
    check_len("dx (m*k)", dx.len(), m * k)?;
    check_len("dw (n*k)", dw.len(), n * k)?;
    dense_input_grad(w, dy, m, n, k, dx)?;
    let dym = MatRef::from_row_major_slice(dy, m, n);
    let xm = MatRef::from_row_major_slice(x, m, k);
    faer::linalg::matmul::matmul(
        MatMut::from_row_major_slice_mut(dw, n, k),
        Accum::Replace,
        dym.transpose(),
        xm,
        1.0f32,
        Par::rayon(0),
    );
    Ok(())
}
