//! The few ONNX messages the models need, declared as `prost` structs with the field numbers of
//! the ONNX specification (onnx.proto, IR version 8): the trainer writes models with them and the
//! server reads the trees back out of a model it loads.
//!
//! No `.proto` file is copied in and nothing needs `protoc`. ONNX's schema is proto2, where a
//! scalar field is either set or absent; the scalar attribute fields are `optional` here so a
//! zero (an `i = 0`, say) is still written, and repeated numbers use packed encoding, which every
//! protobuf parser accepts. Fields not declared here are skipped when reading.

use prost::Message;

/// `AttributeProto.AttributeType` values used here.
pub mod attr_type {
    #![allow(missing_docs)]
    pub const INT: i32 = 2;
    pub const STRING: i32 = 3;
    pub const FLOATS: i32 = 6;
    pub const INTS: i32 = 7;
    pub const STRINGS: i32 = 8;
}

/// `ModelProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    /// IR version.
    #[prost(int64, optional, tag = "1")]
    pub ir_version: Option<i64>,
    /// Producer (tool) name.
    #[prost(string, optional, tag = "2")]
    pub producer_name: Option<String>,
    /// Producer version.
    #[prost(string, optional, tag = "3")]
    pub producer_version: Option<String>,
    /// Model domain.
    #[prost(string, optional, tag = "4")]
    pub domain: Option<String>,
    /// Model version.
    #[prost(int64, optional, tag = "5")]
    pub model_version: Option<i64>,
    /// Description.
    #[prost(string, optional, tag = "6")]
    pub doc_string: Option<String>,
    /// The graph.
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    /// Operator sets used.
    #[prost(message, repeated, tag = "8")]
    pub opset_import: Vec<OperatorSetIdProto>,
    /// Free-form key/value metadata.
    #[prost(message, repeated, tag = "14")]
    pub metadata_props: Vec<StringStringEntryProto>,
}

/// `OperatorSetIdProto`.
#[derive(Clone, PartialEq, Message)]
pub struct OperatorSetIdProto {
    /// Domain (empty for the default `ai.onnx`).
    #[prost(string, optional, tag = "1")]
    pub domain: Option<String>,
    /// Opset version.
    #[prost(int64, optional, tag = "2")]
    pub version: Option<i64>,
}

/// `StringStringEntryProto`.
#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    /// Key.
    #[prost(string, optional, tag = "1")]
    pub key: Option<String>,
    /// Value.
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// `GraphProto`.
#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    /// Nodes in topological order.
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    /// Graph name.
    #[prost(string, optional, tag = "2")]
    pub name: Option<String>,
    /// Graph inputs.
    #[prost(message, repeated, tag = "11")]
    pub input: Vec<ValueInfoProto>,
    /// Graph outputs.
    #[prost(message, repeated, tag = "12")]
    pub output: Vec<ValueInfoProto>,
}

/// `NodeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    /// Input value names.
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    /// Output value names.
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    /// Node name.
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    /// Operator.
    #[prost(string, optional, tag = "4")]
    pub op_type: Option<String>,
    /// Attributes.
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
    /// Operator domain.
    #[prost(string, optional, tag = "7")]
    pub domain: Option<String>,
}

/// `AttributeProto` (the kinds used here).
#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    /// Attribute name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// A float.
    #[prost(float, optional, tag = "2")]
    pub f: Option<f32>,
    /// An integer.
    #[prost(int64, optional, tag = "3")]
    pub i: Option<i64>,
    /// A string.
    #[prost(bytes = "vec", optional, tag = "4")]
    pub s: Option<Vec<u8>>,
    /// Floats.
    #[prost(float, repeated, tag = "7")]
    pub floats: Vec<f32>,
    /// Integers.
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
    /// Strings.
    #[prost(bytes = "vec", repeated, tag = "9")]
    pub strings: Vec<Vec<u8>>,
    /// `AttributeType` discriminator.
    #[prost(int32, optional, tag = "20")]
    pub r#type: Option<i32>,
}

/// `ValueInfoProto`.
#[derive(Clone, PartialEq, Message)]
pub struct ValueInfoProto {
    /// Value name.
    #[prost(string, optional, tag = "1")]
    pub name: Option<String>,
    /// Value type.
    #[prost(message, optional, tag = "2")]
    pub r#type: Option<TypeProto>,
}

/// `TypeProto` (tensor types only).
#[derive(Clone, PartialEq, Message)]
pub struct TypeProto {
    /// A tensor type.
    #[prost(message, optional, tag = "1")]
    pub tensor_type: Option<TensorTypeProto>,
}

/// `TypeProto.Tensor`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorTypeProto {
    /// Element type (`TensorProto.DataType`).
    #[prost(int32, optional, tag = "1")]
    pub elem_type: Option<i32>,
    /// Shape.
    #[prost(message, optional, tag = "2")]
    pub shape: Option<TensorShapeProto>,
}

/// `TensorShapeProto`.
#[derive(Clone, PartialEq, Message)]
pub struct TensorShapeProto {
    /// Dimensions.
    #[prost(message, repeated, tag = "1")]
    pub dim: Vec<Dimension>,
}

/// `TensorShapeProto.Dimension`.
#[derive(Clone, PartialEq, Message)]
pub struct Dimension {
    /// A fixed size.
    #[prost(int64, optional, tag = "1")]
    pub dim_value: Option<i64>,
    /// A named, free size.
    #[prost(string, optional, tag = "2")]
    pub dim_param: Option<String>,
}

/// How a tree ensemble's branches compare an input with their threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `BRANCH_LT`: `x < t` takes the true branch.
    Less,
    /// `BRANCH_LEQ`: `x <= t` takes the true branch.
    LessOrEqual,
}

/// A row's cell in [`Splits`]: per input, how many of its thresholds the value passes; `u16::MAX`
/// for NaN. Inputs past the model's width stay 0.
pub type Cell = [u16; crate::ANOMALY_INPUT_COUNT];

/// Where a tree ensemble's answer can change: per input, the distinct thresholds its branches
/// compare that input with. Two rows in the same [`Cell`] take the same branch at every node of
/// every tree, so the model gives them the same answer, whatever the trees aggregate to.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    /// Per input, sorted ascending.
    pub thresholds: Vec<Vec<f32>>,
    /// The comparison every branch uses.
    pub rule: Rule,
}

impl Splits {
    /// Reads the thresholds of a model whose graph is nothing but `TreeEnsembleRegressor`
    /// nodes (`ai.onnx.ml`), each reading the graph's one input of `width` floats.
    ///
    /// # Errors
    /// What the reader does not vouch for, named: an undecodable model, another operator,
    /// thresholds stored elsewhere than `nodes_values`, other branch modes than `BRANCH_LT` or
    /// `BRANCH_LEQ` (or both mixed), missing values sent to the true branch, an input index
    /// outside `width`, a tree not reading the graph's one input, or more than `u16::MAX - 1`
    /// thresholds on one input.
    pub fn read(model: &[u8], width: usize) -> Result<Self, String> {
        if width > crate::ANOMALY_INPUT_COUNT {
            return Err(format!(
                "{width} inputs, at most {}",
                crate::ANOMALY_INPUT_COUNT
            ));
        }
        let model = ModelProto::decode(model).map_err(|e| format!("not an ONNX model: {e}"))?;
        let graph = model.graph.ok_or("the model has no graph")?;
        if graph.node.is_empty() {
            return Err("the graph has no nodes".into());
        }
        // Every tree must read the graph's one input, so that `nodes_featureids` are positions
        // in the row the server passes (not in another node's output).
        let [input] = graph.input.as_slice() else {
            return Err(format!("{} graph inputs, expected one", graph.input.len()));
        };
        let input = input.name.as_deref().unwrap_or_default();
        let mut thresholds = vec![Vec::new(); width];
        let mut rule = None;
        for node in &graph.node {
            let op = node.op_type.as_deref().unwrap_or_default();
            if op != "TreeEnsembleRegressor" || node.domain.as_deref() != Some("ai.onnx.ml") {
                return Err(format!("operator {op:?} is not a tree ensemble regressor"));
            }
            let attribute = |name: &str| {
                node.attribute
                    .iter()
                    .find(|a| a.name.as_deref() == Some(name))
            };
            if node.input.len() != 1 || node.input[0] != input {
                return Err(format!(
                    "a tree reads {:?}, not the graph input {input:?}",
                    node.input
                ));
            }
            if attribute("nodes_values_as_tensor").is_some() {
                return Err("thresholds stored as a tensor".into());
            }
            if attribute("nodes_missing_value_tracks_true")
                .is_some_and(|a| a.ints.iter().any(|&v| v != 0))
            {
                return Err("missing values tracked to the true branch".into());
            }
            let (Some(features), Some(modes), Some(values)) = (
                attribute("nodes_featureids"),
                attribute("nodes_modes"),
                attribute("nodes_values"),
            ) else {
                return Err("nodes_featureids, nodes_modes or nodes_values missing".into());
            };
            if features.ints.len() != modes.strings.len()
                || values.floats.len() != modes.strings.len()
            {
                return Err("node attributes of different lengths".into());
            }
            for ((&feature, mode), &value) in
                features.ints.iter().zip(&modes.strings).zip(&values.floats)
            {
                let this = match mode.as_slice() {
                    b"LEAF" => continue,
                    b"BRANCH_LT" => Rule::Less,
                    b"BRANCH_LEQ" => Rule::LessOrEqual,
                    other => {
                        return Err(format!("branch mode {:?}", String::from_utf8_lossy(other)));
                    }
                };
                if *rule.get_or_insert(this) != this {
                    return Err("BRANCH_LT and BRANCH_LEQ mixed".into());
                }
                let list = usize::try_from(feature)
                    .ok()
                    .and_then(|f| thresholds.get_mut(f))
                    .ok_or_else(|| format!("a branch reads input {feature} of {width}"))?;
                // A NaN threshold compares false with everything: it tells no rows apart.
                if !value.is_nan() {
                    list.push(value);
                }
            }
        }
        for list in &mut thresholds {
            list.sort_by(f32::total_cmp);
            list.dedup();
            if list.len() >= usize::from(u16::MAX) {
                return Err(format!("{} thresholds on one input", list.len()));
            }
        }
        Ok(Self {
            thresholds,
            rule: rule.unwrap_or(Rule::Less),
        })
    }

    /// The cell of `row` (at least as many values as the model has inputs).
    pub fn cell(&self, row: &[f32]) -> Cell {
        let mut cell = [0; crate::ANOMALY_INPUT_COUNT];
        for ((slot, thresholds), &x) in cell.iter_mut().zip(&self.thresholds).zip(row) {
            if thresholds.is_empty() {
                continue;
            }
            // Counting the thresholds the value is not "below" (per the rule) identifies the
            // branch taken at every node on this input; checked in `read` to fit in a u16.
            *slot = if x.is_nan() {
                u16::MAX
            } else {
                let passed = match self.rule {
                    Rule::Less => thresholds.partition_point(|&t| t <= x),
                    Rule::LessOrEqual => thresholds.partition_point(|&t| t < x),
                };
                passed as u16
            };
        }
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(name: &str, values: &[&str]) -> AttributeProto {
        AttributeProto {
            name: Some(name.into()),
            strings: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
            r#type: Some(attr_type::STRINGS),
            ..AttributeProto::default()
        }
    }

    /// One tree: node 0 splits input 1 at 2.0 with `mode`, nodes 1 and 2 are leaves.
    fn tree(op: &str, mode: &str) -> Vec<u8> {
        let node = NodeProto {
            op_type: Some(op.into()),
            domain: Some("ai.onnx.ml".into()),
            attribute: vec![
                AttributeProto {
                    name: Some("nodes_featureids".into()),
                    ints: vec![1, 0, 0],
                    r#type: Some(attr_type::INTS),
                    ..AttributeProto::default()
                },
                strings("nodes_modes", &[mode, "LEAF", "LEAF"]),
                AttributeProto {
                    name: Some("nodes_values".into()),
                    floats: vec![2.0, 0.0, 0.0],
                    r#type: Some(attr_type::FLOATS),
                    ..AttributeProto::default()
                },
            ],
            input: vec!["features".into()],
            ..NodeProto::default()
        };
        model(vec![node])
    }

    fn model(node: Vec<NodeProto>) -> Vec<u8> {
        ModelProto {
            graph: Some(GraphProto {
                node,
                input: vec![ValueInfoProto {
                    name: Some("features".into()),
                    r#type: None,
                }],
                ..GraphProto::default()
            }),
            ..ModelProto::default()
        }
        .encode_to_vec()
    }

    /// The node of [`tree`], changed by `change`.
    fn changed(mode: &str, change: impl FnOnce(&mut NodeProto)) -> Vec<u8> {
        let model =
            ModelProto::decode(tree("TreeEnsembleRegressor", mode).as_slice()).expect("model");
        let mut node = model.graph.expect("graph").node.remove(0);
        change(&mut node);
        self::model(vec![node])
    }

    #[test]
    fn cells_follow_the_branch_rule() {
        let lt = Splits::read(&tree("TreeEnsembleRegressor", "BRANCH_LT"), 3).expect("lt");
        assert_eq!(lt.thresholds, vec![vec![], vec![2.0], vec![]]);
        // x < 2 goes one way, x >= 2 the other; input 0 has no threshold and never matters.
        assert_eq!(lt.cell(&[5.0, 1.99, 0.0]), lt.cell(&[-7.0, -1e9, 3.0]));
        assert_ne!(lt.cell(&[0.0, 1.99, 0.0]), lt.cell(&[0.0, 2.0, 0.0]));
        assert_eq!(
            lt.cell(&[0.0, 2.0, 0.0]),
            lt.cell(&[0.0, f32::INFINITY, 0.0])
        );
        // NaN gets a cell of its own.
        assert_ne!(lt.cell(&[0.0, f32::NAN, 0.0]), lt.cell(&[0.0, 9.0, 0.0]));

        let leq = Splits::read(&tree("TreeEnsembleRegressor", "BRANCH_LEQ"), 3).expect("leq");
        assert_eq!(leq.cell(&[0.0, 2.0, 0.0]), leq.cell(&[0.0, 1.5, 0.0]));
        assert_ne!(leq.cell(&[0.0, 2.0, 0.0]), leq.cell(&[0.0, 2.0001, 0.0]));
    }

    #[test]
    fn graphs_it_cannot_vouch_for_are_refused() {
        for (model, width, why) in [
            (tree("TreeEnsembleClassifier", "BRANCH_LT"), 3, "operator"),
            (tree("TreeEnsembleRegressor", "BRANCH_GT"), 3, "BRANCH_GT"),
            (tree("TreeEnsembleRegressor", "BRANCH_LT"), 1, "input 1"),
            (b"not a model".to_vec(), 3, "not an ONNX model"),
            (model(Vec::new()), 3, "no nodes"),
            (
                changed("BRANCH_LT", |n| n.input = vec!["other".into()]),
                3,
                "not the graph input",
            ),
            (
                changed("BRANCH_LT", |n| {
                    n.attribute.push(AttributeProto {
                        name: Some("nodes_missing_value_tracks_true".into()),
                        ints: vec![1, 0, 0],
                        ..AttributeProto::default()
                    });
                }),
                3,
                "missing values",
            ),
            (
                changed("BRANCH_LT", |n| {
                    n.attribute[1] = strings("nodes_modes", &["BRANCH_LT", "BRANCH_LEQ", "LEAF"]);
                    n.attribute[0].ints = vec![1, 2, 0];
                }),
                3,
                "mixed",
            ),
        ] {
            let err = Splits::read(&model, width).expect_err(why);
            assert!(err.contains(why), "{err} should mention {why}");
        }
    }
}
