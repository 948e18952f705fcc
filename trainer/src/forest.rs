//! A plain tree ensemble: what both models are once fitted, what the ONNX exporter writes, and
//! the trainer's own evaluation of them (the reference the exported files are checked against).
//!
//! Splits are `x < threshold` (go left) on `f32` inputs, exactly ONNX's `BRANCH_LT`, and sums
//! are taken in `f32` in tree order, as ONNX Runtime does for `float` inputs.

/// One node of a tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Node {
    /// `x[feature] < threshold` goes to `left`, anything else to `right`.
    Branch {
        /// Input column.
        feature: u32,
        /// Split value.
        threshold: f32,
        /// Index of the left child in the tree's node list.
        left: u32,
        /// Index of the right child.
        right: u32,
    },
    /// A leaf adds its value to the ensemble's sum.
    Leaf {
        /// Contribution to the output.
        value: f32,
    },
}

/// A tree: its nodes, the root first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tree {
    /// Nodes; children are referred to by index.
    pub nodes: Vec<Node>,
}

impl Tree {
    /// The leaf value `x` lands in.
    pub fn eval(&self, x: &[f32]) -> f32 {
        let mut index = 0;
        loop {
            match self.nodes[index] {
                Node::Leaf { value } => return value,
                Node::Branch {
                    feature,
                    threshold,
                    left,
                    right,
                } => {
                    index = if x[feature as usize] < threshold {
                        left as usize
                    } else {
                        right as usize
                    };
                }
            }
        }
    }
}

/// Trees whose leaf values add up, plus a constant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Forest {
    /// Added to the sum of the leaves.
    pub base: f32,
    /// The trees.
    pub trees: Vec<Tree>,
}

impl Forest {
    /// `base` plus the sum of the leaf values `x` lands in.
    pub fn eval(&self, x: &[f32]) -> f32 {
        let sum = self.trees.iter().fold(0.0_f32, |acc, t| acc + t.eval(x));
        sum + self.base
    }

    /// Number of nodes over all trees.
    pub fn node_count(&self) -> usize {
        self.trees.iter().map(|t| t.nodes.len()).sum()
    }
}

/// The smallest `f32` at or above `t`: for every `f32` input `x`, `x < t` (in `f64`) exactly when
/// `x < ceil_f32(t)`, so a split fitted in `f64` keeps its meaning in the `f32` model.
pub fn ceil_f32(t: f64) -> f32 {
    let nearest = t as f32;
    if f64::from(nearest) >= t {
        nearest
    } else {
        nearest.next_up()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stump(threshold: f32, low: f32, high: f32) -> Tree {
        Tree {
            nodes: vec![
                Node::Branch {
                    feature: 1,
                    threshold,
                    left: 1,
                    right: 2,
                },
                Node::Leaf { value: low },
                Node::Leaf { value: high },
            ],
        }
    }

    #[test]
    fn split_sends_values_below_the_threshold_left_and_equal_right() {
        let forest = Forest {
            base: 10.0,
            trees: vec![stump(2.0, 1.0, 5.0), stump(3.0, 0.5, 0.25)],
        };
        assert_eq!(forest.eval(&[0.0, 1.0]), 11.5);
        assert_eq!(forest.eval(&[0.0, 2.0]), 15.5);
        assert_eq!(forest.eval(&[0.0, 3.0]), 15.25);
        assert_eq!(forest.node_count(), 6);
    }

    #[test]
    fn ceil_f32_keeps_the_split_for_every_f32_input() {
        for t in [0.1_f64, 1.0 / 3.0, 2.5, -7.123_456_789, 1e-30] {
            let c = ceil_f32(t);
            assert!(f64::from(c) >= t);
            let below = c.next_down();
            assert!(f64::from(below) < t, "{t}: {below} should fall below");
        }
    }
}
