//! The int8 kernel in plain Rust (any CPU; the reference the VNNI path is tested against).
use super::{epilogue_row, pack_panel, quantize_token, store_tile, Job, Scratch, LANES, TILE_ROWS};

pub(super) fn task(job: &Job, s: &mut Scratch) {
    pack_panel(job, s, quantize_token);
    let w = job.w;
    let (v, pw) = (job.v, job.v * LANES);
    let mut acc = vec![0i32; pw];
    for n0 in (job.r0..job.r1).step_by(TILE_ROWS) {
        let n1 = (n0 + TILE_ROWS).min(job.r1);
        for n in n0..n1 {
            acc.fill(0);
            for j in w.row_ptr[n] as usize..w.row_ptr[n + 1] as usize {
                let wb = w.weights[j].to_le_bytes().map(|b| b as i8 as i32);
                let base = w.quad[j] as usize * v * 64;
                for (t, a) in acc.iter_mut().enumerate() {
                    let p = base + (t / LANES) * 64 + (t % LANES) * 4;
                    let xb = &s.panel[p..p + 4];
                    *a += (0..4).map(|o| xb[o] as i32 * wb[o]).sum::<i32>();
                }
            }
            epilogue_row(job, n, n0, &acc, s);
        }
        // SAFETY: this task alone writes tokens m0..m0+lanes, rows n0..n1 of y.
        unsafe { store_tile(job, n0, n1, s) };
    }
}
