//! Classification metrics: accuracy, macro-F1, multiclass MCC and expected calibration error.
//!
//! All functions return 0.0 on empty input and panic (with a message) when the argument lengths
//! disagree or a label is out of range, which are programming errors rather than bad data.

/// Number of ECE bins used by [`report`] (Guo et al. 2017 use 15).
pub const ECE_BINS: usize = 15;

fn check(pred: &[usize], gold: &[usize], n_classes: usize) {
    assert_eq!(
        pred.len(),
        gold.len(),
        "metrics: {} predictions for {} gold labels",
        pred.len(),
        gold.len()
    );
    if let Some(&l) = pred.iter().chain(gold).find(|&&l| l >= n_classes) {
        panic!("metrics: label {l} out of range for {n_classes} classes");
    }
}

/// Confusion matrix `c[gold][pred]`, row-major `n_classes x n_classes`.
pub fn confusion(pred: &[usize], gold: &[usize], n_classes: usize) -> Vec<usize> {
    check(pred, gold, n_classes);
    let mut c = vec![0usize; n_classes * n_classes];
    for (&p, &g) in pred.iter().zip(gold) {
        c[g * n_classes + p] += 1;
    }
    c
}

/// Fraction of predictions equal to the gold label.
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    assert_eq!(
        pred.len(),
        gold.len(),
        "accuracy: {} predictions for {} gold labels",
        pred.len(),
        gold.len()
    );
    if gold.is_empty() {
        return 0.0;
    }
    pred.iter().zip(gold).filter(|(p, g)| p == g).count() as f64 / gold.len() as f64
}

/// Macro-averaged F1: the mean over classes of `2TP / (2TP + FP + FN)`, over the classes that
/// occur in `gold` or `pred` (as scikit-learn's `f1_score(average="macro")` does).
pub fn macro_f1(pred: &[usize], gold: &[usize], n_classes: usize) -> f64 {
    let c = confusion(pred, gold, n_classes);
    let (mut sum, mut k) = (0.0, 0usize);
    for i in 0..n_classes {
        let tp = c[i * n_classes + i];
        let gold_i: usize = (0..n_classes).map(|j| c[i * n_classes + j]).sum();
        let pred_i: usize = (0..n_classes).map(|j| c[j * n_classes + i]).sum();
        if gold_i + pred_i == 0 {
            continue;
        }
        sum += 2.0 * tp as f64 / (gold_i + pred_i) as f64;
        k += 1;
    }
    if k == 0 {
        0.0
    } else {
        sum / k as f64
    }
}

/// Multiclass Matthews correlation coefficient, the R_K statistic of Gorodkin (2004):
/// `(c·s − Σ_k p_k t_k) / sqrt((s² − Σ p_k²)(s² − Σ t_k²))` with `c` correct, `s` samples,
/// `p_k`/`t_k` predicted/true counts of class k. 0 when the denominator is 0.
pub fn matthews_corrcoef(pred: &[usize], gold: &[usize], n_classes: usize) -> f64 {
    let c = confusion(pred, gold, n_classes);
    let s = gold.len() as f64;
    let correct: f64 = (0..n_classes).map(|k| c[k * n_classes + k] as f64).sum();
    let t: Vec<f64> = (0..n_classes)
        .map(|k| (0..n_classes).map(|j| c[k * n_classes + j]).sum::<usize>() as f64)
        .collect();
    let p: Vec<f64> = (0..n_classes)
        .map(|k| (0..n_classes).map(|j| c[j * n_classes + k]).sum::<usize>() as f64)
        .collect();
    let pt: f64 = p.iter().zip(&t).map(|(a, b)| a * b).sum();
    let pp: f64 = p.iter().map(|a| a * a).sum();
    let tt: f64 = t.iter().map(|a| a * a).sum();
    let den = ((s * s - pp) * (s * s - tt)).sqrt();
    if den == 0.0 || !den.is_finite() {
        0.0
    } else {
        (correct * s - pt) / den
    }
}

/// Index of the largest value of `row` (the first one on ties; NaNs are never chosen unless
/// the row is all NaN).
pub fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] || row[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Expected calibration error (Guo et al. 2017, eq. 3): samples are binned by confidence
/// (max probability) into `n_bins` equal-width bins `((m-1)/M, m/M]`, and
/// `ECE = Σ_m |B_m|/n · |acc(B_m) − conf(B_m)|`. `probs` is row-major `n x n_classes`.
pub fn expected_calibration_error(
    probs: &[f32],
    n_classes: usize,
    gold: &[usize],
    n_bins: usize,
) -> f64 {
    assert!(
        n_classes > 0 && n_bins > 0,
        "ECE: n_classes and n_bins must be positive"
    );
    assert_eq!(
        probs.len(),
        gold.len() * n_classes,
        "ECE: {} probabilities for {} rows of {n_classes}",
        probs.len(),
        gold.len()
    );
    if gold.is_empty() {
        return 0.0;
    }
    let mut count = vec![0usize; n_bins];
    let mut correct = vec![0usize; n_bins];
    let mut conf_sum = vec![0f64; n_bins];
    for (row, &g) in probs.chunks(n_classes).zip(gold) {
        let p = argmax(row);
        let conf = f64::from(row[p]).clamp(0.0, 1.0);
        let bin = ((conf * n_bins as f64).ceil() as usize).clamp(1, n_bins) - 1;
        count[bin] += 1;
        correct[bin] += usize::from(p == g);
        conf_sum[bin] += conf;
    }
    let n = gold.len() as f64;
    (0..n_bins)
        .filter(|&b| count[b] > 0)
        .map(|b| {
            let m = count[b] as f64;
            (m / n) * (correct[b] as f64 / m - conf_sum[b] / m).abs()
        })
        .sum()
}

/// All metrics of one evaluation.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub accuracy: f64,
    pub macro_f1: f64,
    pub mcc: f64,
    pub ece: f64,
    pub n: usize,
}

/// Argmax predictions of `probs` (row-major `n x n_classes`) scored against `gold`, with
/// [`ECE_BINS`] calibration bins.
pub fn report(probs: &[f32], n_classes: usize, gold: &[usize]) -> Report {
    assert!(n_classes > 0, "report: n_classes must be positive");
    assert_eq!(
        probs.len(),
        gold.len() * n_classes,
        "report: {} probabilities for {} rows of {n_classes}",
        probs.len(),
        gold.len()
    );
    let pred: Vec<usize> = probs.chunks(n_classes).map(argmax).collect();
    Report {
        accuracy: accuracy(&pred, gold),
        macro_f1: macro_f1(&pred, gold, n_classes),
        mcc: matthews_corrcoef(&pred, gold, n_classes),
        ece: expected_calibration_error(probs, n_classes, gold, ECE_BINS),
        n: gold.len(),
    }
}

/// Mean negative log-likelihood of the gold classes, probabilities floored at 1e-12 (so one
/// confidently wrong prediction costs at most ~27.6 nats, not infinity).
pub fn nll(probs: &[f32], n_classes: usize, gold: &[usize]) -> f64 {
    assert_eq!(probs.len(), gold.len() * n_classes, "NLL: {} probabilities for {} rows of {n_classes}", probs.len(), gold.len());
    if gold.is_empty() {
        return 0.0;
    }
    let s: f64 = probs.chunks(n_classes).zip(gold).map(|(row, &g)| -f64::from(row[g]).max(1e-12).ln()).sum();
    s / gold.len() as f64
}

/// One bin of a reliability diagram (Guo et al. 2017, fig. 1), binned as [`expected_calibration_error`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Accuracy and mean confidence of the samples in the bin (0 when empty).
    pub accuracy: f64,
    pub confidence: f64,
}

/// The `n_bins` bins of confidence `((m-1)/M, m/M]` with their accuracy and mean confidence.
pub fn reliability(probs: &[f32], n_classes: usize, gold: &[usize], n_bins: usize) -> Vec<ReliabilityBin> {
    assert!(n_classes > 0 && n_bins > 0, "reliability: n_classes and n_bins must be positive");
    assert_eq!(probs.len(), gold.len() * n_classes, "reliability: {} probabilities for {} rows of {n_classes}", probs.len(), gold.len());
    let mut bins: Vec<ReliabilityBin> = (0..n_bins)
        .map(|b| ReliabilityBin { lo: b as f64 / n_bins as f64, hi: (b + 1) as f64 / n_bins as f64, count: 0, accuracy: 0.0, confidence: 0.0 })
        .collect();
    for (row, &g) in probs.chunks(n_classes).zip(gold) {
        let p = argmax(row);
        let conf = f64::from(row[p]).clamp(0.0, 1.0);
        let b = &mut bins[((conf * n_bins as f64).ceil() as usize).clamp(1, n_bins) - 1];
        b.count += 1;
        b.accuracy += f64::from(u8::from(p == g));
        b.confidence += conf;
    }
    for b in bins.iter_mut().filter(|b| b.count > 0) {
        b.accuracy /= b.count as f64;
        b.confidence /= b.count as f64;
    }
    bins
}

/// The maximum softmax probability of each row: the out-of-distribution score of Hendrycks &
/// Gimpel 2017 (higher = more in-distribution).
pub fn max_prob(probs: &[f32], n_classes: usize) -> Vec<f32> {
    probs.chunks(n_classes).map(|r| r.iter().copied().fold(f32::NEG_INFINITY, f32::max)).collect()
}

/// Area under the ROC curve of telling `pos` from `neg` by score (higher = positive): the
/// Mann–Whitney U statistic over `|pos|·|neg|`, ties counted one half. 0.5 when either is empty.
pub fn auroc(pos: &[f32], neg: &[f32]) -> f64 {
    if pos.is_empty() || neg.is_empty() {
        return 0.5;
    }
    let mut all: Vec<(f32, bool)> = pos.iter().map(|&s| (s, true)).chain(neg.iter().map(|&s| (s, false))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Sum of the positives' ranks (1-based), tied scores sharing their mean rank.
    let (mut rank_sum, mut i) = (0f64, 0);
    while i < all.len() {
        let j = (i..all.len()).find(|&j| all[j].0 != all[i].0).unwrap_or(all.len());
        let mean_rank = (i + 1 + j) as f64 / 2.0;
        rank_sum += mean_rank * all[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    let (np, nn) = (pos.len() as f64, neg.len() as f64);
    (rank_sum - np * (np + 1.0) / 2.0) / (np * nn)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOLD: [usize; 6] = [0, 0, 1, 1, 2, 2];
    const PRED: [usize; 6] = [0, 1, 1, 1, 2, 0];

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-12, "{a} != {b}");
    }

    #[test]
    fn accuracy_and_macro_f1_by_hand() {
        close(accuracy(&PRED, &GOLD), 4.0 / 6.0);
        // per-class F1: 2/(2+1+1)=1/2, 4/(4+1+0)=4/5, 2/(2+0+1)=2/3
        close(macro_f1(&PRED, &GOLD, 3), (0.5 + 0.8 + 2.0 / 3.0) / 3.0);
        // a class absent from gold and pred does not dilute the mean
        close(macro_f1(&PRED, &GOLD, 5), (0.5 + 0.8 + 2.0 / 3.0) / 3.0);
        close(accuracy(&[], &[]), 0.0);
    }

    #[test]
    fn mcc_by_hand() {
        // s=6, c=4, t=(2,2,2), p=(2,3,1): (24-12)/sqrt((36-14)(36-12)) = 12/sqrt(528)
        close(matthews_corrcoef(&PRED, &GOLD, 3), 12.0 / 528f64.sqrt());
        // binary case equals the usual (TP·TN − FP·FN)/sqrt(...): TP=3 TN=4 FP=1 FN=2
        let gold = [1, 1, 1, 1, 1, 0, 0, 0, 0, 0];
        let pred = [1, 1, 1, 0, 0, 0, 0, 0, 0, 1];
        close(
            matthews_corrcoef(&pred, &gold, 2),
            (3.0 * 4.0 - 1.0 * 2.0) / (4.0f64 * 5.0 * 5.0 * 6.0).sqrt(),
        );
        close(matthews_corrcoef(&gold, &gold, 2), 1.0);
        close(matthews_corrcoef(&[0, 0, 0], &[0, 1, 0], 2), 0.0);
    }

    #[test]
    fn ece_by_hand() {
        // confidences 0.95 (right), 0.85 (wrong), 0.65 (right), 0.75 (right), one per bin of 10
        let probs = [0.95f32, 0.05, 0.85, 0.15, 0.35, 0.65, 0.25, 0.75];
        let gold = [0, 1, 1, 1];
        let ece = expected_calibration_error(&probs, 2, &gold, 10);
        assert!(
            (ece - (0.05 + 0.85 + 0.35 + 0.25) / 4.0).abs() < 1e-6,
            "{ece}"
        );
        // two samples sharing bin (0.9, 1]: acc 1/2, mean confidence 0.94 -> |0.5-0.94|
        let probs = [0.92f32, 0.08, 0.96, 0.04];
        let ece = expected_calibration_error(&probs, 2, &[0, 1], 10);
        assert!((ece - 0.44).abs() < 1e-6, "{ece}");
        // one bin = |accuracy - mean confidence|
        let ece1 = expected_calibration_error(
            &[0.95f32, 0.05, 0.85, 0.15, 0.35, 0.65, 0.25, 0.75],
            2,
            &gold,
            1,
        );
        assert!((ece1 - 0.05).abs() < 1e-6, "{ece1}");
    }

    #[test]
    fn report_uses_argmax() {
        let probs = [
            0.7f32, 0.2, 0.1, 0.1, 0.8, 0.1, 0.3, 0.3, 0.4, 0.6, 0.3, 0.1,
        ];
        let r = report(&probs, 3, &[0, 1, 2, 1]);
        assert_eq!(r.n, 4);
        close(r.accuracy, 0.75);
        close(r.mcc, matthews_corrcoef(&[0, 1, 2, 0], &[0, 1, 2, 1], 3));
        assert_eq!(argmax(&[0.1, 0.5, 0.5]), 1);
    }

    #[test]
    fn nll_reliability_msp_auroc_by_hand() {
        let probs = [0.9f32, 0.1, 0.2, 0.8, 0.6, 0.4];
        let gold = [0, 0, 0];
        let want = -(f64::from(0.9f32).ln() + f64::from(0.2f32).ln() + f64::from(0.6f32).ln()) / 3.0;
        close(nll(&probs, 2, &gold), want);
        let bins = reliability(&probs, 2, &gold, 2);
        // confidences 0.9 (right), 0.8 (wrong), 0.6 (right): all in (0.5, 1]
        assert_eq!((bins[0].count, bins[1].count), (0, 3));
        assert!((bins[1].accuracy - 2.0 / 3.0).abs() < 1e-12 && (bins[1].confidence - 2.3 / 3.0).abs() < 1e-6);
        assert_eq!(max_prob(&probs, 2), vec![0.9, 0.8, 0.6]);
        close(auroc(&[3.0, 4.0], &[1.0, 2.0]), 1.0);
        close(auroc(&[1.0, 2.0], &[3.0, 4.0]), 0.0);
        // pos {2, 3}, neg {1, 2}: pairs (2>1) 1, (2=2) 1/2, (3>1) 1, (3>2) 1 -> 3.5/4
        close(auroc(&[2.0, 3.0], &[1.0, 2.0]), 3.5 / 4.0);
        close(auroc(&[], &[1.0]), 0.5);
    }
}
