//! Tests on the real files under `sprig_home()`. CI runs `scripts/fetch-assets` first; a missing
//! file fails these tests with the loader's error (which says to run scripts/fetch-assets).

use std::collections::BTreeMap;

use sprig_data::{
    load_image_task, load_text_task, sprig_home, ImageDataset, TextDataset, TextExample,
};

fn text(name: &str, seed: u64) -> TextDataset {
    load_text_task(name, &sprig_home(), seed).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn image(name: &str, seed: u64) -> ImageDataset {
    load_image_task(name, &sprig_home(), seed).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

fn counts(labels: impl IntoIterator<Item = usize>, n_classes: usize) -> Vec<usize> {
    let mut c = vec![0; n_classes];
    for l in labels {
        c[l] += 1;
    }
    c
}

fn text_counts(d: &TextDataset, parts: &[&[TextExample]]) -> Vec<usize> {
    counts(
        parts.iter().flat_map(|p| p.iter().map(|e| e.label)),
        d.classes.len(),
    )
}

/// Class counts over all splits by class name.
fn named_counts(d: &TextDataset) -> BTreeMap<String, usize> {
    let c = text_counts(d, &[&d.train, &d.dev, &d.test]);
    d.classes.iter().cloned().zip(c).collect()
}

/// Every class's share in `part` is within 1 percentage point of its share in `whole`.
fn assert_stratified(name: &str, part: &[usize], whole: &[usize]) {
    let (np, nw) = (
        part.iter().sum::<usize>() as f64,
        whole.iter().sum::<usize>() as f64,
    );
    for (k, (&p, &w)) in part.iter().zip(whole).enumerate() {
        let diff = (p as f64 / np - w as f64 / nw).abs();
        assert!(
            diff <= 0.01,
            "{name}: class {k} share differs by {:.4} ({p}/{np} vs {w}/{nw})",
            diff
        );
    }
}

fn check_split_info(d: &TextDataset) {
    assert_eq!(
        (d.split.train, d.split.dev, d.split.test),
        (d.train.len(), d.dev.len(), d.test.len())
    );
    assert!(d
        .train
        .iter()
        .chain(&d.dev)
        .chain(&d.test)
        .all(|e| e.label < d.classes.len() && !e.text.trim().is_empty()));
}

/// Pooled tasks: 80/10/10 split, sizes sum to the total, every split stratified.
fn check_pooled(d: &TextDataset, total: usize) {
    check_split_info(d);
    assert_eq!(
        d.train.len() + d.dev.len() + d.test.len(),
        total,
        "{}: split sizes must sum to the total",
        d.task
    );
    assert!(d.split.method.contains("80/10/10"), "{}", d.split.method);
    let k = d.classes.len();
    for (part, frac) in [
        (d.dev.len(), 0.1),
        (d.test.len(), 0.1),
        (d.train.len(), 0.8),
    ] {
        assert!(
            (part as f64 - frac * total as f64).abs() <= k as f64,
            "{}: split size {part} is not {frac} of {total}",
            d.task
        );
    }
    let whole = text_counts(d, &[&d.train, &d.dev, &d.test]);
    for part in [&d.train, &d.dev, &d.test] {
        assert_stratified(&d.task, &text_counts(d, &[part]), &whole);
    }
}

/// Official-test tasks: test kept whole, dev a stratified 10% of the official train.
fn check_official(d: &TextDataset, train_total: usize, test_total: usize) {
    check_split_info(d);
    assert_eq!(
        d.train.len() + d.dev.len(),
        train_total,
        "{}: official train size",
        d.task
    );
    assert_eq!(d.test.len(), test_total, "{}: official test size", d.task);
    assert!(d.split.method.contains("official"), "{}", d.split.method);
    assert!((d.dev.len() as f64 - 0.1 * train_total as f64).abs() <= d.classes.len() as f64);
    let whole = text_counts(d, &[&d.train, &d.dev]);
    assert_stratified(&d.task, &text_counts(d, &[&d.dev]), &whole);
    assert_stratified(&d.task, &text_counts(d, &[&d.train]), &whole);
}

fn same_split(a: &TextDataset, b: &TextDataset) -> bool {
    let key = |v: &[TextExample]| {
        v.iter()
            .map(|e| (e.text.clone(), e.label))
            .collect::<Vec<_>>()
    };
    key(&a.train) == key(&b.train) && key(&a.dev) == key(&b.dev) && key(&a.test) == key(&b.test)
}

#[test]
fn rt_sentiment_counts_and_split() {
    let d = text("rt-sentiment", 0);
    assert_eq!(d.classes, ["negative", "positive"]);
    // 10,605 snippets, 37 with score 0 dropped (ASSETS.md).
    assert_eq!(
        named_counts(&d),
        BTreeMap::from([("negative".into(), 5326), ("positive".into(), 5242)])
    );
    check_pooled(&d, 10_568);
}

#[test]
fn sms_spam_counts_and_split() {
    let d = text("sms-spam", 0);
    assert_eq!(d.classes, ["ham", "spam"]);
    assert_eq!(
        named_counts(&d),
        BTreeMap::from([("ham".into(), 4199), ("spam".into(), 638)])
    );
    check_pooled(&d, 4837);
}

#[test]
fn trec6_counts_and_split() {
    let d = text("trec6", 0);
    assert_eq!(d.classes, ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]);
    let expect = [
        ("ABBR", 86),
        ("DESC", 1153),
        ("ENTY", 1245),
        ("HUM", 1215),
        ("LOC", 824),
        ("NUM", 859),
    ];
    assert_eq!(
        named_counts(&d),
        expect.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    );
    check_pooled(&d, 5382);
    // the "COARSE:fine" label is stripped from the question text
    assert!(d
        .train
        .iter()
        .all(|e| !e.text.starts_with(&format!("{}:", d.classes[e.label]))));
}

#[test]
fn r8_counts_and_official_split() {
    let d = text("r8", 0);
    assert_eq!(
        d.classes,
        ["acq", "crude", "earn", "grain", "interest", "money-fx", "ship", "trade"]
    );
    check_official(&d, 5485, 2189);
    assert_eq!(
        text_counts(&d, &[&d.test])[0],
        696,
        "acq in the official R8 test"
    );
}

#[test]
fn twenty_newsgroups_counts_and_official_split() {
    let d = text("20ng", 0);
    assert_eq!(d.classes.len(), 20);
    assert!(d.classes.windows(2).all(|w| w[0] < w[1]), "classes sorted");
    assert_eq!(d.classes[0], "alt.atheism");
    check_official(&d, 11_293, 7528);
}

#[test]
fn bbc_counts_and_split() {
    let d = text("bbc", 0);
    let expect = [
        ("business", 510),
        ("entertainment", 386),
        ("politics", 417),
        ("sports", 511),
        ("tech", 401),
    ];
    assert_eq!(
        named_counts(&d),
        expect.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    );
    check_pooled(&d, 2225);
}

#[test]
fn splits_are_deterministic_and_seed_dependent() {
    for task in ["trec6", "r8"] {
        let (a, b, c) = (text(task, 7), text(task, 7), text(task, 8));
        assert!(
            same_split(&a, &b),
            "{task}: same seed must give the same split"
        );
        assert!(
            !same_split(&a, &c),
            "{task}: another seed must give another split"
        );
        assert_eq!(a.split.seed, 7);
        let json = serde_json::to_string(&a.split).unwrap();
        let back: sprig_data::SplitInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (back.train, back.dev, back.test, back.method),
            (a.train.len(), a.dev.len(), a.test.len(), a.split.method)
        );
    }
}

#[test]
fn subsample_is_stratified_and_seeded() {
    let d = text("rt-sentiment", 0);
    let s = d.subsample(2000, 1000, 5000, 3);
    assert_eq!(
        (s.train.len(), s.dev.len(), s.test.len()),
        (2000, 1000, d.test.len())
    );
    assert_eq!(
        (s.split.train, s.split.dev, s.split.test),
        (2000, 1000, d.test.len())
    );
    assert_stratified(
        "subsample",
        &text_counts(&s, &[&s.train]),
        &text_counts(&d, &[&d.train]),
    );
    assert!(same_split(&s, &d.subsample(2000, 1000, 5000, 3)));
    assert!(!same_split(&s, &d.subsample(2000, 1000, 5000, 4)));
    // every subsampled example comes from the same split of the parent
    let parent: std::collections::HashSet<&str> = d.train.iter().map(|e| e.text.as_str()).collect();
    assert!(s.train.iter().all(|e| parent.contains(e.text.as_str())));
}

#[test]
fn fashion_mnist_counts_pixels_and_split() {
    let d = image("fashion-mnist", 0);
    assert_eq!((d.height, d.width, d.classes.len()), (28, 28, 10));
    assert_eq!(d.classes[0], "T-shirt/top");
    assert_eq!(
        (d.train.len() + d.dev.len(), d.test.len()),
        (60_000, 10_000)
    );
    assert_eq!(d.dev.len(), 6000);
    for s in [&d.train, &d.dev, &d.test] {
        assert_eq!(s.images.len(), s.len() * 28 * 28);
        assert!(s.images.iter().all(|&v| (0.0..=1.0).contains(&v)));
    }
    // balanced: 6,000 per class in train, 1,000 in test; dev exactly 600 per class
    assert_eq!(counts(d.test.labels.iter().copied(), 10), vec![1000; 10]);
    assert_eq!(counts(d.dev.labels.iter().copied(), 10), vec![600; 10]);
    let max = d.train.images.iter().cloned().fold(0.0f32, f32::max);
    assert_eq!(max, 1.0, "pixel 255 maps to 1.0");
    let d2 = image("fashion-mnist", 0);
    assert_eq!(d.dev.labels, d2.dev.labels);
    assert_eq!(d.dev.images[..784 * 3], d2.dev.images[..784 * 3]);
    assert_ne!(d.dev.labels, image("fashion-mnist", 1).dev.labels);
}

#[test]
fn mnist10k_counts_and_split() {
    let d = image("mnist10k", 0);
    assert_eq!(
        d.classes,
        ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
    );
    let all: Vec<usize> = [&d.train, &d.dev, &d.test]
        .iter()
        .flat_map(|s| s.labels.iter().copied())
        .collect();
    assert_eq!(all.len(), 10_000);
    assert_eq!(
        counts(all.iter().copied(), 10),
        vec![1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]
    );
    assert!(d.split.method.contains("80/10/10"));
    let whole = counts(all.iter().copied(), 10);
    for s in [&d.train, &d.dev, &d.test] {
        assert_eq!(s.images.len(), s.len() * 784);
        assert_stratified("mnist10k", &counts(s.labels.iter().copied(), 10), &whole);
    }
    assert!((d.dev.len() as f64 - 1000.0).abs() <= 10.0);
    let mean: f32 = d.test.images.iter().sum::<f32>() / d.test.images.len() as f32;
    assert!(mean > 0.05 && mean < 0.25, "MNIST mean intensity {mean}");
}
