//! The latency model's trees: histogram gradient boosting for a quantile (pinball loss).
//!
//! Written here, compactly, because no maintained crate fits (`docs/dependencies.md`): `perpetual` needs
//! a nightly compiler in every release, `forust-ml` has no quantile objective, `gbdt` is
//! unmaintained and has none either, and `lightgbm3` builds LightGBM's C++ from source (cmake,
//! libclang, minutes per profile). The method follows LightGBM's quantile regression:
//!
//! - each feature is cut into at most `bins` bins at quantiles of its values (the cut points are
//!   real feature values, so a split `bin <= b` is exactly `x < cut[b]`, ONNX's `BRANCH_LT`);
//! - each round fits a depth-limited tree to the pinball-loss gradient (`1 - α` where the
//!   prediction is too high, `-α` where it is too low) on a row subsample, splitting where the
//!   gradient sums separate best;
//! - each leaf then gets the α-quantile of its rows' residuals (the loss's exact minimiser),
//!   shrunk by the learning rate.

use crate::forest::{Forest, Node, Tree};
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

/// Why a fit failed.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// No rows, or columns of different lengths.
    #[error("cannot fit: {0}")]
    Shape(String),
}

/// Fitting knobs.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Boosting rounds (trees).
    pub trees: usize,
    /// Shrinkage of each tree's leaves.
    pub learning_rate: f32,
    /// Maximum depth of a tree (2^depth leaves at most).
    pub max_depth: usize,
    /// Fewest subsampled rows in a leaf.
    pub min_leaf: usize,
    /// Bins per feature (at most 256).
    pub bins: usize,
    /// Share of rows each tree is grown on.
    pub subsample: f64,
    /// At most this many rows per tree, whatever the share: past ~100,000 rows a depth-5 tree's
    /// splits and leaf quantiles no longer change, only the time to find them grows.
    pub max_rows_per_tree: usize,
    /// Random seed, for reproducible models.
    pub seed: u64,
}

impl Default for Params {
    fn default() -> Self {
        // 20 trees of depth 4 per quantile at a learning rate of 0.2: on the committed capture
        // the holdout MAE of ln(latency) is 0.363, against 0.364 for 40 trees at 0.1, 0.347 for
        // 100 trees of depth 5 and 0.350 for 200, while ONNX Runtime answers a row in ~3.1 µs
        // (40 trees: ~4.5; 100 of depth 5: ~12) and the file is 20 KB.
        Self {
            trees: 20,
            learning_rate: 0.2,
            max_depth: 4,
            min_leaf: 20,
            bins: 64,
            subsample: 0.5,
            max_rows_per_tree: 100_000,
            seed: 0x5eed,
        }
    }
}

/// Features cut into bins.
struct Binned {
    /// Per feature: the cut points, ascending; bin(x) = how many cut points are <= x.
    cuts: Vec<Vec<f32>>,
    /// Row-major bins: row `i`'s feature `f` is at `i * width + f`. Row-major because a node's
    /// histogram pass reads every feature of each of its rows: one cache line per row.
    bins: Vec<u8>,
    /// Features per row.
    width: usize,
}

impl Binned {
    fn bin(&self, row: usize, feature: usize) -> u8 {
        self.bins[row * self.width + feature]
    }
}

fn bin_features(columns: &[Vec<f32>], max_bins: usize, rng: &mut ChaCha8Rng) -> Binned {
    let rows = columns.first().map_or(0, Vec::len);
    let width = columns.len();
    let probe = sample(rng, rows, rows.min(200_000)).into_vec();
    let mut cuts = Vec::with_capacity(width);
    let mut bins = vec![0_u8; rows * width];
    for (f, column) in columns.iter().enumerate() {
        let mut values: Vec<f32> = probe.iter().map(|&i| column[i]).collect();
        values.sort_by(f32::total_cmp);
        let mut distinct = values.clone();
        distinct.dedup();
        let mut feature_cuts: Vec<f32> = if distinct.len() <= max_bins {
            distinct.into_iter().skip(1).collect()
        } else {
            (1..max_bins)
                .map(|k| values[k * values.len() / max_bins])
                .collect()
        };
        feature_cuts.dedup();
        // A cut at the minimum would leave bin 0 empty; drop it.
        if feature_cuts.first() == values.first() {
            feature_cuts.remove(0);
        }
        for (row, &x) in column.iter().enumerate() {
            let b = feature_cuts.partition_point(|&c| c <= x);
            bins[row * width + f] = u8::try_from(b).unwrap_or(u8::MAX);
        }
        cuts.push(feature_cuts);
    }
    Binned { cuts, bins, width }
}

/// A tree while it is being grown: splits on bins.
enum Grown {
    Split {
        feature: usize,
        bin: u8,
        left: usize,
        right: usize,
    },
    Leaf(f32),
}

/// Gradient sum and row count per (feature, bin): `slots[f * STRIDE + b]`.
type Histogram = Vec<(f64, u32)>;

/// Slots per feature in a histogram (the most bins a feature can have).
const STRIDE: usize = 256;

struct Round<'a> {
    binned: &'a Binned,
    gradient: &'a [f32],
    residual: &'a [f32],
    alpha: f64,
    params: Params,
    nodes: Vec<Grown>,
}

impl Round<'_> {
    fn leaf(&mut self, rows: &[usize]) -> usize {
        let mut residuals: Vec<f32> = rows.iter().map(|&i| self.residual[i]).collect();
        let value = quantile_in_place(&mut residuals, self.alpha) * self.params.learning_rate;
        self.nodes.push(Grown::Leaf(value));
        self.nodes.len() - 1
    }

    /// The histogram of `rows`, every feature in one pass over them.
    fn histogram(&self, rows: &[usize]) -> Histogram {
        let width = self.binned.width;
        let mut histogram = vec![(0.0, 0); width * STRIDE];
        for &i in rows {
            let g = f64::from(self.gradient[i]);
            let bins = &self.binned.bins[i * width..(i + 1) * width];
            for (f, &b) in bins.iter().enumerate() {
                let slot = &mut histogram[f * STRIDE + b as usize];
                slot.0 += g;
                slot.1 += 1;
            }
        }
        histogram
    }

    /// The best split of a node with this histogram: (gain, feature, bin).
    fn best_split(&self, histogram: &Histogram, rows: usize) -> Option<(f64, usize, u8)> {
        let total: f64 = histogram[..STRIDE].iter().map(|s| s.0).sum();
        let parent = total * total / rows as f64;
        let mut best: Option<(f64, usize, u8)> = None;
        for (feature, cuts) in self.binned.cuts.iter().enumerate() {
            let slots = &histogram[feature * STRIDE..feature * STRIDE + cuts.len() + 1];
            let (mut g_left, mut n_left) = (0.0, 0_usize);
            for (b, slot) in slots.iter().enumerate().take(cuts.len()) {
                g_left += slot.0;
                n_left += slot.1 as usize;
                let n_right = rows - n_left;
                if n_left < self.params.min_leaf || n_right < self.params.min_leaf {
                    continue;
                }
                let g_right = total - g_left;
                let gain =
                    g_left * g_left / n_left as f64 + g_right * g_right / n_right as f64 - parent;
                if gain > best.map_or(1e-12, |(g, _, _)| g) {
                    best = Some((gain, feature, u8::try_from(b).unwrap_or(u8::MAX)));
                }
            }
        }
        best
    }

    /// Grows the subtree for `rows` (ascending, whose histogram is `histogram`) and returns its
    /// index. The smaller child's histogram is counted, the larger one's is the parent's minus
    /// it: half the passes over rows.
    fn grow(&mut self, rows: Vec<usize>, histogram: Histogram, depth: usize) -> usize {
        if depth >= self.params.max_depth || rows.len() < 2 * self.params.min_leaf {
            return self.leaf(&rows);
        }
        let Some((_, feature, bin)) = self.best_split(&histogram, rows.len()) else {
            return self.leaf(&rows);
        };
        // A stable partition keeps both sides ascending, so later passes read memory in order.
        let (left_rows, right_rows): (Vec<usize>, Vec<usize>) = rows
            .iter()
            .partition(|&&i| self.binned.bin(i, feature) <= bin);
        drop(rows);
        let left_is_small = left_rows.len() <= right_rows.len();
        let small_histogram = self.histogram(if left_is_small {
            &left_rows
        } else {
            &right_rows
        });
        let mut large_histogram = histogram;
        for (l, s) in large_histogram.iter_mut().zip(&small_histogram) {
            l.0 -= s.0;
            l.1 -= s.1;
        }
        let (left_histogram, right_histogram) = if left_is_small {
            (small_histogram, large_histogram)
        } else {
            (large_histogram, small_histogram)
        };
        let at = self.nodes.len();
        self.nodes.push(Grown::Leaf(0.0)); // replaced once the children exist
        let left = self.grow(left_rows, left_histogram, depth + 1);
        let right = self.grow(right_rows, right_histogram, depth + 1);
        self.nodes[at] = Grown::Split {
            feature,
            bin,
            left,
            right,
        };
        at
    }
}

/// The `alpha` quantile of `values` (reordered in place); 0 for none.
fn quantile_in_place(values: &mut [f32], alpha: f64) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let k = ((alpha * (values.len() - 1) as f64).round() as usize).min(values.len() - 1);
    *values.select_nth_unstable_by(k, f32::total_cmp).1
}

fn leaf_of(nodes: &[Grown], binned: &Binned, row: usize) -> f32 {
    let mut at = 0;
    loop {
        match nodes[at] {
            Grown::Leaf(value) => return value,
            Grown::Split {
                feature,
                bin,
                left,
                right,
            } => {
                at = if binned.bin(row, feature) <= bin {
                    left
                } else {
                    right
                }
            }
        }
    }
}

fn export(nodes: &[Grown], binned: &Binned) -> Tree {
    let to_u32 = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    Tree {
        nodes: nodes
            .iter()
            .map(|node| match *node {
                Grown::Leaf(value) => Node::Leaf { value },
                Grown::Split {
                    feature,
                    bin,
                    left,
                    right,
                } => Node::Branch {
                    feature: to_u32(feature),
                    // bin(x) <= b exactly when x < cuts[b].
                    threshold: binned.cuts[feature][bin as usize],
                    left: to_u32(left),
                    right: to_u32(right),
                },
            })
            .collect(),
    }
}

/// Fits the `alpha` quantile (0-1) of `y` given the feature `columns` (one `Vec` per feature,
/// each as long as `y`).
///
/// # Errors
/// No rows, or columns whose length differs from `y`'s.
pub fn fit_quantile(
    columns: &[Vec<f32>],
    y: &[f32],
    alpha: f64,
    params: Params,
) -> Result<Forest, FitError> {
    let n = y.len();
    if n == 0 || columns.iter().any(|c| c.len() != n) {
        return Err(FitError::Shape(format!(
            "{n} targets, feature columns of {:?} rows",
            columns.iter().map(Vec::len).collect::<Vec<_>>()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(params.seed);
    let binned = bin_features(columns, params.bins.clamp(2, 256), &mut rng);
    let base = quantile_in_place(&mut y.to_vec(), alpha);
    let mut prediction = vec![base; n];
    let mut gradient = vec![0.0_f32; n];
    let mut residual = vec![0.0_f32; n];
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let per_tree = ((n as f64 * params.subsample.clamp(0.01, 1.0)) as usize)
        .clamp(1, params.max_rows_per_tree.max(1));
    let (above, below) = ((1.0 - alpha) as f32, -(alpha as f32));
    let mut trees = Vec::with_capacity(params.trees);
    for _ in 0..params.trees {
        for i in 0..n {
            residual[i] = y[i] - prediction[i];
            gradient[i] = if residual[i] < 0.0 { above } else { below };
        }
        let mut rows = sample(&mut rng, n, per_tree).into_vec();
        rows.sort_unstable();
        let mut round = Round {
            binned: &binned,
            gradient: &gradient,
            residual: &residual,
            alpha,
            params,
            nodes: Vec::new(),
        };
        let histogram = round.histogram(&rows);
        round.grow(rows, histogram, 0);
        let nodes = round.nodes;
        for (i, p) in prediction.iter_mut().enumerate() {
            *p += leaf_of(&nodes, &binned, i);
        }
        trees.push(export(&nodes, &binned));
    }
    Ok(Forest { base, trees })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn quantiles_follow_the_data_and_keep_their_order() {
        // y depends on x0 (step) with noise whose spread grows with x1.
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let n = 20_000;
        let x0: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..10.0)).collect();
        let x1: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..1.0)).collect();
        let y: Vec<f32> = (0..n)
            .map(|i| {
                let level = if x0[i] > 5.0 { 2.0 } else { 0.0 };
                level + (rng.random::<f32>() - 0.5) * 2.0 * x1[i]
            })
            .collect();
        let columns = [x0.clone(), x1.clone()];
        let p50 = fit_quantile(&columns, &y, 0.5, Params::default()).expect("fits");
        let p90 = fit_quantile(&columns, &y, 0.9, Params::default()).expect("fits");
        assert!(
            (p50.eval(&[8.0, 0.5]) - 2.0).abs() < 0.15,
            "{}",
            p50.eval(&[8.0, 0.5])
        );
        assert!(
            p50.eval(&[1.0, 0.5]).abs() < 0.15,
            "{}",
            p50.eval(&[1.0, 0.5])
        );
        // Uniform noise of half-width x1: p90 sits 0.8 x1 above the median.
        let spread = p90.eval(&[8.0, 0.9]) - p50.eval(&[8.0, 0.9]);
        assert!((spread - 0.72).abs() < 0.2, "spread {spread}");
        let covered = (0..n)
            .filter(|&i| y[i] <= p90.eval(&[x0[i], x1[i]]))
            .count();
        let coverage = covered as f64 / n as f64;
        assert!((0.86..0.94).contains(&coverage), "coverage {coverage}");
    }

    #[test]
    fn cuts_are_exact_split_points() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let column: Vec<f32> = (0..1000).map(|i| (i % 7) as f32).collect();
        let binned = bin_features(std::slice::from_ref(&column), 64, &mut rng);
        assert_eq!(binned.cuts[0], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        for (x, b) in column.iter().zip(&binned.bins) {
            for (k, cut) in binned.cuts[0].iter().enumerate() {
                assert_eq!(usize::from(*b) <= k, *x < *cut);
            }
        }
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(fit_quantile(&[vec![1.0]], &[], 0.5, Params::default()).is_err());
        assert!(fit_quantile(&[vec![1.0, 2.0]], &[1.0], 0.5, Params::default()).is_err());
    }
}
