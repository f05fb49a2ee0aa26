//! The benchmark grid behind `sprig bench kernels` and the criterion bench: sprig's sparse
//! kernels and the dense Rust GEMMs on the same shapes, medians of several runs.
use crate::dense::{dense_linear_backward, dense_linear_with, DenseImpl};
use crate::{Bitmask, Bsr, Csr, NmSparse, SparseMatrix};
use std::time::Instant;

/// One measured cell.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    pub k: usize,
    pub n: usize,
    pub m: usize,
    /// Fraction of weights removed (0 for dense rows).
    pub sparsity: f64,
    /// `dense`, `csr`, `bsr4x1`, `nm2:4`.
    pub format: String,
    /// `forward` (Y = X·Wᵀ + b) or `backward` (dX and dW; sparse: dX + SDDMM).
    pub op: String,
    /// `sprig`, `faer`, `matrixmultiply`.
    pub imp: String,
    pub median_ms: f64,
}

/// What to measure.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// `(K, N)` pairs: W is `[N, K]`.
    pub shapes: Vec<(usize, usize)>,
    pub ms: Vec<usize>,
    pub sparsities: Vec<f64>,
    /// Also 4x1 blocks at each sparsity and 2:4.
    pub structured: bool,
    pub backward: bool,
    /// Target seconds per cell (repetitions are chosen from one timed run, 3..=25 of them).
    pub seconds_per_cell: f64,
}

impl BenchConfig {
    /// The full grid: 5 shapes x M {1, 32, 512, 4096} x 6 sparsities, 2:4 and 4x1.
    pub fn full() -> Self {
        Self {
            shapes: vec![(384, 1536), (1536, 384), (768, 3072), (3072, 768), (768, 768)],
            ms: vec![1, 32, 512, 4096],
            sparsities: vec![0.5, 0.7, 0.8, 0.9, 0.95, 0.98],
            structured: true,
            backward: true,
            seconds_per_cell: 0.3,
        }
    }
    /// Under a minute: K=384 N=1536, M {1, 512}, 50% and 90%.
    pub fn quick() -> Self {
        Self {
            shapes: vec![(384, 1536)],
            ms: vec![1, 512],
            sparsities: vec![0.5, 0.9],
            structured: true,
            backward: true,
            seconds_per_cell: 0.15,
        }
    }
}

/// Median wall time in ms of `f` (one warm-up run, then repetitions sized to `seconds`).
pub fn median_ms(seconds: f64, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let once = t.elapsed().as_secs_f64();
    let reps = ((seconds / once.max(1e-9)) as usize).clamp(3, 25);
    let mut v: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// A deterministic pseudo-random stream (splitmix64) so the grid needs no rand dependency.
fn stream(seed: u64) -> impl FnMut() -> u64 {
    let mut s = seed;
    move || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn unit(r: &mut impl FnMut() -> u64) -> f64 {
    (r() >> 11) as f64 / (1u64 << 53) as f64
}

/// Random mask with density `1 - sparsity`, kept in `(r, 1)` blocks along the output dimension.
pub fn random_block_mask(n: usize, k: usize, r: usize, sparsity: f64, seed: u64) -> Bitmask {
    let mut g = stream(seed);
    let mut keep = vec![false; n * k];
    for bi in 0..n / r {
        for j in 0..k {
            if unit(&mut g) >= sparsity {
                for i in 0..r {
                    keep[(bi * r + i) * k + j] = true;
                }
            }
        }
    }
    Bitmask::from_bools(n, k, &keep).expect("sizes match")
}

/// A 2:4 mask keeping two random positions of every group of four.
pub fn random_nm_mask(n: usize, k: usize, seed: u64) -> Bitmask {
    let mut g = stream(seed);
    let mut keep = vec![false; n * k];
    for gi in 0..n * k / 4 {
        let a = (g() % 4) as usize;
        let b = (a + 1 + (g() % 3) as usize) % 4;
        keep[gi * 4 + a] = true;
        keep[gi * 4 + b] = true;
    }
    Bitmask::from_bools(n, k, &keep).expect("sizes match")
}

fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut g = stream(seed);
    (0..len).map(|_| (unit(&mut g) * 2.0 - 1.0) as f32).collect()
}

/// Runs the grid, calling `emit` for every row as it is measured.
pub fn run(cfg: &BenchConfig, mut emit: impl FnMut(&BenchRow)) -> Vec<BenchRow> {
    let mut rows = Vec::new();
    let mut push = |row: BenchRow| {
        emit(&row);
        rows.push(row);
    };
    for &(k, n) in &cfg.shapes {
        let w = values(n * k, 1);
        let bias = values(n, 2);
        for &m in &cfg.ms {
            let x = values(m * k, 3);
            let dy = values(m * n, 4);
            let mut y = vec![0f32; m * n];
            let mut dx = vec![0f32; m * k];
            let mut dw = vec![0f32; n * k];
            let row = |sparsity: f64, format: &str, op: &str, imp: &str, ms: f64| BenchRow {
                k,
                n,
                m,
                sparsity,
                format: format.into(),
                op: op.into(),
                imp: imp.into(),
                median_ms: ms,
            };
            for (imp, name) in [(DenseImpl::Faer, "faer"), (DenseImpl::MatrixMultiply, "matrixmultiply")] {
                let t = median_ms(cfg.seconds_per_cell, || {
                    dense_linear_with(imp, &x, &w, Some(&bias), m, n, k, &mut y).expect("sizes match")
                });
                push(row(0.0, "dense", "forward", name, t));
            }
            if cfg.backward {
                let t = median_ms(cfg.seconds_per_cell, || {
                    dense_linear_backward(&x, &w, &dy, m, n, k, &mut dx, &mut dw).expect("sizes match")
                });
                push(row(0.0, "dense", "backward", "faer", t));
            }
            let mut formats: Vec<(f64, Box<dyn SparseMatrix>)> = Vec::new();
            for &s in &cfg.sparsities {
                let mask = random_block_mask(n, k, 1, s, 5);
                formats.push((s, Box::new(Csr::from_dense(&w, n, k, &mask).expect("sizes match"))));
                if cfg.structured && n % 4 == 0 {
                    let mask = random_block_mask(n, k, 4, s, 6);
                    formats.push((s, Box::new(Bsr::from_dense(&w, n, k, (4, 1), &mask).expect("sizes match"))));
                }
            }
            if cfg.structured && k % 4 == 0 {
                let mask = random_nm_mask(n, k, 7);
                formats.push((0.5, Box::new(NmSparse::from_dense(&w, n, k, (2, 4), &mask).expect("sizes match"))));
            }
            // int8 (per-channel weights, per-token activations): dense, then each CSR mask.
            for s in std::iter::once(0.0).chain(cfg.sparsities.iter().copied()) {
                let mask = random_block_mask(n, k, 1, s, 5);
                let wm: Vec<f32> = (0..n * k).map(|i| if mask.get(i / k, i % k) { w[i] } else { 0.0 }).collect();
                let q = crate::QuantLinear::from_dense(&wm, n, k).expect("sizes match");
                let t = median_ms(cfg.seconds_per_cell, || q.forward(&x, m, Some(&bias), false, &mut y).expect("sizes match"));
                push(row(s, "int8", "forward", "sprig", t));
            }
            for (s, f) in &formats {
                let name = f.format_name().replace("-u16", "").replace("-u32", "");
                let t = median_ms(cfg.seconds_per_cell, || {
                    f.forward(&x, m, Some(&bias), &mut y).expect("sizes match")
                });
                push(row(*s, &name, "forward", "sprig", t));
                if cfg.backward {
                    let mut g = vec![0f32; f.nnz()];
                    let t = median_ms(cfg.seconds_per_cell, || {
                        f.backward_input(&dy, m, &mut dx).expect("sizes match");
                        f.grad_values(&dy, &x, m, &mut g).expect("sizes match");
                    });
                    push(row(*s, &name, "backward", "sprig", t));
                }
            }
        }
    }
    rows
}

/// Threads the kernels use (rayon's global pool; set `RAYON_NUM_THREADS` to change).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// The machine a benchmark ran on: what a result file needs to say next to its numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    /// CPU model name (`/proc/cpuinfo` on Linux; the architecture elsewhere).
    pub cpu: String,
    /// The kernels' SIMD path ([`crate::simd_level`]).
    pub simd: &'static str,
    /// The int8 kernels' path ([`crate::int8_path`]: `avx512-vnni`, `avx2`, `portable`).
    pub int8: &'static str,
    /// Rayon threads the kernels use.
    pub threads: usize,
    /// Logical CPUs of the machine.
    pub cpus: usize,
}

impl Machine {
    /// Detects this machine.
    pub fn detect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { cpu, simd: crate::simd_level(), int8: crate::int8_path(), threads: threads(), cpus }
    }
}

/// The current UTC time as ISO 8601 (`2026-11-27T10:28:20Z`), without a date crate.
pub fn utc_now_iso8601() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3_600, rem % 3_600 / 60, rem % 60)
}

fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The `"provenance"` object of a benchmark result file, as JSON text: the command (pass it with
/// paths relative to the repository root), this machine ([`Machine::detect`]), the date (UTC) and
/// the commit (`None` when unknown, e.g. the binary was not built from a git checkout).
pub fn provenance_json(command: &str, commit: Option<&str>) -> String {
    let m = Machine::detect();
    format!(
        "{{\"command\": {}, \"machine\": {{\"cpu\": {}, \"simd\": {}, \"int8\": {}, \"threads\": {}, \"cpus\": {}}}, \"date\": {}, \"commit\": {}}}",
        json_str(command),
        json_str(&m.cpu),
        json_str(m.simd),
        json_str(m.int8),
        m.threads,
        m.cpus,
        json_str(&utc_now_iso8601()),
        commit.map_or_else(|| "null".to_string(), json_str)
    )
}

#[cfg(test)]
mod provenance_tests {
    use super::*;

    #[test]
    fn provenance_is_one_json_object_with_the_four_keys() {
        let p = provenance_json("sprig bench kernels --json \"a b\".json", Some("abc123"));
        assert!(p.starts_with('{') && p.ends_with('}'));
        for key in ["\"command\": \"sprig bench kernels --json \\\"a b\\\".json\"", "\"machine\"", "\"simd\"", "\"date\"", "\"commit\": \"abc123\""] {
            assert!(p.contains(key), "{key} missing in {p}");
        }
        assert!(provenance_json("x", None).contains("\"commit\": null"));
    }

    #[test]
    fn utc_date_has_the_iso_shape() {
        let d = utc_now_iso8601();
        assert_eq!(d.len(), 20, "{d}");
        assert!(d.starts_with("20") && d.ends_with('Z') && &d[10..11] == "T", "{d}");
    }
}
