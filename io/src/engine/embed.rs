//! Embeddings: one vector per input text, as `/api/embed` returns them.
//!
//! The model's final hidden states (after the output norm) are pooled over the input's tokens as the GGUF's
//! `{arch}.pooling_type` says ([`Pooling`]: the mean, which is what llama.cpp (and so Ollama) does for a decoder
//! model whose GGUF names no pooling; the first token's; the last token's) and scaled to unit length. Truncation to the context is the caller's decision (`truncate` in the API): here an input that does
//! not fit is an error.

use super::gguf::Pooling;
use super::{GenerateError, Model};

impl Model {
    /// The unit-length embedding of `tokens`.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>, GenerateError> {
        let context = self.config.context_length;
        // Unlike a prompt, an embedding input may fill the whole context: nothing is generated after it.
        self.check_prompt(tokens, context.saturating_add(1))?;
        let mut cache = self.llama.new_cache(tokens.len() as u32)?;
        let hidden = self.llama.normed_hidden_states(tokens, &mut cache)?;
        let pooled = match self.config.pooling {
            Pooling::Mean => hidden.mean(0)?,
            Pooling::Cls => hidden.get(0)?,
            Pooling::Last => hidden.get(tokens.len() - 1)?,
        };
        Ok(normalized(pooled.to_vec1::<f32>()?))
    }
}

/// `vector / |vector|`; an all-zero vector stays zero rather than becoming NaN.
fn normalized(mut vector: Vec<f32>) -> Vec<f32> {
    let norm = vector
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in &mut vector {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
    vector
}

#[cfg(test)]
mod tests {
    use super::normalized;

    #[test]
    fn normalizing_gives_unit_length_and_keeps_zero() {
        let unit = normalized(vec![3.0, 4.0]);
        assert!((unit[0] - 0.6).abs() < 1e-6 && (unit[1] - 0.8).abs() < 1e-6);
        assert_eq!(normalized(vec![0.0, 0.0]), vec![0.0, 0.0]);
    }
}
