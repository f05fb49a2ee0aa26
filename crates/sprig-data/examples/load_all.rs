//! Loads every task and prints sizes, split method and the median load time of `RUNS` runs.
//!
//! `cargo run --release -p sprig-data --example load_all [RUNS]`

use std::time::Instant;

use sprig_data::{load_image_task, load_text_task, sprig_home, IMAGE_TASKS, TEXT_TASKS};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), sprig_data::DataError> {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1);
    let home = sprig_home();
    println!("SPRIG_HOME={}  (median of {runs} loads)", home.display());
    for task in TEXT_TASKS {
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..runs {
            let t = Instant::now();
            last = Some(load_text_task(task, &home, 0)?);
            times.push(t.elapsed().as_secs_f64());
        }
        let d = last.expect("runs >= 1");
        println!(
            "{task:<14} {:>2} classes  train {:>6}  dev {:>5}  test {:>5}  {:>7.3} s  [{}]",
            d.classes.len(),
            d.train.len(),
            d.dev.len(),
            d.test.len(),
            median(times),
            d.split.method
        );
    }
    for task in IMAGE_TASKS {
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..runs {
            let t = Instant::now();
            last = Some(load_image_task(task, &home, 0)?);
            times.push(t.elapsed().as_secs_f64());
        }
        let d = last.expect("runs >= 1");
        println!(
            "{task:<14} {:>2} classes  train {:>6}  dev {:>5}  test {:>5}  {:>7.3} s  [{}] {}x{}",
            d.classes.len(),
            d.train.len(),
            d.dev.len(),
            d.test.len(),
            median(times),
            d.split.method,
            d.height,
            d.width
        );
    }
    Ok(())
}
