//! Auxiliary losses of the router.
use crate::error::{MoeError, Result};
use crate::router::Assignment;
use candle_core::{Tensor, D};

/// Switch Transformer load-balancing loss (Fedus et al. 2022, eq. 4): `E · Σ_i f_i · P_i`, with
/// `f_i` the fraction of routed token-expert pairs that went to expert `i` (after capacity; not
/// differentiable) and `P_i` the mean router probability of expert `i` over the batch
/// (differentiable). 1 when both are uniform; its gradient pushes probability away from overloaded
/// experts. `probs` is `[T, E]`.
pub fn load_balancing_loss(probs: &Tensor, a: &Assignment) -> Result<Tensor> {
    let (t, e) = probs.dims2()?;
    if (t, e) != (a.tokens, a.experts) {
        return Err(MoeError::Shape { what: "router probabilities vs assignment".into(), expected: vec![a.tokens, a.experts], got: vec![t, e] });
    }
    let load = a.load();
    let total = load.iter().sum::<usize>().max(1) as f32;
    let f: Vec<f32> = load.iter().map(|&n| n as f32 / total).collect();
    let f = Tensor::from_vec(f, e, probs.device())?;
    let p_mean = probs.mean(0)?;
    Ok((p_mean * f)?.sum_all()?.affine(e as f64, 0.0)?)
}

/// Router z-loss (Zoph et al. 2022, ST-MoE, eq. 5): `mean_t (log Σ_i exp(logit_ti))²`; keeps the
/// logits small so the softmax stays in float range. `logits` is `[T, E]`.
pub fn z_loss(logits: &Tensor) -> Result<Tensor> {
    let lse = logits.log_sum_exp(D::Minus1)?;
    Ok(lse.sqr()?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn assignment(load: &[usize]) -> Assignment {
        let mut next = 0;
        let per_expert = load.iter().map(|&n| { let v: Vec<usize> = (next..next + n).collect(); next += n; v }).collect();
        Assignment { tokens: next, experts: load.len(), per_expert, ..Default::default() }
    }

    #[test]
    fn balance_loss_is_one_when_uniform_and_larger_when_skewed() {
        let d = Device::Cpu;
        let uniform = Tensor::full(0.25f32, (8, 4), &d).unwrap();
        let l = load_balancing_loss(&uniform, &assignment(&[2, 2, 2, 2])).unwrap().to_scalar::<f32>().unwrap();
        assert!((l - 1.0).abs() < 1e-6, "{l}");
        // Every token on expert 0, which also gets all probability: E * 1 * 1 = 4.
        let mut p = vec![0f32; 32];
        (0..8).for_each(|t| p[t * 4] = 1.0);
        let skew = Tensor::from_vec(p, (8, 4), &d).unwrap();
        let l = load_balancing_loss(&skew, &assignment(&[8, 0, 0, 0])).unwrap().to_scalar::<f32>().unwrap();
        assert!((l - 4.0).abs() < 1e-6, "{l}");
    }

    #[test]
    fn z_loss_is_the_mean_squared_log_sum_exp() {
        let d = Device::Cpu;
        let logits = Tensor::from_vec(vec![0f32, 0.0, 1.0, 2.0], (2, 2), &d).unwrap();
        let got = z_loss(&logits).unwrap().to_scalar::<f32>().unwrap();
        let l0 = 2f32.ln();
        let l1 = (1f32.exp() + 2f32.exp()).ln();
        let want = (l0 * l0 + l1 * l1) / 2.0;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
    }
}
