//! One signature for every criterion: [`Criterion::scores`] dispatches to the functions of
//! [`crate::criteria`], taking what each one needs beyond the weights from [`Inputs`].
//!
//! | criterion | needs |
//! |---|---|
//! | magnitude (Han et al. 2015) | the weights |
//! | random (Liu et al. 2022) | [`ScoreOptions::seed`] |
//! | SNIP (Lee et al. 2019), GraSP (Wang et al. 2020) | [`Inputs::with_loss`] |
//! | SynFlow (Tanaka et al. 2020) | [`Inputs::with_forward_ones`] |
//! | movement (Sanh et al. 2020), Taylor, diagonal Fisher/OBS | a [`GradAccumulator`] |
//! | block OBS, oBERT (Kurtic et al. 2022) | a [`GradWindow`] ([`Inputs::with_grad_window`] or [`crate::Pruner::observe`]) and `fisher_damp` > 0 |
//! | Wanda (Sun et al. 2024) | [`ActivationNorms`] |
use candle_core::{Tensor, Var};

use crate::allocation::Scores;
use crate::criteria::{self, ActivationNorms, Criterion, GradAccumulator};
use crate::error::{PruneError, Result};
use crate::granularity::Granularity;
use crate::mask::MaskSet;
use crate::obs::{self, GradWindow};

/// The calibration loss of batch `b`, computed from the current values of the `Var`s (SNIP, GraSP).
pub type LossFn<'a> = dyn FnMut(usize) -> candle_core::Result<Tensor> + 'a;
/// The model run on an all-ones input (SynFlow).
pub type ForwardOnesFn<'a> = dyn FnMut() -> candle_core::Result<Tensor> + 'a;

/// Settings of the criteria (serialisable: part of a [`crate::PrunerConfig`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ScoreOptions {
    /// Seed of the random criterion, of random DST starts and of SET's random growth.
    pub seed: u64,
    /// GraSP's finite-difference step, relative to ‖g‖ ([`criteria::grasp`]).
    pub grasp_rel_step: f64,
    /// λ added to the Fisher diagonal ([`GradAccumulator::fisher`]), and oBERT's dampening
    /// F = λI + (1/m) Σ g gᵀ of [`Criterion::Obs`] (which needs λ > 0; the paper uses 1e-7).
    pub fisher_damp: f64,
    /// Movement scores as Sanh et al. (2020, §3 and their code) train them, as parameters under
    /// Adam: each step adds Adam's normalised step m̂/(√v̂ + ε) of g ⊙ w instead of g ⊙ w itself
    /// ([`crate::GradAccumulator::movement`]), so a weight's score grows with how consistently it
    /// moves, not with the size of its gradient times its value.
    pub movement_adam: bool,
    /// oBERT with a block granularity (`r x c` tiles): Fisher blocks of whole tiles and one
    /// joint saliency per tile, ρ_Q with Q = the tile (Kurtic et al. eq. 3), as the paper prunes
    /// blocks; off: blocks of B consecutive weights and a tile ranked by the mean of its weights'
    /// single-weight saliencies (eq. 4), as sprig did before. See [`crate::obs`].
    pub obs_tiles: bool,
}

impl Default for ScoreOptions {
    fn default() -> Self {
        Self { seed: 0, grasp_rel_step: 1e-2, fisher_damp: 0.0, movement_adam: false, obs_tiles: true }
    }
}

/// What a criterion may need besides the weights, borrowed for one call. Empty by default
/// (enough for magnitude and random).
#[derive(Default)]
pub struct Inputs<'a> {
    /// Running gradient statistics (movement, Taylor, Fisher).
    pub accumulator: Option<&'a GradAccumulator>,
    /// Per-input-feature activation norms (Wanda).
    pub activations: Option<&'a ActivationNorms>,
    /// Calibration loss and its number of batches (SNIP, GraSP).
    pub loss: Option<(&'a mut LossFn<'a>, usize)>,
    /// Every `Var` of the model (not only the prunable ones) and the all-ones forward (SynFlow).
    pub forward_ones: Option<(&'a [(String, Var)], &'a mut ForwardOnesFn<'a>)>,
    /// Dense gradients of the prunable weights, row-major, by name (RigL's and GraNet's growth).
    pub dense_grads: Option<&'a Scores>,
    /// The last m gradients (block OBS).
    pub grad_window: Option<&'a GradWindow>,
}

impl<'a> Inputs<'a> {
    /// No inputs besides the weights.
    pub fn none() -> Self {
        Self::default()
    }
    /// Adds gradient statistics (movement, Taylor, Fisher).
    pub fn with_accumulator(mut self, a: &'a GradAccumulator) -> Self {
        self.accumulator = Some(a);
        self
    }
    /// Adds activation norms (Wanda).
    pub fn with_activations(mut self, a: &'a ActivationNorms) -> Self {
        self.activations = Some(a);
        self
    }
    /// Adds a calibration loss over `batches` batches (SNIP, GraSP).
    pub fn with_loss(mut self, loss: &'a mut LossFn<'a>, batches: usize) -> Self {
        self.loss = Some((loss, batches));
        self
    }
    /// Adds the all-ones forward and every `Var` it reads (SynFlow).
    pub fn with_forward_ones(mut self, all: &'a [(String, Var)], f: &'a mut ForwardOnesFn<'a>) -> Self {
        self.forward_ones = Some((all, f));
        self
    }
    /// Adds the last m gradients (block OBS).
    pub fn with_grad_window(mut self, w: &'a GradWindow) -> Self {
        self.grad_window = Some(w);
        self
    }
    /// Adds dense gradients by name (RigL / GraNet growth).
    pub fn with_dense_grads(mut self, g: &'a Scores) -> Self {
        self.dense_grads = Some(g);
        self
    }
}

/// What a [`crate::Pruner`] keeps for its criterion: its gradient statistics and the granularity
/// the scores will rank (oBERT's Fisher blocks follow its tiles).
pub(crate) struct Held<'a> {
    pub acc: Option<&'a GradAccumulator>,
    pub window: Option<&'a GradWindow>,
    pub granularity: Granularity,
}

/// Keeps the scores of `params`' names, erroring when one is missing.
fn restrict(mut s: Scores, params: &[(String, Var)]) -> Result<Scores> {
    params.iter().map(|(n, _)| s.remove(n).map(|v| (n.clone(), v)).ok_or_else(|| PruneError::NoGradient(n.clone()))).collect()
}

impl Criterion {
    /// Scores of `params` (higher = more important), the one signature of every criterion.
    /// `masks` is the current mask (SynFlow scores the masked network, block OBS restricts its Fisher to the kept weights; the others ignore it).
    /// Errors with [`PruneError::MissingInput`] when `inputs` lacks what the criterion needs.
    pub fn scores(&self, params: &[(String, Var)], masks: Option<&MaskSet>, inputs: &mut Inputs<'_>, opts: &ScoreOptions) -> Result<Scores> {
        let held = Held { acc: inputs.accumulator, window: None, granularity: Granularity::Unstructured };
        self.scores_with(params, masks, inputs, held, opts)
    }

    /// [`Criterion::scores`] with what a [`crate::Pruner`] holds apart ([`Held`]; `inputs` take
    /// precedence).
    pub(crate) fn scores_with(&self, params: &[(String, Var)], masks: Option<&MaskSet>, inputs: &mut Inputs<'_>, held: Held<'_>, opts: &ScoreOptions) -> Result<Scores> {
        let Held { acc, window, granularity } = held;
        let missing = |criterion: &'static str, needs: &'static str| PruneError::MissingInput { criterion, needs };
        let acc = |c: &'static str| acc.ok_or_else(|| missing(c, "a GradAccumulator (Inputs::with_accumulator or Pruner::observe)"));
        match self {
            Criterion::Magnitude => criteria::magnitude(params),
            Criterion::Random => Ok(criteria::random(params, opts.seed)),
            Criterion::Snip | Criterion::Grasp => {
                let (loss, batches) = inputs.loss.as_mut().ok_or_else(|| missing("snip/grasp", "a calibration loss (Inputs::with_loss)"))?;
                if *self == Criterion::Snip {
                    criteria::snip(params, &mut **loss, *batches)
                } else {
                    criteria::grasp(params, &mut **loss, *batches, opts.grasp_rel_step)
                }
            }
            Criterion::Synflow => {
                let (all, f) = inputs.forward_ones.as_mut().ok_or_else(|| missing("synflow", "an all-ones forward (Inputs::with_forward_ones)"))?;
                let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
                criteria::synflow_scores(all, &names, masks, &mut **f)
            }
            Criterion::Movement => restrict(acc("movement")?.movement()?, params),
            Criterion::Taylor => restrict(acc("taylor")?.taylor()?, params),
            Criterion::Fisher => acc("fisher")?.fisher(params, opts.fisher_damp),
            Criterion::Obs { block, .. } => {
                let w = inputs.grad_window.or(window).ok_or_else(|| missing("obs", "a GradWindow (Inputs::with_grad_window or Pruner::observe)"))?;
                obs::scores(w, params, masks, obs::Blocks::for_granularity(*block, granularity, opts.obs_tiles), opts.fisher_damp)
            }
            Criterion::Wanda => inputs.activations.ok_or_else(|| missing("wanda", "activation norms (Inputs::with_activations)"))?.wanda(params),
        }
    }

    /// Does this criterion read gradient statistics ([`GradAccumulator`])?
    pub fn needs_grad_statistics(&self) -> bool {
        matches!(self, Criterion::Movement | Criterion::Taylor | Criterion::Fisher)
    }
}
