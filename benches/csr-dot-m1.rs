//! Stand-alone CSR dot-product loops for M = 1 (no rayon): four scalar chains, AVX2 gathers, eight
//! FMA chains; 1536 rows of ~38 random columns of 384. Ceiling probe for the small-batch kernel.
//! `rustc -C opt-level=3 [-C target-feature=+avx2,+fma] benches/csr-dot-m1.rs -o csrdot && ./csrdot`
use std::arch::x86_64::*;
use std::time::Instant;
#[inline(never)]
fn v_scalar(rp: &[usize], cols: &[u16], w: &[f32], x: &[f32], y: &mut [f32]) {
    for r in 0..y.len() {
        let (s, e) = (rp[r], rp[r + 1]);
        let (c, ww) = (&cols[s..e], &w[s..e]);
        let n = c.len(); let mut t = 0;
        let (mut s0, mut s1, mut s2, mut s3) = (0f32, 0f32, 0f32, 0f32);
        unsafe {
            while t + 4 <= n {
                s0 += *ww.get_unchecked(t) * *x.get_unchecked(*c.get_unchecked(t) as usize);
                s1 += *ww.get_unchecked(t+1) * *x.get_unchecked(*c.get_unchecked(t+1) as usize);
                s2 += *ww.get_unchecked(t+2) * *x.get_unchecked(*c.get_unchecked(t+2) as usize);
                s3 += *ww.get_unchecked(t+3) * *x.get_unchecked(*c.get_unchecked(t+3) as usize);
                t += 4;
            }
        }
        let mut acc = (s0 + s1) + (s2 + s3);
        while t < n { acc += ww[t] * x[c[t] as usize]; t += 1; }
        y[r] = acc;
    }
}
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn v_gather(rp: &[usize], cols: &[u16], w: &[f32], x: &[f32], y: &mut [f32]) {
    for r in 0..y.len() {
        let (s, e) = (rp[r], rp[r + 1]);
        let n = e - s; let mut t = 0;
        let (cp, wp) = (cols.as_ptr().add(s), w.as_ptr().add(s));
        let mut a0 = _mm256_setzero_ps(); let mut a1 = _mm256_setzero_ps();
        while t + 16 <= n {
            let i0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(cp.add(t) as *const __m128i));
            let i1 = _mm256_cvtepu16_epi32(_mm_loadu_si128(cp.add(t + 8) as *const __m128i));
            let g0 = _mm256_i32gather_ps::<4>(x.as_ptr(), i0);
            let g1 = _mm256_i32gather_ps::<4>(x.as_ptr(), i1);
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(t)), g0, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(t + 8)), g1, a1);
            t += 16;
        }
        if t + 8 <= n {
            let i0 = _mm256_cvtepu16_epi32(_mm_loadu_si128(cp.add(t) as *const __m128i));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(wp.add(t)), _mm256_i32gather_ps::<4>(x.as_ptr(), i0), a0);
            t += 8;
        }
        let v = _mm256_add_ps(a0, a1);
        let h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        let h = _mm_add_ss(h, _mm_movehdup_ps(h));
        let mut acc = _mm_cvtss_f32(h);
        while t < n { acc += *wp.add(t) * *x.get_unchecked(*cp.add(t) as usize); t += 1; }
        *y.get_unchecked_mut(r) = acc;
    }
}
// flat: one pass over all nnz, row ends known; 8 chains scalar with fma
#[inline(never)]
#[target_feature(enable = "avx2,fma")]
unsafe fn v_scalar_fma8(rp: &[usize], cols: &[u16], w: &[f32], x: &[f32], y: &mut [f32]) {
    for r in 0..y.len() {
        let (s, e) = (rp[r], rp[r + 1]);
        let n = e - s; let mut t = 0;
        let (cp, wp, xp) = (cols.as_ptr().add(s), w.as_ptr().add(s), x.as_ptr());
        let mut a = [0f32; 8];
        while t + 8 <= n {
            for u in 0..8 { a[u] = (*wp.add(t+u)).mul_add(*xp.add(*cp.add(t+u) as usize), a[u]); }
            t += 8;
        }
        let mut acc = ((a[0]+a[1])+(a[2]+a[3]))+((a[4]+a[5])+(a[6]+a[7]));
        while t < n { acc = (*wp.add(t)).mul_add(*xp.add(*cp.add(t) as usize), acc); t += 1; }
        *y.get_unchecked_mut(r) = acc;
    }
}
fn main() {
    let (k, n, per): (usize, usize, usize) = (384, 1536, 38);
    let mut st = 12345u64;
    let mut rnd = || { st ^= st << 13; st ^= st >> 7; st ^= st << 17; st };
    let mut rp = vec![0usize]; let mut cols = vec![]; 
    for _ in 0..n { let len = per - 6 + (rnd() % 13) as usize; let mut c: Vec<u16> = (0..len).map(|_| (rnd() % k as u64) as u16).collect(); c.sort(); c.dedup(); cols.extend(&c); rp.push(cols.len()); }
    let w: Vec<f32> = (0..cols.len()).map(|i| (i % 17) as f32 * 0.1).collect();
    let x: Vec<f32> = (0..k).map(|i| (i % 13) as f32 * 0.1).collect();
    let mut y = vec![0f32; n];
    let nnz = cols.len();
    for round in 0..3 {
        for (name, f) in [("scalar4", 0), ("gather16", 1), ("fma8", 2)] {
            let mut v: Vec<f64> = (0..200).map(|_| { let t = Instant::now(); for _ in 0..20 { unsafe { match f { 0 => v_scalar(&rp, &cols, &w, &x, &mut y), 1 => v_gather(&rp, &cols, &w, &x, &mut y), _ => v_scalar_fma8(&rp, &cols, &w, &x, &mut y) } } } t.elapsed().as_secs_f64() * 1e6 / 20.0 }).collect();
            v.sort_by(|a, b| a.total_cmp(b));
            println!("round {round} {name}: {:.1} us  ({:.2} ns/nnz, y0 {})", v[100], v[100] * 1e3 / nnz as f64, y[0]);
        }
    }
}
