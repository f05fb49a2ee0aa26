//! Hand-checkable cases for the DST rules.
use super::*;

fn mask(keep: &[u8]) -> Mask {
    Mask::from_bools(&[keep.len()], &keep.iter().map(|&k| k == 1).collect::<Vec<_>>()).unwrap()
}

#[test]
fn cosine_decay_endpoints() {
    assert!((cosine_drop_fraction(0.3, 0, 100) - 0.3).abs() < 1e-12);
    assert!((cosine_drop_fraction(0.3, 50, 100) - 0.15).abs() < 1e-12);
    assert_eq!(cosine_drop_fraction(0.3, 100, 100), 0.0);
    assert_eq!(cosine_drop_fraction(0.3, 150, 100), 0.0);
    let s = UpdateSchedule { delta_t: 10, t_end: 35, alpha: 0.3 };
    let steps: Vec<usize> = (0..50).filter(|&t| s.is_update_step(t)).collect();
    assert_eq!(steps, vec![10, 20, 30]);
    assert!(UpdateSchedule { delta_t: 0, t_end: 1, alpha: 0.1 }.validate().is_err());
    assert!(UpdateSchedule { delta_t: 1, t_end: 1, alpha: 1.5 }.validate().is_err());
}

#[test]
fn rigl_drops_smallest_and_grows_largest_gradient() {
    //            0    1    2     3    4    5    6    7
    let w = [0.5, 0.0, -0.1, 0.0, 0.9, 0.0, 0.2, 0.0];
    let m = mask(&[1, 0, 1, 0, 1, 0, 1, 0]);
    // Drops 2 and 6 (|−0.1|, |0.2| smallest active). Growth is among the zeros of the mask after
    // the drop: 2 has the largest |g| (10) so it is grown straight back, then 5 (0.8).
    let g = [9.0, 0.1, 10.0, 0.3, 0.0, 0.8, 0.0, -0.7];
    let r = drop_and_grow("w", &w, &m, 2, Grow::Gradient(&g), None).unwrap();
    assert_eq!(r.dropped, vec![6]);
    assert_eq!(r.grown, vec![5]);
    assert_eq!(r.mask, mask(&[1, 0, 1, 0, 1, 1, 0, 0]));
    assert_eq!(r.mask.count_kept(), m.count_kept());
}

#[test]
fn a_dropped_weight_with_a_large_gradient_is_grown_back_and_stays() {
    let w = [0.01, 0.02, 1.0, 0.0, 0.0];
    let m = mask(&[1, 1, 1, 0, 0]);
    // Both dropped weights have the largest gradients: the mask does not change at all.
    let g = [100.0, 100.0, 0.0, 0.5, 0.1];
    let r = drop_and_grow("w", &w, &m, 2, Grow::Gradient(&g), None).unwrap();
    assert_eq!((r.mask.clone(), r.dropped.len(), r.grown.len()), (m.clone(), 0, 0));
    // One of them does: 1 goes, 3 comes.
    let g = [100.0, 0.0, 0.0, 0.5, 0.1];
    let r = drop_and_grow("w", &w, &m, 2, Grow::Gradient(&g), None).unwrap();
    assert_eq!((r.dropped.clone(), r.grown.clone()), (vec![1], vec![3]));
    assert_eq!(r.mask, mask(&[1, 0, 1, 1, 0]));
    // Asking for more than is active clamps to the active count; the count never changes.
    let r = drop_and_grow("w", &w, &m, 9, Grow::Gradient(&g), None).unwrap();
    assert_eq!(r.mask.count_kept(), 3);
    assert_eq!(r.dropped.len(), r.grown.len());
    // With `forbid` covering every zero, nothing can be grown, so nothing is dropped.
    let all = mask(&[1, 1, 1, 1, 1]);
    let r = drop_and_grow("w", &w, &m, 2, Grow::Gradient(&g), Some(&all)).unwrap();
    assert_eq!((r.mask.clone(), r.dropped.len(), r.grown.len()), (m.clone(), 0, 0));
}

#[test]
fn set_random_growth_is_seeded_and_exact() {
    let n = 1000;
    let w: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 100.0 - 0.5).collect();
    let m = random_masks(&[("w".into(), vec![n])], 0.9, &Allocation::uniform(), 7).unwrap();
    let m = m.get("w").unwrap().clone();
    assert_eq!(m.count_kept(), 100);
    let a = drop_and_grow("w", &w, &m, 30, Grow::Random { seed: 3 }, None).unwrap();
    let b = drop_and_grow("w", &w, &m, 30, Grow::Random { seed: 3 }, None).unwrap();
    let c = drop_and_grow("w", &w, &m, 30, Grow::Random { seed: 4 }, None).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.grown, c.grown);
    // 30 dropped, 30 grown among the 930 zeros after the drop: a few may be dropped ones grown back.
    assert_eq!(a.mask.count_kept(), 100);
    assert_eq!(a.dropped.len(), a.grown.len());
    assert!((25..=30).contains(&a.dropped.len()), "{} dropped", a.dropped.len());
    assert!(a.grown.iter().all(|&i| !m.get(i) && a.mask.get(i)));
    assert!(a.dropped.iter().all(|&i| m.get(i) && !a.mask.get(i)));
    // Dropped are exactly the 30 smallest |w| among the active.
    let mut act: Vec<f32> = (0..n).filter(|&i| m.get(i)).map(|i| w[i].abs()).collect();
    act.sort_by(f32::total_cmp);
    let max_dropped = a.dropped.iter().map(|&i| w[i].abs()).fold(0.0, f32::max);
    assert!(max_dropped <= act[29]);
}

#[test]
fn granet_prunes_then_regrows_outside_the_old_mask() {
    let w = [0.9, 0.1, 0.5, 0.3, 0.0, 0.0, 0.0, 0.0];
    let g = [0.0, 50.0, 0.0, 0.0, 0.2, 0.4, 0.6, 0.1];
    let m = mask(&[1, 1, 1, 1, 0, 0, 0, 0]);
    // Prune to 3 (drops 1, |0.1|), then regrow 1: drop 3 (|0.3|), grow 6 (|g| = 0.6), never 1.
    let r = granet_update("w", &w, &g, &m, 3, 1).unwrap();
    assert_eq!(r.mask, mask(&[1, 0, 1, 0, 0, 0, 1, 0]));
    assert_eq!(r.dropped, vec![1, 3]);
    assert_eq!(r.grown, vec![6]);
    assert!(granet_update("w", &w, &g, &m, 5, 1).is_err());
}

#[test]
fn erk_random_masks_hit_exact_counts_and_itop_tracks_union() {
    let shapes = vec![("a".to_string(), vec![300, 784]), ("b".to_string(), vec![100, 300]), ("c".to_string(), vec![10, 100])];
    let counts = kept_counts(&shapes, 0.9, &Allocation::erk()).unwrap();
    let m = random_masks(&shapes, 0.9, &Allocation::erk(), 1).unwrap();
    for (n, c) in &counts {
        assert_eq!(m.get(n).unwrap().count_kept(), *c);
    }
    let total: usize = counts.values().sum();
    let numel = 300 * 784 + 100 * 300 + 1000;
    assert!(((1.0 - total as f64 / numel as f64) - 0.9).abs() < 1e-3);
    assert_eq!(m, random_masks(&shapes, 0.9, &Allocation::erk(), 1).unwrap());
    let mut it = ItopTracker::new(&m);
    assert!((it.rate() - total as f64 / numel as f64).abs() < 1e-12);
    // Observing the complement of "a" makes "a" fully explored.
    let a = m.get("a").unwrap();
    let comp = Mask::from_bools(a.shape(), &a.to_bools().iter().map(|k| !k).collect::<Vec<_>>()).unwrap();
    it.observe("a", &comp).unwrap();
    let want = (300 * 784 + counts["b"] + counts["c"]) as f64 / numel as f64;
    assert!((it.rate() - want).abs() < 1e-12);
    assert!(it.observe("a", &mask(&[1, 0])).is_err());
}
