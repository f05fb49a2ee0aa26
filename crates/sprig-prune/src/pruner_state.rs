//! A [`Pruner`]'s state for a resumable training run: the masks, the gradient statistics
//! (movement, Taylor, Fisher), the OBS gradient window, the pending OBS masks and the values a
//! non-monotone pruner keeps aside, so that a run
//! killed between pruning events continues with exactly the scores it would have had.
use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use super::Pruner;
use crate::error::{PruneError, Result};
use crate::mask::{Mask, MaskSet};

fn bad(why: impl Into<String>) -> PruneError {
    PruneError::BadName { what: "saved pruner state", value: why.into(), expected: "a state saved by a pruner of the same configuration and tensors" }
}

fn put_masks(out: &mut BTreeMap<String, Tensor>, prefix: &str, masks: &MaskSet) -> Result<()> {
    for (n, m) in masks.iter() {
        let b = m.to_bytes();
        out.insert(format!("{prefix}/{n}"), Tensor::from_vec(b.clone(), b.len(), &Device::Cpu)?);
    }
    Ok(())
}

fn sub(tensors: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    let p = format!("{prefix}/");
    tensors.iter().filter_map(|(n, t)| n.strip_prefix(&p).map(|k| (k.to_string(), t.clone()))).collect()
}

impl Pruner {
    /// Everything the pruner has learned since it was made, as named tensors and a JSON record
    /// (see [`Pruner::restore`]). Dynamic sparse training's ITOP record is not saved: a pruner
    /// with a grow rule refuses.
    pub fn state(&self) -> Result<(BTreeMap<String, Tensor>, serde_json::Value)> {
        if self.itop.is_some() {
            return Err(PruneError::Unsupported { what: "saving the training state of a pruner with a grow rule".into(), why: "dynamic sparse training's ITOP record is not saved" });
        }
        let mut t = BTreeMap::new();
        put_masks(&mut t, "mask", &self.masks)?;
        if let Some(before) = &self.pending_before {
            put_masks(&mut t, "obs_before", before)?;
        }
        let acc = match &self.acc {
            Some(a) => {
                let mut at = BTreeMap::new();
                let meta = a.export(&mut at);
                t.extend(at.into_iter().map(|(n, x)| (format!("acc/{n}"), x)));
                Some(meta)
            }
            None => None,
        };
        let window = match &self.window {
            Some(w) => {
                let mut wt = BTreeMap::new();
                let meta = w.export(&mut wt)?;
                t.extend(wt.into_iter().map(|(n, x)| (format!("window/{n}"), x)));
                Some(meta)
            }
            None => None,
        };
        for (n, a) in &self.aside {
            t.insert(format!("aside/{n}"), Tensor::from_slice(a, a.len(), &Device::Cpu)?);
        }
        let names: Vec<&String> = self.shapes.iter().map(|(n, _)| n).collect();
        let meta = serde_json::json!({
            "tensors": names,
            "criterion": self.config.criterion.name(),
            "acc": acc,
            "window": window,
            "obs_before": self.pending_before.is_some(),
            "one_shot_done": self.one_shot_done,
            "schedule_ended": self.schedule_ended,
        });
        Ok((t, meta))
    }

    /// Restores what [`Pruner::state`] saved; the pruner must have the same criterion and
    /// tensors (a state of another run is refused, not mixed in).
    pub fn restore(&mut self, tensors: &BTreeMap<String, Tensor>, meta: &serde_json::Value) -> Result<()> {
        let names: Vec<String> = serde_json::from_value(meta["tensors"].clone()).map_err(|e| bad(e.to_string()))?;
        if names.iter().ne(self.shapes.iter().map(|(n, _)| n)) {
            return Err(bad(format!("saved for {} tensors, this pruner has {}", names.len(), self.shapes.len())));
        }
        if meta["criterion"].as_str() != Some(self.config.criterion.name().as_str()) {
            return Err(bad(format!("saved by criterion {}, this pruner's is {}", meta["criterion"], self.config.criterion.name())));
        }
        let read = |prefix: &str| -> Result<MaskSet> {
            let mut m = MaskSet::new();
            for (n, shape) in &self.shapes {
                let t = tensors.get(&format!("{prefix}/{n}")).ok_or_else(|| bad(format!("no {prefix} of {n}")))?;
                m.insert(n.clone(), Mask::from_bytes(shape, &t.to_vec1::<u8>()?)?);
            }
            Ok(m)
        };
        let masks = read("mask")?;
        let pending_before = if meta["obs_before"].as_bool() == Some(true) { Some(read("obs_before")?) } else { None };
        match (&mut self.acc, &meta["acc"]) {
            (Some(a), m) if !m.is_null() => a.import(&sub(tensors, "acc"), m)?,
            (None, m) if m.is_null() => {}
            _ => return Err(bad("gradient statistics saved for another criterion")),
        }
        // A window saved as null by an OBS pruner: dropped after the last pruning event (checked
        // below, once the masks are in).
        let released = match (&mut self.window, &meta["window"]) {
            (Some(w), m) if !m.is_null() => {
                w.import(&sub(tensors, "window"), m)?;
                false
            }
            (Some(_), _) => true,
            (None, m) if m.is_null() => false,
            _ => return Err(bad("an OBS gradient window saved for another criterion")),
        };
        let mut aside = BTreeMap::new();
        for (n, t) in sub(tensors, "aside") {
            let (_, shape) = self.shapes.iter().find(|(k, _)| *k == n).ok_or_else(|| bad(format!("values kept aside for unknown tensor {n}")))?;
            let a = t.to_vec1::<f32>()?;
            if a.len() != shape.iter().product::<usize>() {
                return Err(bad(format!("{} values kept aside for {n} of shape {shape:?}", a.len())));
            }
            aside.insert(n, a);
        }
        self.masks = masks;
        self.pending_before = pending_before;
        self.aside = aside;
        self.one_shot_done = meta["one_shot_done"].as_bool().unwrap_or(false);
        self.schedule_ended = meta["schedule_ended"].as_bool().unwrap_or(false);
        if released {
            if !self.pruning_done() {
                return Err(bad("no OBS gradient window, though pruning events are still to come"));
            }
            self.window = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{Criterion, Inputs, Pruner, PrunerConfig, Schedule};
    use candle_core::{Device, Tensor, Var};

    /// Drives `p` over `steps` steps of a quadratic loss whose gradients change every step.
    fn drive(p: &mut Pruner, params: &[(String, Var)], from: usize, to: usize) {
        for step in from..to {
            let loss = params
                .iter()
                .enumerate()
                .map(|(i, (_, v))| (v.as_tensor().sqr().unwrap().sum_all().unwrap() * (1.0 + (step * 7 + i) as f64 % 5.0)).unwrap())
                .reduce(|a, b| (a + b).unwrap())
                .unwrap();
            let grads = loss.backward().unwrap();
            p.observe(params, &grads).unwrap();
            if p.step(step + 1, params, &mut Inputs::none()).unwrap().is_some() {
                p.obs_update(params).unwrap();
                p.revive(params).unwrap();
            }
        }
    }

    #[test]
    fn a_restored_pruner_continues_as_the_uninterrupted_one() {
        let d = Device::Cpu;
        let params = || -> Vec<(String, Var)> {
            (0..2)
                .map(|i| {
                    let w: Vec<f32> = (0..48).map(|k| ((k * 13 + i * 5) as f32 * 0.37).sin()).collect();
                    (format!("w{i}"), Var::from_tensor(&Tensor::from_vec(w, (6, 8), &d).unwrap()).unwrap())
                })
                .collect()
        };
        let schedule = Schedule::Gradual { initial: 0.0, final_sparsity: 0.75, start: 0, end: 12, frequency: 3 };
        for (criterion, revive) in [(Criterion::Movement, false), (Criterion::Movement, true), (Criterion::Obs { block: 4, grads: 3 }, false), (Criterion::Fisher, false), (Criterion::Magnitude, false)] {
            let mut cfg = PrunerConfig::new(criterion, schedule);
            cfg.revive = revive;
            cfg.options.fisher_damp = 1e-4;
            let (pa, pb) = (params(), params());
            let mut whole = Pruner::for_params(cfg.clone(), &pa).unwrap();
            drive(&mut whole, &pa, 0, 14);
            let mut first = Pruner::for_params(cfg.clone(), &pb).unwrap();
            drive(&mut first, &pb, 0, 7);
            let (t, meta) = first.state().unwrap();
            let mut resumed = Pruner::for_params(cfg.clone(), &pb).unwrap();
            resumed.restore(&t, &meta).unwrap();
            // The statistics came back, not only the masks: the same scores, step counts, window.
            let sa = first.scores(&pb, &mut Inputs::none()).unwrap();
            let sb = resumed.scores(&pb, &mut Inputs::none()).unwrap();
            assert_eq!(sa, sb, "{criterion:?}");
            assert_eq!(first.accumulator().map(|a| a.steps()), resumed.accumulator().map(|a| a.steps()));
            assert_eq!(first.grad_window().map(|w| (w.len(), w.steps())), resumed.grad_window().map(|w| (w.len(), w.steps())));
            assert_eq!(first.masks().to_bitmasks().unwrap(), resumed.masks().to_bitmasks().unwrap());
            drive(&mut resumed, &pb, 7, 14);
            assert!((resumed.sparsity() - 0.75).abs() < 1e-9, "{criterion:?}");
            if matches!(criterion, Criterion::Obs { .. }) {
                // The window is dropped after the last event (step 12), and a state saved then
                // restores to a pruner without one, refused where events are still to come.
                assert!(whole.grad_window().is_none() && resumed.grad_window().is_none());
                let (t, meta) = resumed.state().unwrap();
                assert!(meta["window"].is_null() && !t.keys().any(|k| k.starts_with("window/")));
                let mut late = Pruner::for_params(cfg.clone(), &pb).unwrap();
                late.restore(&t, &meta).unwrap();
                assert!(late.grad_window().is_none() && late.masks().to_bitmasks().unwrap() == resumed.masks().to_bitmasks().unwrap());
                let (t7, mut meta7) = first.state().unwrap();
                meta7["window"] = serde_json::Value::Null;
                let e = Pruner::for_params(cfg.clone(), &pb).unwrap().restore(&t7, &meta7).unwrap_err().to_string();
                assert!(e.contains("pruning events are still to come"), "{e}");
            }
            for (n, m) in whole.masks().iter() {
                assert_eq!(m.to_bools(), resumed.masks().get(n).unwrap().to_bools(), "{criterion:?} {n}");
            }
            for ((_, a), (_, b)) in pa.iter().zip(&pb) {
                let bits = |v: &Var| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(a), bits(b), "{criterion:?}: the OBS update moved the weights alike");
            }
            // A state of another criterion or other tensors is refused.
            let other = if criterion == Criterion::Magnitude { Criterion::Movement } else { Criterion::Magnitude };
            let mut wrong = Pruner::for_params(PrunerConfig::new(other, schedule), &pb).unwrap();
            assert!(wrong.restore(&t, &meta).is_err());
            let mut fewer = Pruner::for_params(cfg, &pb[..1]).unwrap();
            assert!(fewer.restore(&t, &meta).is_err());
        }
    }
}
