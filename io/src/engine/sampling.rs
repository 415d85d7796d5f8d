//! Choosing the next token from the model's logits. Only greedy decoding exists so far; temperature, top-k/p,
//! min-p, penalties and seeds come with the sampling increment.

/// The index of the largest logit (the first one on ties), as llama.cpp's greedy sampler picks it. NaN logits are
/// never chosen unless every logit is NaN. Panics on an empty slice: the vocabulary is never empty.
pub fn argmax(logits: &[f32]) -> u32 {
    assert!(!logits.is_empty(), "logits for an empty vocabulary");
    let mut best = 0;
    for (index, &logit) in logits.iter().enumerate().skip(1) {
        if logit > logits[best] || (logits[best].is_nan() && !logit.is_nan()) {
            best = index;
        }
    }
    u32::try_from(best).expect("vocabulary sizes fit in u32")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_largest() {
        assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
        assert_eq!(argmax(&[3.0]), 0);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
    }

    #[test]
    fn ignores_nan() {
        assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN, 0.0]), 1);
    }
}
