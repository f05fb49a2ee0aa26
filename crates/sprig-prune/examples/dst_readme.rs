//! The README's DST example: one RigL drop-and-grow on a random ERK mask, with the ITOP tracker.
use sprig_prune::dst::{drop_and_grow, random_masks, Grow, ItopTracker, UpdateSchedule};
use sprig_prune::Allocation;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let shapes = vec![("fc1.weight".to_string(), vec![300, 784])];
    let masks = random_masks(&shapes, 0.9, &Allocation::erk(), 0)?;
    let mut itop = ItopTracker::new(&masks);
    let sched = UpdateSchedule { delta_t: 100, t_end: 750, alpha: 0.3 };
    let w: Vec<f32> = (0..300 * 784).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
    let g: Vec<f32> = (0..300 * 784).map(|i| ((i * 104729) % 997) as f32).collect();
    let m = masks.get("fc1.weight").unwrap();
    let n = (sched.drop_fraction(100) * m.count_kept() as f64).round() as usize;
    let up = drop_and_grow("fc1.weight", &w, m, n, Grow::Gradient(&g), None)?; // RigL
    itop.observe("fc1.weight", &up.mask)?;
    println!("dropped {}, grown {}, R_s {:.4}", up.dropped.len(), up.grown.len(), itop.rate());
    Ok(())
}
