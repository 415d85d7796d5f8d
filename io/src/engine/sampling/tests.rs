use ollamamax_core::rng::Rng;
use proptest::prelude::*;

use super::*;

/// Options with every filter and penalty off, temperature 1 and a fixed seed: tests switch on what they test.
fn neutral() -> GenerateOptions {
    GenerateOptions {
        seed: 7,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        typical_p: 1.0,
        temperature: 1.0,
        repeat_penalty: 1.0,
        ..GenerateOptions::default()
    }
}

fn random_logits(rng: &mut Rng, vocab: usize) -> Vec<f32> {
    (0..vocab)
        .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0)
        .collect()
}

fn probabilities(logits: &[f32], temperature: f64) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let weights: Vec<f64> = logits
        .iter()
        .map(|&logit| ((f64::from(logit) - f64::from(max)) / temperature).exp())
        .collect();
    let sum: f64 = weights.iter().sum();
    weights.iter().map(|weight| weight / sum).collect()
}

#[test]
fn argmax_picks_the_first_largest() {
    assert_eq!(argmax(&[0.5, 2.0, -1.0, 2.0]), 1);
    assert_eq!(argmax(&[3.0]), 0);
    assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
}

#[test]
fn argmax_ignores_nan() {
    assert_eq!(argmax(&[f32::NAN, 1.0, f32::NAN, 0.0]), 1);
}

#[test]
fn temperature_zero_is_argmax_without_a_draw() {
    let options = GenerateOptions {
        temperature: 0.0,
        ..GenerateOptions::default()
    };
    let mut sampler = Sampler::new(&options, 99);
    let mut rng = Rng::new(1);
    for _ in 0..100 {
        let logits = random_logits(&mut rng, 300);
        assert_eq!(sampler.sample(&logits), argmax(&logits));
    }
    assert_eq!(sampler.rng, Rng::new(99), "greedy sampling never draws");
    // With penalties and typical-p on, the greedy path still takes the most likely token left.
    let options = GenerateOptions {
        typical_p: 0.99,
        repeat_penalty: 1.1,
        ..options
    };
    let mut sampler = Sampler::new(&options, 99);
    let logits = [0.0, 3.0, 1.0, 3.0];
    assert_eq!(sampler.sample(&logits), 1);
    assert_eq!(sampler.rng, Rng::new(99));
}

#[test]
fn top_k_one_is_greedy() {
    let options = GenerateOptions {
        top_k: 1,
        temperature: 1.5,
        ..neutral()
    };
    let mut sampler = Sampler::new(&options, 0);
    let mut rng = Rng::new(2);
    for _ in 0..200 {
        let logits = random_logits(&mut rng, 64);
        assert_eq!(sampler.sample(&logits), argmax(&logits));
    }
}

#[test]
fn the_same_seed_and_logits_give_the_same_tokens() {
    let options = GenerateOptions {
        seed: 42,
        repeat_penalty: 1.1,
        typical_p: 0.95,
        min_p: 0.01,
        ..GenerateOptions::default()
    };
    let mut first = Sampler::new(&options, 1);
    let mut second = Sampler::new(&options, 2);
    // Without a seed option the caller's entropy seeds the stream, with the same result for the same value.
    let unseeded = GenerateOptions {
        seed: -1,
        ..options
    };
    let mut third = Sampler::new(&unseeded, 42);
    let mut rng = Rng::new(3);
    let mut tokens = Vec::new();
    for _ in 0..300 {
        let logits = random_logits(&mut rng, 200);
        let token = first.sample(&logits);
        assert_eq!(second.sample(&logits), token);
        assert_eq!(third.sample(&logits), token);
        tokens.push(token);
    }
    tokens.sort_unstable();
    tokens.dedup();
    assert!(tokens.len() > 10, "the run actually samples");
}

#[test]
fn different_seeds_differ_over_a_long_run() {
    let logits = vec![0.0; 100];
    let mut one = Sampler::new(
        &GenerateOptions {
            seed: 1,
            ..neutral()
        },
        0,
    );
    let mut two = Sampler::new(
        &GenerateOptions {
            seed: 2,
            ..neutral()
        },
        0,
    );
    let differing = (0..200)
        .filter(|_| one.sample(&logits) != two.sample(&logits))
        .count();
    assert!(differing > 150, "{differing} of 200 tokens differ");
}

/// Pearson's chi-square of `draws` samples against `expected` probabilities.
fn chi_square(sampler: &mut Sampler, logits: &[f32], expected: &[f64], draws: u32) -> f64 {
    let mut observed = vec![0u32; logits.len()];
    for _ in 0..draws {
        observed[sampler.sample(logits) as usize] += 1;
    }
    observed
        .iter()
        .zip(expected)
        .map(|(&count, &probability)| {
            let expected = probability * f64::from(draws);
            (f64::from(count) - expected).powi(2) / expected
        })
        .sum()
}

#[test]
fn draws_follow_the_softmax() {
    let logits = [1.0, 2.0, 0.5, 3.0, -1.0, 0.0];
    // 5 degrees of freedom: the 0.999 quantile of chi-square is 20.52.
    for temperature in [1.0f32, 0.5, 2.0] {
        let options = GenerateOptions {
            temperature,
            ..neutral()
        };
        let mut sampler = Sampler::new(&options, 0);
        let expected = probabilities(&logits, f64::from(temperature));
        let statistic = chi_square(&mut sampler, &logits, &expected, 60_000);
        assert!(
            statistic < 20.52,
            "chi-square {statistic} at temperature {temperature}"
        );
    }
}

#[test]
fn draws_follow_the_renormalized_top_k() {
    let logits = [1.0, 2.0, 0.5, 3.0, -1.0, 0.0];
    let options = GenerateOptions {
        top_k: 3,
        ..neutral()
    };
    let mut sampler = Sampler::new(&options, 0);
    let kept = probabilities(&[1.0, 2.0, 3.0], 1.0);
    let expected = [kept[0], kept[1], 0.0, kept[2], 0.0, 0.0];
    let mut observed = [0u32; 6];
    for _ in 0..30_000 {
        observed[sampler.sample(&logits) as usize] += 1;
    }
    for (token, (&count, &probability)) in observed.iter().zip(&expected).enumerate() {
        let frequency = f64::from(count) / 30_000.0;
        assert!(
            (frequency - probability).abs() < 0.015,
            "token {token}: {frequency} vs {probability}"
        );
    }
}

#[test]
fn penalties_follow_llama_cpp() {
    let options = GenerateOptions {
        repeat_penalty: 2.0,
        frequency_penalty: 0.1,
        presence_penalty: 0.5,
        ..neutral()
    };
    let mut sampler = Sampler::new(&options, 0);
    for token in [0, 1, 0, 3, 9] {
        sampler.accept(token);
    }
    let logits = [2.0, -1.0, 0.5, 3.0];
    sampler.candidates.clear();
    sampler
        .candidates
        .extend(logits.iter().enumerate().map(|(token, &logit)| Candidate {
            token: token as u32,
            logit,
        }));
    sampler.penalize();
    // Seen twice, positive: 2 / 2 - 2 * 0.1 - 0.5. Seen once, negative: -1 * 2 - 0.1 - 0.5. Token 2: unseen.
    // Token 9 is outside the vocabulary and ignored.
    let expected = [0.3, -2.6, 0.5, 0.9];
    for (candidate, expected) in sampler.candidates.iter().zip(expected) {
        assert!(
            (candidate.logit - expected).abs() < 1e-6,
            "{candidate:?}, expected {expected}"
        );
    }
}

#[test]
fn a_repeat_penalty_changes_the_greedy_choice() {
    let options = GenerateOptions {
        temperature: 0.0,
        repeat_penalty: 1.1,
        ..neutral()
    };
    let mut sampler = Sampler::new(&options, 0);
    let logits = [2.0, 1.9];
    assert_eq!(sampler.sample(&logits), 0);
    // Token 0 is now recent: 2.0 / 1.1 < 1.9.
    assert_eq!(sampler.sample(&logits), 1);
}

#[test]
fn penalties_lower_the_probability_of_recent_tokens() {
    let options = GenerateOptions {
        presence_penalty: 1.0,
        repeat_last_n: 8,
        ..neutral()
    };
    let mut sampler = Sampler::new(&options, 0);
    let logits = [0.0; 4];
    let mut draws_of_zero = 0;
    for _ in 0..20_000 {
        // Only the prompt's tokens count: reset the window to them before each draw.
        sampler.history.clear();
        for token in [0, 0, 0] {
            sampler.accept(token);
        }
        if sampler.sample(&logits) == 0 {
            draws_of_zero += 1;
        }
    }
    let expected = (-1.0f64).exp() / ((-1.0f64).exp() + 3.0);
    let frequency = f64::from(draws_of_zero) / 20_000.0;
    assert!(
        (frequency - expected).abs() < 0.015,
        "{frequency} vs {expected} (0.25 without the penalty)"
    );
}

#[test]
fn the_penalty_window_keeps_the_last_repeat_last_n_tokens() {
    let options = GenerateOptions {
        repeat_last_n: 2,
        ..neutral()
    };
    let mut sampler = Sampler::new(&options, 0);
    for token in [5, 6, 7] {
        sampler.accept(token);
    }
    assert_eq!(sampler.history, [6, 7]);
    // -1 means the whole context; 0 records nothing.
    let whole = GenerateOptions {
        repeat_last_n: -1,
        num_ctx: 8,
        ..neutral()
    };
    assert_eq!(Sampler::new(&whole, 0).window_tokens_max, 8);
    let mut off = Sampler::new(
        &GenerateOptions {
            repeat_last_n: 0,
            ..neutral()
        },
        0,
    );
    off.accept(1);
    assert!(off.history.is_empty());
    // Sampled tokens are recorded too.
    let mut sampler = Sampler::new(&options, 0);
    let token = sampler.sample(&[0.0, 1.0]);
    assert_eq!(sampler.history, [token]);
}

#[test]
fn nan_logits_are_never_chosen_and_infinite_ones_always() {
    let mut sampler = Sampler::new(&neutral(), 0);
    for _ in 0..200 {
        assert_eq!(sampler.sample(&[f32::NAN, 0.0, f32::NAN]), 1);
        assert_eq!(sampler.sample(&[0.0, f32::INFINITY, 5.0]), 1);
    }
    let token = sampler.sample(&[f32::NAN, f32::NAN]);
    assert!(token < 2);
}

/// A fresh sampler with `options`, drawing a few tokens from `logits`.
fn draws(options: &GenerateOptions, logits: &[f32]) -> Vec<u32> {
    let mut sampler = Sampler::new(options, 0);
    (0..8).map(|_| sampler.sample(logits)).collect()
}

/// A sampler (seed 1) that has accepted `history`.
fn with_history(options: &GenerateOptions, history: &[u32]) -> Sampler {
    let mut sampler = Sampler::new(options, 1);
    for &token in history {
        sampler.accept(token);
    }
    sampler
}

/// A copy of `sampler` whose candidates are every token of `logits` (NaN as negative infinity), penalized when its
/// penalties apply: the plain reference that the samplers' shortcuts are checked against.
fn every_candidate(sampler: &Sampler, logits: &[f32]) -> Sampler {
    let mut reference = sampler.clone();
    reference.candidates.clear();
    reference
        .candidates
        .extend(logits.iter().enumerate().map(|(index, &logit)| Candidate {
            token: index as u32,
            logit: not_nan(logit),
        }));
    if reference.penalties_apply() {
        reference.penalize();
    }
    reference
}

fn logits_strategy() -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(-10.0f32..10.0, 1..80)
}

/// Up to `most` logits with many ties, NaN, infinities and zeros of both signs.
fn awkward_logits(most: usize) -> impl Strategy<Value = Vec<f32>> {
    proptest::collection::vec(
        prop_oneof![
            6 => (-4i32..4).prop_map(|v| v as f32 * 0.5),
            1 => Just(f32::NAN),
            1 => Just(f32::INFINITY),
            1 => Just(f32::NEG_INFINITY),
            1 => Just(-0.0f32),
        ],
        1..most,
    )
}

proptest! {
    /// The vectorised argmax picks what a plain scan does: the first of the largest, NaN only when all are NaN.
    #[test]
    fn argmax_equals_a_plain_scan(
        logits in awkward_logits(100),
    ) {
        let mut best = 0;
        for (index, &logit) in logits.iter().enumerate().skip(1) {
            if logit > logits[best] || (logits[best].is_nan() && !logit.is_nan()) {
                best = index;
            }
        }
        prop_assert_eq!(argmax(&logits) as usize, best);
    }

    /// Greedy decoding with penalties scans the logits in place and picks what the candidate list would: over
    /// random logits with ties, NaN, infinities and zeros of both signs, and penalties of every sign.
    #[test]
    fn greedy_penalties_without_candidates_choose_as_the_candidates_do(
        logits in awkward_logits(200),
        history in proptest::collection::vec(0u32..220, 1..40),
        repeat_penalty in prop_oneof![Just(1.0f32), Just(1.1), Just(0.7), Just(0.0)],
        frequency_penalty in prop_oneof![Just(0.0f32), Just(0.3), Just(-0.5)],
        presence_penalty in prop_oneof![Just(0.0f32), Just(0.6), Just(-1.0)],
    ) {
        let options = GenerateOptions {
            temperature: 0.0,
            repeat_penalty,
            frequency_penalty,
            presence_penalty,
            repeat_last_n: 64,
            ..neutral()
        };
        let mut sampler = with_history(&options, &history);
        let expected = every_candidate(&sampler, &logits).most_likely();
        prop_assert_eq!(sampler.most_likely_penalized(&logits), expected);
    }

    /// Top-k's one pass over the vocabulary keeps what sorting every (penalized) candidate would: the same
    /// tokens in the same order, over logits with ties, NaN, infinities and zeros of both signs, long enough to
    /// prune several times.
    #[test]
    fn top_k_in_one_pass_keeps_what_a_full_sort_keeps(
        logits in awkward_logits(700),
        top_k in prop_oneof![1usize..4, 4usize..80, 80usize..800],
        history in proptest::collection::vec(0u32..800, 0..40),
        repeat_penalty in prop_oneof![Just(1.0f32), Just(1.1), Just(0.7)],
        presence_penalty in prop_oneof![Just(0.0f32), Just(0.6), Just(-1.0)],
    ) {
        prop_assume!(top_k < logits.len());
        let options = GenerateOptions {
            temperature: 0.8,
            top_k: top_k as i64,
            repeat_penalty,
            presence_penalty,
            repeat_last_n: 64,
            ..neutral()
        };
        let mut sampler = with_history(&options, &history);
        let mut reference = every_candidate(&sampler, &logits);
        reference.candidates.sort_unstable_by(by_logit_descending);
        reference.candidates.truncate(top_k);
        let penalize = sampler.penalties_apply();
        sampler.top_k_candidates(&logits, penalize);
        let bits = |candidates: &[Candidate]| -> Vec<(u32, u32)> {
            candidates.iter().map(|c| (c.token, c.logit.to_bits())).collect()
        };
        prop_assert_eq!(bits(&sampler.candidates), bits(&reference.candidates));
    }

    #[test]
    fn top_k_never_picks_an_excluded_token(
        logits in logits_strategy(), top_k in 1i64..10, seed in 0i64..1000, temperature in 0.1f32..3.0,
    ) {
        let options = GenerateOptions { top_k, seed, temperature, ..neutral() };
        for token in draws(&options, &logits) {
            let chosen = logits[token as usize];
            let above = logits.iter().filter(|&&logit| logit > chosen).count() as i64;
            prop_assert!(above < top_k, "token {} has {} tokens above it", token, above);
        }
    }

    #[test]
    fn top_p_never_picks_an_excluded_token(
        logits in logits_strategy(), top_p in 0.0f32..=1.0, seed in 0i64..1000, temperature in 0.1f32..3.0,
    ) {
        let options = GenerateOptions { top_p, seed, temperature, ..neutral() };
        let probabilities = probabilities(&logits, 1.0);
        for token in draws(&options, &logits) {
            let chosen = logits[token as usize];
            // Every strictly more likely token comes first in the nucleus, and the nucleus stops at top_p.
            let mass_above: f64 = logits
                .iter()
                .zip(&probabilities)
                .filter(|&(&logit, _)| logit > chosen)
                .map(|(_, &probability)| probability)
                .sum();
            prop_assert!(mass_above < f64::from(top_p) + 1e-5, "mass above {}", mass_above);
        }
    }

    #[test]
    fn min_p_never_picks_an_excluded_token(
        logits in logits_strategy(), min_p in 0.0f32..=1.0, seed in 0i64..1000, temperature in 0.1f32..3.0,
    ) {
        let options = GenerateOptions { min_p, seed, temperature, ..neutral() };
        let probabilities = probabilities(&logits, 1.0);
        let most_likely = probabilities.iter().copied().fold(0.0, f64::max);
        for token in draws(&options, &logits) {
            let probability = probabilities[token as usize];
            prop_assert!(
                probability >= f64::from(min_p) * most_likely * (1.0 - 1e-4),
                "probability {} below {} of {}", probability, min_p, most_likely
            );
        }
    }

    #[test]
    fn typical_p_never_picks_an_excluded_token(
        logits in logits_strategy(), typical_p in 0.0f32..1.0, seed in 0i64..1000, temperature in 0.1f32..3.0,
    ) {
        let options = GenerateOptions { typical_p, seed, temperature, ..neutral() };
        let probabilities = probabilities(&logits, 1.0);
        let entropy: f64 = probabilities
            .iter()
            .filter(|&&probability| probability > 0.0)
            .map(|&probability| -probability * probability.ln())
            .sum();
        let score = |probability: f64| (-probability.ln() - entropy).abs();
        for token in draws(&options, &logits) {
            let chosen = score(probabilities[token as usize]);
            // Every clearly more typical token comes first, and the selection stops once it passes typical_p.
            let mass_before: f64 = probabilities
                .iter()
                .filter(|&&probability| score(probability) < chosen - 1e-3)
                .sum();
            prop_assert!(mass_before <= f64::from(typical_p) + 1e-5, "mass before {}", mass_before);
        }
    }

    #[test]
    fn greedy_is_argmax_whatever_the_filters(
        logits in logits_strategy(), top_k in 0i64..10, top_p in 0.0f32..=1.0, min_p in 0.0f32..=1.0,
    ) {
        let options = GenerateOptions { top_k, top_p, min_p, temperature: 0.0, ..neutral() };
        let mut sampler = Sampler::new(&options, 0);
        prop_assert_eq!(sampler.sample(&logits), argmax(&logits));
    }
}
