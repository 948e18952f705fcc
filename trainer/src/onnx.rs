//! ONNX export: the two graphs built from [`Forest`]s, with the messages of [`contract::onnx`].
//!
//! Operators: `TreeEnsembleRegressor` from `ai.onnx.ml` opset 3, which ONNX Runtime 1.31 accepts
//! (its opset-5 successor `TreeEnsemble` would work too; `TreeEnsembleRegressor` at opset 5 is
//! rejected). Both graphs are that one node: the anomaly model answers ln(score) and the reader
//! takes the exponential ([`contract::manifest::ANOMALY_OUTPUT`]).

use crate::forest::{Forest, Node};
pub use contract::onnx::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorShapeProto, TensorTypeProto, TypeProto, ValueInfoProto,
    attr_type,
};
use prost::Message;
use std::collections::BTreeMap;

/// ONNX IR version written (ONNX 1.13); ONNX Runtime 1.31 reads up to 11.
const IR_VERSION: i64 = 8;
/// Default-domain opset (imported for completeness; no default-domain operator is used).
const ONNX_OPSET: i64 = 17;
/// `ai.onnx.ml` opset (for `TreeEnsembleRegressor`).
const ML_OPSET: i64 = 3;
/// `TensorProto.DataType.FLOAT`.
const FLOAT: i32 = 1;

fn attr(name: &str, kind: i32) -> AttributeProto {
    AttributeProto {
        name: Some(name.to_owned()),
        r#type: Some(kind),
        ..AttributeProto::default()
    }
}

fn attr_ints(name: &str, ints: Vec<i64>) -> AttributeProto {
    AttributeProto {
        ints,
        ..attr(name, attr_type::INTS)
    }
}

fn attr_floats(name: &str, floats: Vec<f32>) -> AttributeProto {
    AttributeProto {
        floats,
        ..attr(name, attr_type::FLOATS)
    }
}

fn attr_int(name: &str, i: i64) -> AttributeProto {
    AttributeProto {
        i: Some(i),
        ..attr(name, attr_type::INT)
    }
}

fn attr_string(name: &str, s: &str) -> AttributeProto {
    AttributeProto {
        s: Some(s.as_bytes().to_vec()),
        ..attr(name, attr_type::STRING)
    }
}

fn attr_strings(name: &str, strings: Vec<Vec<u8>>) -> AttributeProto {
    AttributeProto {
        strings,
        ..attr(name, attr_type::STRINGS)
    }
}

/// A float matrix `[N, width]` with a free batch size.
fn matrix(name: &str, width: usize) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type: Some(FLOAT),
                shape: Some(TensorShapeProto {
                    dim: vec![
                        Dimension {
                            dim_value: None,
                            dim_param: Some("N".to_owned()),
                        },
                        Dimension {
                            dim_value: Some(i64::try_from(width).unwrap_or(i64::MAX)),
                            dim_param: None,
                        },
                    ],
                }),
            }),
        }),
    }
}

/// One `TreeEnsembleRegressor` whose target `t` is `forests[t]`: all trees in one node, so one
/// call evaluates every target.
fn tree_ensemble(forests: &[&Forest], input: &str, output: &str) -> NodeProto {
    let mut tree_ids = Vec::new();
    let mut node_ids = Vec::new();
    let mut feature_ids = Vec::new();
    let mut modes = Vec::new();
    let mut values = Vec::new();
    let mut true_ids = Vec::new();
    let mut false_ids = Vec::new();
    let mut target_tree = Vec::new();
    let mut target_node = Vec::new();
    let mut target_id = Vec::new();
    let mut target_weight = Vec::new();
    let mut tree_id = 0_i64;
    for (target, forest) in forests.iter().enumerate() {
        for tree in &forest.trees {
            for (node_id, node) in tree.nodes.iter().enumerate() {
                let node_id = i64::try_from(node_id).unwrap_or(i64::MAX);
                tree_ids.push(tree_id);
                node_ids.push(node_id);
                match *node {
                    Node::Branch {
                        feature,
                        threshold,
                        left,
                        right,
                    } => {
                        feature_ids.push(i64::from(feature));
                        modes.push(b"BRANCH_LT".to_vec());
                        values.push(threshold);
                        true_ids.push(i64::from(left));
                        false_ids.push(i64::from(right));
                    }
                    Node::Leaf { value } => {
                        feature_ids.push(0);
                        modes.push(b"LEAF".to_vec());
                        values.push(0.0);
                        true_ids.push(0);
                        false_ids.push(0);
                        target_tree.push(tree_id);
                        target_node.push(node_id);
                        target_id.push(i64::try_from(target).unwrap_or(i64::MAX));
                        target_weight.push(value);
                    }
                }
            }
            tree_id += 1;
        }
    }
    NodeProto {
        input: vec![input.to_owned()],
        output: vec![output.to_owned()],
        name: Some("trees".to_owned()),
        op_type: Some("TreeEnsembleRegressor".to_owned()),
        domain: Some("ai.onnx.ml".to_owned()),
        attribute: vec![
            attr_string("aggregate_function", "SUM"),
            attr_floats("base_values", forests.iter().map(|f| f.base).collect()),
            attr_int(
                "n_targets",
                i64::try_from(forests.len()).unwrap_or(i64::MAX),
            ),
            attr_ints("nodes_falsenodeids", false_ids),
            attr_ints("nodes_featureids", feature_ids),
            attr_strings("nodes_modes", modes),
            attr_ints("nodes_nodeids", node_ids),
            attr_ints("nodes_treeids", tree_ids),
            attr_ints("nodes_truenodeids", true_ids),
            attr_floats("nodes_values", values),
            attr_string("post_transform", "NONE"),
            attr_ints("target_ids", target_id),
            attr_ints("target_nodeids", target_node),
            attr_ints("target_treeids", target_tree),
            attr_floats("target_weights", target_weight),
        ],
    }
}

/// What goes into a model file besides the graph.
pub struct ModelInfo<'a> {
    /// Graph name and `kind` metadata (`latency` or `anomaly`).
    pub kind: &'a str,
    /// Model version (also the ONNX `model_version`).
    pub version: u64,
    /// Description.
    pub doc: &'a str,
    /// Metadata entries (the schema fingerprint among them).
    pub metadata: BTreeMap<String, String>,
}

fn model(info: &ModelInfo<'_>, graph: GraphProto) -> Vec<u8> {
    let mut metadata: Vec<StringStringEntryProto> = info
        .metadata
        .iter()
        .map(|(k, v)| StringStringEntryProto {
            key: Some(k.clone()),
            value: Some(v.clone()),
        })
        .collect();
    metadata.push(StringStringEntryProto {
        key: Some("kind".to_owned()),
        value: Some(info.kind.to_owned()),
    });
    ModelProto {
        ir_version: Some(IR_VERSION),
        producer_name: Some("shop-trainer".to_owned()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        domain: Some("shop.optimizer".to_owned()),
        model_version: Some(i64::try_from(info.version).unwrap_or(i64::MAX)),
        doc_string: Some(info.doc.to_owned()),
        graph: Some(graph),
        opset_import: vec![
            OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(ONNX_OPSET),
            },
            OperatorSetIdProto {
                domain: Some("ai.onnx.ml".to_owned()),
                version: Some(ML_OPSET),
            },
        ],
        metadata_props: metadata,
    }
    .encode_to_vec()
}

pub use contract::manifest::{ANOMALY_OUTPUT, LATENCY_OUTPUT, MODEL_INPUT as INPUT};

/// The latency model: `features [N, width]` to `log_latency [N, 2]` (p50, p90).
pub fn latency_model(p50: &Forest, p90: &Forest, width: usize, info: &ModelInfo<'_>) -> Vec<u8> {
    let graph = GraphProto {
        node: vec![tree_ensemble(&[p50, p90], INPUT, LATENCY_OUTPUT)],
        name: Some(info.kind.to_owned()),
        input: vec![matrix(INPUT, width)],
        output: vec![matrix(LATENCY_OUTPUT, 2)],
    };
    model(info, graph)
}

/// The anomaly model: `features [N, width]` to `log_score [N, 1]` = the sum of leaves, whose
/// exponential is the isolation forest's score (the leaves hold its scaled path lengths).
pub fn anomaly_model(forest: &Forest, width: usize, info: &ModelInfo<'_>) -> Vec<u8> {
    let graph = GraphProto {
        node: vec![tree_ensemble(&[forest], INPUT, ANOMALY_OUTPUT)],
        name: Some(info.kind.to_owned()),
        input: vec![matrix(INPUT, width)],
        output: vec![matrix(ANOMALY_OUTPUT, 1)],
    };
    model(info, graph)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forest::Tree;

    #[test]
    fn a_zero_integer_attribute_is_still_written() {
        let bytes = attr_int("n", 0).encode_to_vec();
        let back = AttributeProto::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(back.i, Some(0));
        assert_eq!(back.r#type, Some(attr_type::INT));
    }

    #[test]
    fn model_carries_metadata_and_every_node() {
        let forest = Forest {
            base: 1.0,
            trees: vec![Tree {
                nodes: vec![
                    Node::Branch {
                        feature: 0,
                        threshold: 0.5,
                        left: 1,
                        right: 2,
                    },
                    Node::Leaf { value: -1.0 },
                    Node::Leaf { value: 1.0 },
                ],
            }],
        };
        let info = ModelInfo {
            kind: "anomaly",
            version: 7,
            doc: "test",
            metadata: BTreeMap::from([("schema_fingerprint".to_owned(), "abc".to_owned())]),
        };
        let bytes = anomaly_model(&forest, 3, &info);
        let model = ModelProto::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(model.model_version, Some(7));
        let keys: Vec<_> = model
            .metadata_props
            .iter()
            .filter_map(|e| e.key.clone())
            .collect();
        assert!(keys.contains(&"schema_fingerprint".to_owned()));
        let graph = model.graph.expect("graph");
        let trees = &graph.node[0];
        let modes = trees
            .attribute
            .iter()
            .find(|a| a.name.as_deref() == Some("nodes_modes"))
            .expect("modes");
        assert_eq!(modes.strings.len(), 3);
        assert_eq!(graph.node.len(), 1, "the exponential is the reader's");
        assert_eq!(graph.output[0].name.as_deref(), Some(ANOMALY_OUTPUT));
    }
}
