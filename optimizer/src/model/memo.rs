//! Answers kept per cell of a tree model's thresholds.
//!
//! A tree ensemble only ever compares an input with its thresholds, so two rows on the same side
//! of every threshold (the same [`Cell`]) get the same answer, bit for bit: ONNX Runtime walks the
//! same branches and adds the same leaves in the same order. (The order is the same for a row
//! run alone and in a shared batch because each session has one intra-op thread, see
//! [`super::onnx::Pool::new`]; with several, partial sums per thread could differ in the last
//! bit.) [`Memo`] keeps the answer ONNX
//! Runtime gave for each cell it has seen (a bounded `quick_cache`, least recently and least
//! often used cells leave first) and hands it out again for the next row in that cell, for the
//! price of a binary search per input and one cache lookup.
//!
//! It is not an approximation: a new cell always goes to ONNX Runtime, and the test
//! `rows_in_the_same_cell_get_the_same_answers_from_onnx_runtime` (trainer) checks the premise
//! against the real runtime. It only applies to models whose graph [`Splits::read`] vouches for
//! (the trainer's); anything else runs every row. A new model brings a new, empty memo.

use super::onnx::MAX_OUTPUTS;
use contract::onnx::{Cell, Splits};
use quick_cache::sync::Cache;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The answers of one model, per cell.
pub struct Memo {
    splits: Splits,
    answers: Cache<Cell, [f32; MAX_OUTPUTS]>,
    hits: AtomicU64,
}

impl Memo {
    /// A memo of up to `capacity` cells for the model in `bytes` (`width` inputs).
    ///
    /// # Errors
    /// Why the model's answers cannot be kept per cell ([`Splits::read`]).
    pub fn new(bytes: &[u8], width: usize, capacity: usize) -> Result<Self, String> {
        let splits = Splits::read(bytes, width)?;
        Ok(Self {
            splits,
            answers: Cache::new(capacity.max(1)),
            hits: AtomicU64::new(0),
        })
    }

    /// The cell of `row`.
    pub fn cell(&self, row: &[f32]) -> Cell {
        self.splits.cell(row)
    }

    /// The answer kept for `cell`, if any.
    pub fn get(&self, cell: &Cell) -> Option<[f32; MAX_OUTPUTS]> {
        let answer = self.answers.get(cell)?;
        self.hits.fetch_add(1, Relaxed);
        Some(answer)
    }

    /// Keeps ONNX Runtime's answer for `cell`.
    pub fn insert(&self, cell: Cell, answer: [f32; MAX_OUTPUTS]) {
        self.answers.insert(cell, answer);
    }

    /// What `/api/ml-metrics` shows of it.
    pub fn view(&self) -> MemoView {
        MemoView {
            hits: self.hits.load(Relaxed),
            cells: self.answers.len(),
            capacity: self.answers.capacity(),
            thresholds: self.splits.thresholds.iter().map(Vec::len).sum(),
        }
    }
}

/// A memo's counters.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoView {
    /// Rows answered from a kept answer instead of an ONNX Runtime call.
    pub hits: u64,
    /// Cells kept now.
    pub cells: usize,
    /// Most cells kept.
    pub capacity: u64,
    /// Distinct thresholds of the model, over all inputs.
    pub thresholds: usize,
}
