//! Scalar dense references that the kernels are tested against (masked-dense semantics).

/// `y [m, n] = x [m, k] · w [n, k]ᵀ (+ bias)`, f64 accumulation.
pub fn linear(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut y = vec![0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = bias.map_or(0.0, |b| b[j] as f64);
            for l in 0..k {
                s += x[i * k + l] as f64 * w[j * k + l] as f64;
            }
            y[i * n + j] = s as f32;
        }
    }
    y
}

/// `dx [m, k] = dy [m, n] · w [n, k]`, f64 accumulation.
pub fn backward_input(dy: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut dx = vec![0f32; m * k];
    for i in 0..m {
        for l in 0..k {
            let mut s = 0f64;
            for j in 0..n {
                s += dy[i * n + j] as f64 * w[j * k + l] as f64;
            }
            dx[i * k + l] = s as f32;
        }
    }
    dx
}

/// Dense `dw [n, k] = dyᵀ · x`, f64 accumulation.
pub fn grad_weight(dy: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut dw = vec![0f32; n * k];
    for j in 0..n {
        for l in 0..k {
            let mut s = 0f64;
            for i in 0..m {
                s += dy[i * n + j] as f64 * x[i * k + l] as f64;
            }
            dw[j * k + l] = s as f32;
        }
    }
    dw
}
