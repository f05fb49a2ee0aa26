//! MoEfication's split: balanced groups of neurons, tighter than a random split, and a layer that
//! gives back the dense FFN exactly when every expert is chosen.
use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sprig_moe::{balanced_clusters, split_ffn, upcycle_ffn, within_group_spread, Capacity, RouterConfig};

fn randv(r: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

#[test]
fn clusters_are_balanced_and_tighter_than_a_random_split() {
    let (f, h, e) = (64, 16, 8);
    let mut r = ChaCha8Rng::seed_from_u64(1);
    // Neurons drawn around 8 directions, so there is structure to find.
    let centers = randv(&mut r, e * h);
    let w1: Vec<f32> = (0..f).flat_map(|i| { let c = (i * 5) % e; (0..h).map(|j| centers[c * h + j] + 0.3 * r.random_range(-1.0f32..1.0)).collect::<Vec<_>>() }).collect();
    let g = balanced_clusters(&w1, f, h, e, 10, 3).unwrap();
    assert!(g.iter().all(|x| x.len() == f / e));
    let mut all: Vec<usize> = g.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..f).collect::<Vec<_>>());
    // The planted grouping (neuron i around direction 5i mod 8) and a random balanced split.
    let planted: Vec<Vec<usize>> = (0..e).map(|c| (0..f).filter(|i| (i * 5) % e == c).collect()).collect();
    let mut perm: Vec<usize> = (0..f).collect();
    for i in (1..f).rev() {
        perm.swap(i, r.random_range(0..=i));
    }
    let random: Vec<Vec<usize>> = perm.chunks(f / e).map(<[usize]>::to_vec).collect();
    let (s_km, s_rand, s_plant) = (within_group_spread(&w1, h, &g), within_group_spread(&w1, h, &random), within_group_spread(&w1, h, &planted));
    assert!(s_km < 0.5 * s_rand, "k-means {s_km} vs random {s_rand}");
    assert!(s_km <= s_plant * 1.0001, "k-means {s_km} vs planted {s_plant}");
    // Same seed, same groups.
    assert_eq!(g, balanced_clusters(&w1, f, h, e, 10, 3).unwrap());
    assert!(balanced_clusters(&w1, f, h, 7, 10, 3).is_err());
}

/// A random dense FFN `(w1 [f, h], b1, w2 [h, f], b2)`, inputs `x [t, h]` and its output.
fn dense_ffn(f: usize, h: usize, t: usize, seed: u64) -> ([Tensor; 4], Tensor, Tensor) {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let d = Device::Cpu;
    let w1 = Tensor::from_vec(randv(&mut r, f * h), (f, h), &d).unwrap();
    let b1 = Tensor::from_vec(randv(&mut r, f), f, &d).unwrap();
    let w2 = Tensor::from_vec(randv(&mut r, h * f), (h, f), &d).unwrap();
    let b2 = Tensor::from_vec(randv(&mut r, h), h, &d).unwrap();
    let x = Tensor::from_vec(randv(&mut r, t * h), (t, h), &d).unwrap();
    let dense = x.matmul(&w1.t().unwrap()).unwrap().broadcast_add(&b1).unwrap().gelu_erf().unwrap().matmul(&w2.t().unwrap()).unwrap().broadcast_add(&b2).unwrap();
    ([w1, b1, w2, b2], x, dense)
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn an_upcycled_layer_starts_as_the_dense_ffn_and_its_router_learns_once_experts_differ() {
    let (f, h, e, t) = (32, 16, 4, 24);
    let ([w1, b1, w2, b2], x, dense) = dense_ffn(f, h, t, 5);
    let moe = upcycle_ffn(&w1, &b1, &w2, &b2, RouterConfig::top_k(e, 2), 7).unwrap();
    assert_eq!(moe.experts.len(), e);
    assert_eq!(moe.experts[0].w1.dims(), &[f, h], "every expert is the whole FFN");
    let out = moe.forward(&x, None).unwrap();
    let diff = max_abs(&(&out.y - &dense).unwrap());
    assert!(diff < 1e-4, "max |upcycled - dense| = {diff}");
    assert_eq!(out.stats.tokens_per_expert.iter().sum::<usize>(), 2 * t, "dropless: every token gets 2 experts");
    // The router's gradient from a task loss: zero while the experts are identical copies, not
    // once one of them differs.
    let c = Tensor::from_vec(randv(&mut ChaCha8Rng::seed_from_u64(9), t * h), (t, h), &Device::Cpu).unwrap();
    let router_grad = |m: &sprig_moe::MoeFfn| {
        let loss = (m.forward(&x, None).unwrap().y * &c).unwrap().sum_all().unwrap();
        max_abs(loss.backward().unwrap().get(m.router.as_tensor()).unwrap())
    };
    let g0 = router_grad(&moe);
    assert!(g0 < 1e-4, "router gradient with identical experts: {g0}");
    let w = moe.experts[0].w2.as_tensor();
    moe.experts[0].w2.set(&(w + w.randn_like(0.0, 0.5).unwrap()).unwrap()).unwrap();
    let g1 = router_grad(&moe);
    assert!(g1 > 100.0 * g0.max(1e-6), "router gradient once an expert differs: {g1} (identical: {g0})");
    // Shapes that disagree are named.
    let err = upcycle_ffn(&w1, &b1, &w1, &b2, RouterConfig::top_k(e, 2), 7).unwrap_err().to_string();
    assert!(err.contains("w2"), "{err}");
}

#[test]
fn all_experts_chosen_give_back_the_dense_ffn() {
    let (f, h, e, t) = (64, 16, 8, 10);
    let ([w1, b1, w2, b2], x, dense) = dense_ffn(f, h, t, 2);
    let groups = balanced_clusters(&w1.flatten_all().unwrap().to_vec1::<f32>().unwrap(), f, h, e, 5, 0).unwrap();
    let all = RouterConfig { capacity: Capacity::Dropless, normalize: false, ..RouterConfig::top_k(e, e) };
    let moe = split_ffn(&w1, &b1, &w2, &b2, &groups, all).unwrap();
    let y = moe.forward(&x, None).unwrap().y;
    let diff = max_abs(&(y - &dense).unwrap());
    assert!(diff < 1e-4, "max |moe - dense| = {diff}");
    // Two of eight experts: a different (cheaper) function.
    let two = RouterConfig { capacity: Capacity::Dropless, ..RouterConfig::top_k(e, 2) };
    let moe2 = split_ffn(&w1, &b1, &w2, &b2, &groups, two).unwrap();
    assert_eq!(moe2.forward(&x, None).unwrap().stats.tokens_per_expert.iter().sum::<usize>(), 2 * t);
    // A partition that repeats a neuron is refused.
    let mut bad = groups.clone();
    bad[0][0] = bad[1][0];
    assert!(split_ffn(&w1, &b1, &w2, &b2, &bad, RouterConfig::top_k(e, 2)).is_err());
}

#[test]
fn a_trained_router_finds_the_most_active_experts() {
    let (f, h, e, t, k) = (128, 32, 8, 2048, 2);
    let mut r = ChaCha8Rng::seed_from_u64(4);
    let d = Device::Cpu;
    let w1 = Tensor::from_vec(randv(&mut r, f * h), (f, h), &d).unwrap();
    let b1 = Tensor::from_vec(randv(&mut r, f), f, &d).unwrap();
    let w2 = Tensor::from_vec(randv(&mut r, h * f), (h, f), &d).unwrap();
    let b2 = Tensor::from_vec(randv(&mut r, h), h, &d).unwrap();
    let groups = balanced_clusters(&w1.flatten_all().unwrap().to_vec1::<f32>().unwrap(), f, h, e, 10, 0).unwrap();
    let mut moe = split_ffn(&w1, &b1, &w2, &b2, &groups, RouterConfig { capacity: Capacity::Dropless, ..RouterConfig::top_k(e, k) }).unwrap();
    let x = Tensor::from_vec(randv(&mut r, t * h), (t, h), &d).unwrap();
    let held_out = Tensor::from_vec(randv(&mut r, 512 * h), (512, h), &d).unwrap();
    let before = sprig_moe::router_recall(&moe, &held_out, k).unwrap();
    sprig_moe::train_router(&mut moe, &x, k, 300, 0.05).unwrap();
    let after = sprig_moe::router_recall(&moe, &held_out, k).unwrap();
    eprintln!("router recall of the top-{k} experts on held-out tokens: {before:.3} (zero router) -> {after:.3} (chance {:.3})", k as f64 / e as f64);
    assert!(after > 0.6 && after > before + 0.2, "{before} -> {after}");
}
