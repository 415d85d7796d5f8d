//! The logits of a batched forward pass ([`super::llama::Llama::forward_batch`]), every row in one buffer: the
//! output head writes them once, and each sequence samples from (and a grammar masks) its own row in place.

/// For each entry of a batch that asked for them, the `vocab` logits after its last token.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchLogits {
    values: Vec<f32>,
    vocab: usize,
    /// Per entry, in the batch's order: the index of its row in `values`, if it asked for logits.
    rows: Vec<Option<usize>>,
}

impl BatchLogits {
    /// `values` holds one row of `vocab` logits for each entry of `asked` that is `true`, in order.
    pub(super) fn new(
        values: Vec<f32>,
        vocab: usize,
        asked: impl IntoIterator<Item = bool>,
    ) -> Self {
        let mut next = 0;
        let rows: Vec<Option<usize>> = asked
            .into_iter()
            .map(|asked| {
                asked.then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        assert_eq!(values.len(), next * vocab, "one row per asking entry");
        Self {
            values,
            vocab,
            rows,
        }
    }

    /// Entries in the batch.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether the batch had no entries.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Entry `entry`'s logits; `None` if it did not ask for them.
    pub fn row(&self, entry: usize) -> Option<&[f32]> {
        self.rows[entry].map(|row| &self.values[row * self.vocab..][..self.vocab])
    }

    /// Every entry's logits in the batch's order, each to change in place.
    pub fn rows_mut(&mut self) -> Vec<Option<&mut [f32]>> {
        let mut chunks = self.values.chunks_exact_mut(self.vocab.max(1));
        self.rows
            .iter()
            .map(|row| row.map(|_| chunks.next().expect("a row per asking entry")))
            .collect()
    }

    /// The logits of a batch of one entry, without copying them.
    pub fn into_only(self) -> Option<Vec<f32>> {
        assert_eq!(self.rows.len(), 1, "a batch of one entry");
        self.rows[0].map(|_| self.values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_to_the_entries_that_asked_in_order() {
        let mut logits = BatchLogits::new(vec![1.0, 2.0, 3.0, 4.0], 2, [false, true, false, true]);
        assert_eq!(logits.len(), 4);
        assert_eq!(logits.row(0), None);
        assert_eq!(logits.row(1), Some(&[1.0, 2.0][..]));
        assert_eq!(logits.row(3), Some(&[3.0, 4.0][..]));
        let mut rows = logits.rows_mut();
        assert!(rows[0].is_none() && rows[2].is_none());
        rows[3].as_mut().expect("asked")[0] = 9.0;
        assert_eq!(logits.row(3), Some(&[9.0, 4.0][..]));
    }

    #[test]
    fn a_single_entry_hands_over_its_buffer() {
        let one = BatchLogits::new(vec![5.0, 6.0], 2, [true]);
        assert_eq!(one.into_only(), Some(vec![5.0, 6.0]));
        let none = BatchLogits::new(Vec::new(), 2, [false]);
        assert_eq!(none.into_only(), None);
    }

    #[test]
    #[should_panic(expected = "one row per asking entry")]
    fn a_missing_row_is_a_bug() {
        BatchLogits::new(vec![1.0, 2.0], 2, [true, true]);
    }
}
