//! Holdout metrics: mean absolute error, quantile coverage, ROC AUC.

/// Mean of `|a - b|` over pairs; `None` for no pairs.
pub fn mae(pairs: impl Iterator<Item = (f64, f64)>) -> Option<f64> {
    let (sum, n) = pairs.fold((0.0, 0_u64), |(s, n), (a, b)| (s + (a - b).abs(), n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Share of `(actual, bound)` pairs with `actual <= bound`; `None` for no pairs.
pub fn coverage(pairs: impl Iterator<Item = (f64, f64)>) -> Option<f64> {
    let (hit, n) = pairs.fold((0_u64, 0_u64), |(h, n), (actual, bound)| {
        (h + u64::from(actual <= bound), n + 1)
    });
    (n > 0).then(|| hit as f64 / n as f64)
}

/// ROC AUC of `scores` against `labels` (true = positive): the probability that a random
/// positive scores above a random negative, ties counting half (Mann-Whitney U). `None` when
/// either class is empty.
pub fn auc(scores: &[f64], labels: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let positives = labels.iter().filter(|&&l| l).count();
    let negatives = labels.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    // Sum of the positives' ranks, tied scores sharing their average rank.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let average_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] {
                rank_sum += average_rank;
            }
        }
        i = j + 1;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

/// The `q` quantile (0-1) of `values` by the nearest-rank method; `None` when empty.
pub fn quantile(values: &mut [f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
    Some(values[rank - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_is_one_for_perfect_separation_and_half_for_ties() {
        let labels = [false, false, true, true];
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &labels), Some(1.0));
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(auc(&[0.5; 4], &labels), Some(0.5));
        assert_eq!(auc(&[0.1, 0.2], &[false, false]), None);
    }

    #[test]
    fn auc_counts_pairs() {
        // Positives 0.4 and 0.9 against negatives 0.1, 0.5: 3 of 4 pairs ordered right.
        assert_eq!(
            auc(&[0.1, 0.4, 0.5, 0.9], &[false, true, false, true]),
            Some(0.75)
        );
    }

    #[test]
    fn mae_coverage_quantile() {
        assert_eq!(mae([(1.0, 2.0), (3.0, 1.0)].into_iter()), Some(1.5));
        assert_eq!(coverage([(1.0, 2.0), (3.0, 1.0)].into_iter()), Some(0.5));
        assert_eq!(mae(std::iter::empty()), None);
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(quantile(&mut v, 0.5), Some(3.0));
        assert_eq!(quantile(&mut v, 1.0), Some(5.0));
    }
}
