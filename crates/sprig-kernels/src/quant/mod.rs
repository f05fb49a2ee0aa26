//! int8 inference for a (sparse) linear layer `Y = X·Wᵀ + b`: weights quantized symmetrically per
//! output channel, activations per token at run time, products summed in int32 by VNNI's
//! `vpdpbusd` (u8 x i8, four products per 32-bit lane) where the CPU has AVX-512 VNNI.
//!
//! The weight is stored as *quads*: four consecutive input columns of one output row, kept when
//! any of its four int8 weights is non-zero (a 1x4-block CSR of the quantized matrix). A quad is
//! exactly one `vpdpbusd` operand: its four weights broadcast to every lane, multiplied with four
//! consecutive activations of 16 tokens. An unstructured 90%-sparse row keeps ~34% of its quads
//! (1 - 0.9⁴), so the unstructured pattern costs no more instructions than f32 CSR, while the
//! activations it reads are a quarter of the bytes.
//!
//! Quantization (the symmetric scheme of Jacob et al. 2018, per channel / per token as in
//! Dettmers et al. 2022's vector-wise quantization, without their outlier split):
//! `w_q = round(w / s_w)`, `s_w = max|w_row| / 127`; `x_q = round(x / s_x)`, `s_x = max|x_token| / 127`,
//! stored as `x_q + 128` (u8, what `vpdpbusd` multiplies); `y = s_x·s_w·(Σ (x_q+128)·w_q − 128·Σ w_q) + b`.
//! Inference only: there is no backward.
use crate::error::{check_len, KernelError, Result};
use crate::kernels::SimdLevel;
use rayon::prelude::*;

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
mod portable;
#[cfg(target_arch = "x86_64")]
mod vnni;

/// Tokens per panel vector (one 512-bit register of u8 quads holds 16 tokens x 4 columns).
const LANES: usize = 16;
/// Panel vectors per task: 64 tokens share each broadcast weight quad.
const MAX_V: usize = 4;
/// Output rows written per tile (one 16x16 transpose per panel vector).
const TILE_ROWS: usize = 16;

/// The int8 kernels: AVX-512 VNNI, plain AVX2 (`vpmaddwd` on widened bytes), or portable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Vnni,
    Avx2,
    Portable,
}

/// Which int8 path runs: `"avx512-vnni"`, `"avx2"` or `"portable"` (`SPRIG_SIMD` caps it like the
/// f32 kernels: `avx2` on an AVX-512 machine runs the AVX2 one).
pub fn int8_path() -> &'static str {
    match path() {
        Path::Vnni => "avx512-vnni",
        Path::Avx2 => "avx2",
        Path::Portable => "portable",
    }
}

fn path() -> Path {
    #[cfg(target_arch = "x86_64")]
    {
        match crate::simd() {
            SimdLevel::Avx512 if std::arch::is_x86_feature_detected!("avx512vnni") && std::arch::is_x86_feature_detected!("avx512bw") => Path::Vnni,
            SimdLevel::Avx512 | SimdLevel::Avx2 => Path::Avx2,
            SimdLevel::Portable => Path::Portable,
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = SimdLevel::Portable;
        Path::Portable
    }
}

/// A weight `W [rows, cols]` quantized to int8 per output row, stored as non-zero quads.
#[derive(Clone, Debug)]
pub struct QuantLinear {
    rows: usize,
    cols: usize,
    /// Row `i`'s quads are `row_ptr[i]..row_ptr[i + 1]`.
    row_ptr: Vec<u32>,
    /// Quad index (input columns `4q..4q+4`) of each stored quad.
    quad: Vec<u32>,
    /// The quad's four int8 weights, little-endian in one `i32` (column `4q` in the low byte).
    weights: Vec<i32>,
    /// Per-row scale `s_w`.
    scale: Vec<f32>,
    /// Per-row `128·Σ w_q`: what the +128 offset of the activations adds.
    offset: Vec<i32>,
    /// Weights that were non-zero in f32 (for reports).
    nonzero_f32: usize,
}

impl QuantLinear {
    /// Quantizes a row-major `[rows, cols]` f32 weight (zeros stay zeros, so a pruned weight keeps
    /// its sparsity; a weight that rounds to 0 is dropped too).
    pub fn from_dense(w: &[f32], rows: usize, cols: usize) -> Result<Self> {
        check_len("dense matrix", w.len(), rows * cols)?;
        if rows == 0 || cols == 0 {
            return Err(KernelError::Shape(format!("int8 linear: {rows}x{cols} has no weights")));
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(KernelError::Shape(format!("int8 linear: weight ({}, {}) is {}", i / cols, i % cols, w[i])));
        }
        let nq = cols.div_ceil(4);
        let (mut row_ptr, mut quad, mut weights) = (vec![0u32], Vec::new(), Vec::new());
        let (mut scale, mut offset) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
        for r in 0..rows {
            let row = &w[r * cols..(r + 1) * cols];
            let amax = row.iter().fold(0f32, |a, v| a.max(v.abs()));
            let s = if amax > 0.0 { amax / 127.0 } else { 1.0 };
            let mut sum = 0i32;
            for q in 0..nq {
                let mut b = [0i8; 4];
                for (o, bo) in b.iter_mut().enumerate() {
                    if let Some(&v) = row.get(4 * q + o) {
                        *bo = (v / s).round_ties_even().clamp(-127.0, 127.0) as i8;
                    }
                }
                if b.iter().any(|&v| v != 0) {
                    sum += b.iter().map(|&v| v as i32).sum::<i32>();
                    quad.push(q as u32);
                    weights.push(i32::from_le_bytes(b.map(|v| v as u8)));
                }
            }
            row_ptr.push(quad.len() as u32);
            scale.push(s);
            offset.push(128 * sum);
        }
        Ok(Self { rows, cols, row_ptr, quad, weights, scale, offset, nonzero_f32: w.iter().filter(|v| **v != 0.0).count() })
    }

    /// Output features N.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features K.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Stored quads.
    pub fn quads(&self) -> usize {
        self.quad.len()
    }
    /// Non-zero int8 weights (after rounding).
    pub fn nonzero(&self) -> usize {
        self.weights.iter().map(|w| w.to_le_bytes().iter().filter(|&&b| b != 0).count()).sum()
    }
    /// Weights that were non-zero before quantization.
    pub fn nonzero_f32(&self) -> usize {
        self.nonzero_f32
    }
    /// Bytes held by weights, quad indices, row pointers, scales and offsets.
    pub fn memory_bytes(&self) -> usize {
        4 * (self.quad.len() + self.weights.len() + self.row_ptr.len() + self.scale.len() + self.offset.len())
    }

    /// The dequantized weight `s_w·w_q`, row-major `[rows, cols]` (what the kernel multiplies by).
    pub fn dequantized(&self) -> Vec<f32> {
        let mut d = vec![0f32; self.rows * self.cols];
        for r in 0..self.rows {
            for j in self.row_ptr[r] as usize..self.row_ptr[r + 1] as usize {
                for (o, b) in self.weights[j].to_le_bytes().iter().enumerate() {
                    let c = 4 * self.quad[j] as usize + o;
                    if c < self.cols {
                        d[r * self.cols + c] = *b as i8 as f32 * self.scale[r];
                    }
                }
            }
        }
        d
    }

    /// `y [m, rows] = x [m, cols]·Wᵀ (+ bias)`, then GELU (erf) when `gelu`; `y` fully overwritten.
    pub fn forward(&self, x: &[f32], m: usize, bias: Option<&[f32]>, gelu: bool, y: &mut [f32]) -> Result<()> {
        check_len("x (m*cols)", x.len(), m * self.cols)?;
        check_len("y (m*rows)", y.len(), m * self.rows)?;
        if let Some(b) = bias {
            check_len("bias", b.len(), self.rows)?;
        }
        if m == 0 {
            return Ok(());
        }
        let path = path();
        // The AVX2 kernel keeps 4 accumulators per panel vector in 16 registers: at most 2.
        let cap = if path == Path::Avx2 { 2 } else { MAX_V };
        let v = m.div_ceil(LANES).min(panel_vectors(self.cols)).min(cap);
        let pw = v * LANES;
        let np = m.div_ceil(pw);
        // Enough tasks for every thread: split the rows when there are few panels.
        let want = 4 * rayon::current_num_threads();
        let row_tiles = self.rows.div_ceil(TILE_ROWS);
        let groups = want.div_ceil(np).clamp(1, row_tiles);
        let per = row_tiles.div_ceil(groups) * TILE_ROWS;
        let groups = self.rows.div_ceil(per);
        let yp = SyncPtr(y.as_mut_ptr());
        (0..np * groups).into_par_iter().for_each_init(
            || Scratch {
                panel: vec![0u8; self.cols.div_ceil(4) * 4 * pw],
                row: vec![0u8; LANES * row_stride(self.cols)],
                sx: vec![0f32; pw],
                tile: vec![0f32; TILE_ROWS * pw],
            },
            |s, t| {
                let (pi, gi) = (t / groups, t % groups);
                let m0 = pi * pw;
                let job = Job {
                    w: self,
                    x,
                    m0,
                    lanes: pw.min(m - m0),
                    v,
                    r0: gi * per,
                    r1: ((gi + 1) * per).min(self.rows),
                    bias,
                    gelu,
                    y: yp.get(),
                };
                // SAFETY (both SIMD arms): `path` checked the CPU features; `job` addresses rows
                // r0..r1 and tokens m0..m0+lanes of `y`, disjoint from every other task's.
                #[cfg(target_arch = "x86_64")]
                match path {
                    Path::Vnni => return unsafe { vnni::task(&job, s) },
                    Path::Avx2 => return unsafe { avx2::task(&job, s) },
                    Path::Portable => {}
                }
                portable::task(&job, s);
            },
        );
        Ok(())
    }
}

/// A raw output pointer shared by tasks that write disjoint parts.
#[derive(Clone, Copy)]
struct SyncPtr(*mut f32);
unsafe impl Send for SyncPtr {}
unsafe impl Sync for SyncPtr {}
impl SyncPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Per-thread buffers: the quantized panel, one token's bytes, the panel's token scales and an
/// output tile of `TILE_ROWS` rows x panel width.
struct Scratch {
    panel: Vec<u8>,
    row: Vec<u8>,
    sx: Vec<f32>,
    tile: Vec<f32>,
}

/// One task: tokens `m0..m0+lanes` (a panel of `16·v`) and output rows `r0..r1`.
struct Job<'a> {
    w: &'a QuantLinear,
    x: &'a [f32],
    m0: usize,
    lanes: usize,
    v: usize,
    r0: usize,
    r1: usize,
    bias: Option<&'a [f32]>,
    gelu: bool,
    y: *mut f32,
}

/// Row `n` of the output tile from its int32 dot products (one per panel token):
/// `(Σ (x_q+128)·w_q − 128·Σ w_q)·s_x·s_w + b`.
#[inline(always)]
fn epilogue_row(job: &Job, n: usize, n0: usize, dots: &[i32], s: &mut Scratch) {
    let (w, pw) = (job.w, job.v * LANES);
    let b = job.bias.map_or(0.0, |b| b[n]);
    let out = &mut s.tile[(n - n0) * pw..(n - n0 + 1) * pw];
    for t in 0..pw {
        out[t] = (dots[t] - w.offset[n]) as f32 * (s.sx[t] * w.scale[n]) + b;
    }
}

/// GELU over the tile's rows `n0..n1` when asked, then each token's outputs into row-major `y`.
///
/// # Safety
/// `job.y` must address `m` rows of `w.rows` floats, tokens `m0..m0+lanes` and rows `n0..n1` of
/// it written by this task alone.
#[inline(always)]
unsafe fn store_tile(job: &Job, n0: usize, n1: usize, s: &mut Scratch) {
    let (rows, pw) = (job.w.rows, job.v * LANES);
    if job.gelu {
        crate::nn::math::gelu_inplace(&mut s.tile[..(n1 - n0) * pw]);
    }
    for t in 0..job.lanes {
        for n in n0..n1 {
            // SAFETY: see the function's contract.
            unsafe { *job.y.add((job.m0 + t) * rows + n) = s.tile[(n - n0) * pw + t] };
        }
    }
}

/// Panel vectors for `cols` inputs: the panel (`16·v·cols` bytes) within ~32 KiB, so that the
/// quads a row reads at random stay in L1. (K=1536 N=384 M=4096, 96%, one thread, Xeon: v = 1 /
/// 2 / 4 took 6.5 / 7.1 / 10.2 ms; K=384 N=1536 at 90%: 12.7 / 9.7 / 10.4 ms.)
fn panel_vectors(cols: usize) -> usize {
    ((32 << 10) / (LANES * cols.max(1))).clamp(1, MAX_V)
}

/// Bytes per quantized token in the VNNI packer's scratch: whole 16-quad (64-byte) blocks.
fn row_stride(cols: usize) -> usize {
    cols.div_ceil(64) * 64
}

/// Quantizes token `x` (one row of X) to `x_q + 128` in `out` (`cols` rounded up to a multiple of
/// 4, the tail 128 = zero); returns the scale `s_x` (0 for an all-zero token).
#[inline(always)]
pub(super) fn quantize_token(x: &[f32], out: &mut [u8]) -> f32 {
    // 16 independent lanes, so that the compiler vectorises the reduction; NaN and ±inf found
    // by a separate (integer, vectorisable) test.
    let mut lanes = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = l.max(v.abs());
        }
    }
    let amax = chunks.remainder().iter().fold(lanes.iter().fold(0f32, |a, &l| a.max(l)), |a, v| a.max(v.abs()));
    let bad = x.iter().any(|v| !v.is_finite());
    if amax == 0.0 || bad {
        out.fill(128);
        return if bad { f32::NAN } else { 0.0 };
    }
    let inv = 127.0 / amax;
    for (o, v) in out.iter_mut().zip(x) {
        // Round to nearest even through the float's bits (|v·inv| <= 127 < 2^22); `as i32` is a
        // saturating cast that keeps LLVM from vectorising the loop (see `nn::math::exp`).
        let q = ((v * inv + 12_582_912.0).to_bits() as i32).wrapping_sub(0x4B40_0000);
        *o = (q + 128) as u8;
    }
    out[x.len()..].fill(128);
    amax / 127.0
}

/// Fills the panel for `job`: quad `q` holds, for each panel vector `vv`, 16 tokens x 4 bytes
/// (`panel[(q·v + vv)·64 + lane·4 + o]` = column `4q + o` of token `m0 + 16·vv + lane`); tokens past
/// `lanes` are zero.
#[inline(always)]
fn pack_panel(job: &Job, s: &mut Scratch, quantize: impl Fn(&[f32], &mut [u8]) -> f32) {
    let (k, v) = (job.w.cols, job.v);
    let nq = k.div_ceil(4);
    let (panel, row) = (&mut s.panel, &mut s.row[..nq * 4]);
    for (t, st) in s.sx.iter_mut().enumerate().take(v * LANES) {
        let (vv, lane) = (t / LANES, t % LANES);
        if t < job.lanes {
            let m = job.m0 + t;
            *st = quantize(&job.x[m * k..(m + 1) * k], row);
        } else {
            *st = 0.0;
            row.fill(128);
        }
        for q in 0..nq {
            let at = (q * v + vv) * 64 + lane * 4;
            panel[at..at + 4].copy_from_slice(&row[4 * q..4 * q + 4]);
        }
    }
}
