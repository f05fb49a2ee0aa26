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
    // Largest |g| overall is at 2 (active: not eligible); among inactive: 5 (0.8) then 7 (-0.7).
    let g = [9.0, 0.1, 10.0, 0.3, 0.0, 0.8, 0.0, -0.7];
    let r = drop_and_grow("w", &w, &m, 2, Grow::Gradient(&g), None).unwrap();
    assert_eq!(r.dropped, vec![2, 6]); // |−0.1| and |0.2| are the smallest active
    assert_eq!(r.grown, vec![5, 7]);
    assert_eq!(r.mask, mask(&[1, 0, 0, 0, 1, 1, 0, 1]));
    assert_eq!(r.mask.count_kept(), m.count_kept());
}

#[test]
fn never_grows_what_was_just_dropped() {
    // Every inactive position has a smaller gradient than the dropped ones: still, dropped
    // positions are not eligible, and counts stay equal.
    let w = [0.01, 0.02, 1.0, 0.0, 0.0];
    let m = mask(&[1, 1, 1, 0, 0]);
    let g = [100.0, 100.0, 0.0, 0.5, 0.1];
    let r = drop_and_grow("w", &w, &m, 2, Grow::Gradient(&g), None).unwrap();
    assert_eq!(r.dropped, vec![0, 1]);
    assert_eq!(r.grown, vec![3, 4]);
    assert!(r.dropped.iter().all(|d| !r.grown.contains(d)));
    // Asking for more than can be grown clamps to the eligible count.
    let r = drop_and_grow("w", &w, &m, 3, Grow::Gradient(&g), None).unwrap();
    assert_eq!((r.dropped.len(), r.grown.len(), r.mask.count_kept()), (2, 2, 3));
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
    assert_eq!((a.dropped.len(), a.grown.len(), a.mask.count_kept()), (30, 30, 100));
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
