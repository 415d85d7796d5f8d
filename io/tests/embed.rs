//! Embeddings from the real default model: unit length, deterministic, and closer for related texts.

mod common;

use common::model;
use ollamamax_io::engine::tokenizer::EncodeOptions;

fn embed(text: &str) -> Vec<f32> {
    let tokens = model().tokenizer().encode(text, EncodeOptions::FRAGMENT);
    model().embed(&tokens).expect("embedding runs")
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn t10_embeddings_are_unit_length_and_deterministic() {
    let vector = embed("The quick brown fox jumps over the lazy dog.");
    assert_eq!(vector.len(), model().config().embedding_length as usize);
    let norm: f32 = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    assert_eq!(
        vector,
        embed("The quick brown fox jumps over the lazy dog.")
    );
}

#[test]
fn t20_related_texts_are_closer() {
    let cat = embed("I love my cat, she sleeps on the sofa all day.");
    let kitten = embed("My kitten naps on the couch every afternoon.");
    let tax = embed("Quarterly corporate tax filings are due before the fiscal deadline.");
    let related = cosine(&cat, &kitten);
    let unrelated = cosine(&cat, &tax);
    assert!(
        related > unrelated,
        "related {related} should exceed unrelated {unrelated}"
    );
}

#[test]
fn t30_empty_input_is_an_error() {
    assert!(model().embed(&[]).is_err());
}
