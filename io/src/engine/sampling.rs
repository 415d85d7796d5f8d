//! Choosing the next token from the model's logits.
//!
//! [`Sampler`] applies llama.cpp's sampler chain as llama-server runs it for Ollama, in the same order and with the
//! same rules: repetition penalties over the last `repeat_last_n` tokens, then top-k, typical-p, top-p and min-p,
//! then temperature, then a seeded draw; temperature 0 takes the most likely token left, without a draw.
//! [`argmax`] is plain greedy decoding.
//!
//! Determinism: a sampler's choices depend only on its options, its seed (or the caller's entropy when the
//! options carry none) and the logits it is given. Ties between equal logits always break toward the lower
//! token id, so no result depends on how a sort algorithm orders equal elements.

use std::cmp::Ordering;
use std::collections::VecDeque;

use ollamamax_core::rng::Rng;

use super::options::{GenerateOptions, NUM_CTX_MAX};

/// The index of the largest logit (the first one on ties), as llama.cpp's greedy sampler picks it. NaN logits are
/// never chosen unless every logit is NaN. Panics on an empty slice: the vocabulary is never empty.
pub fn argmax(logits: &[f32]) -> u32 {
    /// Lanes of the passes below, which the compiler turns into vector instructions.
    const LANES: usize = 16;
    assert!(!logits.is_empty(), "logits for an empty vocabulary");
    // The largest value that is not NaN (`max` skips NaN), lane by lane, then across lanes.
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (lane, &logit) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(logit);
        }
    }
    let largest = tail
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |max, &logit| max.max(logit));
    // Its first occurrence (-0 equals 0, so equal zeros also go to the first); none when every logit is NaN.
    let first = logits
        .chunks(LANES)
        .position(|chunk| {
            chunk
                .iter()
                .fold(false, |seen, &logit| seen | (logit == largest))
        })
        .map_or(0, |chunk| {
            let within = logits[chunk * LANES..]
                .iter()
                .position(|&logit| logit == largest)
                .expect("the chunk holds it");
            chunk * LANES + within
        });
    u32::try_from(first).expect("vocabulary sizes fit in u32")
}

/// One token still in the running, with its (possibly penalized or scaled) logit.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Candidate {
    token: u32,
    logit: f32,
}

/// Most likely first, then the lower token id: a total order (NaN logits are replaced before sorting).
/// `logit` after the penalties (repeat, frequency, presence) for a token seen `count` times in the window.
fn penalized(logit: f32, count: usize, (repeat, frequency, presence): (f32, f32, f32)) -> f32 {
    let logit = if logit <= 0.0 {
        logit * repeat
    } else {
        logit / repeat
    };
    logit - (count as f32 * frequency + presence)
}

/// A candidate's logit: NaN counts as negative infinity.
fn not_nan(logit: f32) -> f32 {
    if logit.is_nan() {
        f32::NEG_INFINITY
    } else {
        logit
    }
}

/// An integer that orders as [`f32::total_cmp`] orders `value`.
fn total_order_key(value: f32) -> i32 {
    let bits = value.to_bits() as i32;
    bits ^ (((bits >> 31) as u32) >> 1) as i32
}

/// The key ([`total_order_key`] of [`not_nan`]) of the largest logit and its first index; `None` when empty.
/// Two passes the compiler vectorises: the maximum, then where it first occurs.
fn largest(logits: &[f32]) -> Option<(i32, usize)> {
    let key = |logit: &f32| total_order_key(not_nan(*logit));
    let best = logits.iter().map(key).max()?;
    let index = logits
        .iter()
        .position(|logit| key(logit) == best)
        .expect("the maximum occurs");
    Some((best, index))
}

fn by_logit_descending(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.token.cmp(&b.token))
}

/// Picks tokens for one sequence. Build one per request with [`Sampler::new`], feed it the prompt with
/// [`Sampler::accept`] (the penalties look at prompt tokens too, as in llama-server), then call
/// [`Sampler::sample`] once per step. Its buffers are reused from step to step, so sampling allocates only while
/// they grow to the vocabulary's size on the first step.
#[derive(Clone, Debug)]
pub struct Sampler {
    temperature: f32,
    /// 0 keeps every token.
    top_k: usize,
    top_p: f32,
    min_p: f32,
    typical_p: f32,
    repeat_penalty: f32,
    presence_penalty: f32,
    frequency_penalty: f32,
    /// How many recent tokens the penalties look at; 0 disables them.
    window_tokens_max: usize,
    rng: Rng,
    /// The last `window_tokens_max` accepted tokens, oldest first.
    history: VecDeque<u32>,
    /// The tokens still in the running. Indexed by token id until the first filter reorders it.
    candidates: Vec<Candidate>,
    /// Where typical-p builds its reordered selection.
    spare: Vec<Candidate>,
    /// Probabilities (or draw weights) of `candidates`, index for index.
    weights: Vec<f32>,
    /// Typical-p's sort keys: distance from the entropy, and the index into `candidates`.
    order: Vec<(f32, u32)>,
    /// `history`, sorted, to count each token's occurrences.
    recent: Vec<u32>,
}

impl Sampler {
    /// A sampler for the given options. A non-negative `seed` option seeds its random stream; otherwise (Ollama's
    /// default -1 asks for a fresh seed) `entropy` does, so the caller decides where randomness comes from and the
    /// sampler stays deterministic. Options are expected to have passed [`GenerateOptions::validate`]; other values
    /// are read as llama.cpp reads them (a filter whose threshold makes no sense is off), never a panic.
    pub fn new(options: &GenerateOptions, entropy: u64) -> Self {
        let seed = u64::try_from(options.seed).unwrap_or(entropy);
        let num_ctx = options.num_ctx.clamp(0, NUM_CTX_MAX);
        let window = match options.repeat_last_n {
            -1 => num_ctx,
            window => window.clamp(0, num_ctx),
        };
        let finite_or = |value: f32, default: f32| if value.is_finite() { value } else { default };
        let repeat_penalty = finite_or(options.repeat_penalty, 1.0);
        Self {
            // A NaN temperature reads as 0, greedy; every other filter is off when its threshold is NaN.
            temperature: if options.temperature.is_nan() {
                0.0
            } else {
                options.temperature
            },
            top_k: usize::try_from(options.top_k).unwrap_or(0),
            top_p: options.top_p,
            min_p: options.min_p,
            typical_p: options.typical_p,
            // Ollama's own runner reads a penalty of 0 (or less) as none.
            repeat_penalty: if repeat_penalty > 0.0 {
                repeat_penalty
            } else {
                1.0
            },
            presence_penalty: finite_or(options.presence_penalty, 0.0),
            frequency_penalty: finite_or(options.frequency_penalty, 0.0),
            window_tokens_max: usize::try_from(window).expect("clamped to 0..=NUM_CTX_MAX"),
            rng: Rng::new(seed),
            history: VecDeque::new(),
            candidates: Vec::new(),
            spare: Vec::new(),
            weights: Vec::new(),
            order: Vec::new(),
            recent: Vec::new(),
        }
    }

    /// Records a token as part of the sequence, for the penalties: every prompt token, in order, before the first
    /// [`Sampler::sample`]. Sampled tokens are recorded by `sample` itself.
    pub fn accept(&mut self, token: u32) {
        if self.window_tokens_max == 0 {
            return;
        }
        if self.history.len() == self.window_tokens_max {
            self.history.pop_front();
        }
        self.history.push_back(token);
        assert!(self.history.len() <= self.window_tokens_max);
    }

    /// Picks the next token from the logits of the whole vocabulary and records it with [`Sampler::accept`].
    /// NaN logits count as impossible. Panics on an empty vocabulary or one too large for `u32` token ids.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        assert!(!logits.is_empty(), "logits for an empty vocabulary");
        assert!(
            u32::try_from(logits.len()).is_ok(),
            "vocabulary sizes fit in u32"
        );
        let token = self.choose(logits);
        assert!((token as usize) < logits.len());
        self.accept(token);
        token
    }

    fn choose(&mut self, logits: &[f32]) -> u32 {
        let greedy = self.temperature <= 0.0;
        let typical = self.typical_p < 1.0;
        let penalize = self.penalties_apply();
        // Top-k, top-p and min-p always keep the most likely token, so greedy needs them only after typical-p.
        if greedy && !typical {
            return if penalize {
                self.most_likely_penalized(logits)
            } else {
                argmax(logits)
            };
        }
        if self.top_k > 0 && self.top_k < logits.len() {
            self.top_k_candidates(logits, penalize);
        } else {
            self.candidates.clear();
            self.candidates
                .extend(logits.iter().enumerate().map(|(index, &logit)| Candidate {
                    token: index as u32,
                    logit: not_nan(logit),
                }));
            if penalize {
                self.penalize();
            }
            let sort = greedy || typical || self.top_p < 1.0 || self.min_p > 0.0;
            if sort {
                self.candidates.sort_unstable_by(by_logit_descending);
            }
        }
        if typical {
            self.keep_typical();
        }
        if self.top_p < 1.0 {
            self.keep_top_p();
        }
        if self.min_p > 0.0 {
            self.keep_min_p();
        }
        if greedy {
            return self.candidates[0].token;
        }
        self.draw()
    }

    /// The repeat, frequency and presence penalties, as [`penalized`] takes them.
    fn penalties(&self) -> (f32, f32, f32) {
        (
            self.repeat_penalty,
            self.frequency_penalty,
            self.presence_penalty,
        )
    }

    fn penalties_apply(&self) -> bool {
        !self.history.is_empty()
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }

    /// llama.cpp's penalties: a seen token's logit is divided by `repeat_penalty` if positive (multiplied if not,
    /// so it always drops), then lowered by `frequency_penalty` per occurrence and `presence_penalty` once.
    fn penalize(&mut self) {
        let penalties = self.penalties();
        self.recent.clear();
        self.recent.extend(self.history.iter().copied());
        self.recent.sort_unstable();
        for run in self.recent.chunk_by(|a, b| a == b) {
            // Candidates are still indexed by token; a token outside the vocabulary has no logit to lower.
            let Some(candidate) = self.candidates.get_mut(run[0] as usize) else {
                continue;
            };
            candidate.logit = penalized(candidate.logit, run.len(), penalties);
        }
    }

    /// What [`Sampler::penalize`] then [`Sampler::most_likely`] choose, without a candidate per token: the
    /// penalized tokens (at most the window's) are scored apart, the stretches between them scanned in place.
    fn most_likely_penalized(&mut self, logits: &[f32]) -> u32 {
        // (key, token): a larger key wins, then a lower token, as `by_logit_descending` orders candidates.
        let mut best: Option<(i32, usize)> = None;
        let mut consider = |key: i32, token: usize| {
            if best.is_none_or(|(best_key, best_token)| {
                key > best_key || (key == best_key && token < best_token)
            }) {
                best = Some((key, token));
            }
        };
        self.walk_penalized(logits, |piece| match piece {
            Piece::Stretch(first, stretch) => {
                if let Some((key, index)) = largest(stretch) {
                    consider(key, first + index);
                }
            }
            Piece::Penalized(token, logit) => consider(total_order_key(logit), token),
        });
        let (_, token) = best.expect("the vocabulary is not empty");
        u32::try_from(token).expect("vocabulary sizes fit in u32")
    }

    /// Hands `visit` the logits as the penalties leave them, in token order and without a candidate per token:
    /// each stretch of tokens outside the window as it is, and each token in the window (at most the window's
    /// many) with its penalized logit.
    fn walk_penalized<'l>(&mut self, logits: &'l [f32], mut visit: impl FnMut(Piece<'l>)) {
        self.recent.clear();
        self.recent.extend(self.history.iter().copied());
        self.recent.sort_unstable();
        let penalties = self.penalties();
        let mut start = 0;
        for run in self.recent.chunk_by(|a, b| a == b) {
            let token = run[0] as usize;
            if token >= logits.len() {
                // Sorted: every later token is outside the vocabulary too.
                break;
            }
            visit(Piece::Stretch(start, &logits[start..token]));
            visit(Piece::Penalized(
                token,
                penalized(not_nan(logits[token]), run.len(), penalties),
            ));
            start = token + 1;
        }
        visit(Piece::Stretch(start, &logits[start..]));
    }

    #[cfg(test)]
    fn most_likely(&self) -> u32 {
        self.candidates
            .iter()
            .min_by(|a, b| by_logit_descending(a, b))
            .expect("the vocabulary is not empty")
            .token
    }

    /// Makes the candidates the `top_k` most likely tokens (after the penalties when `penalize`), sorted most
    /// likely first. One pass over the vocabulary offers each token to [`TopK`], which keeps only those that can
    /// still be among the `top_k`: the whole vocabulary is never copied or sorted.
    fn top_k_candidates(&mut self, logits: &[f32], penalize: bool) {
        let mut top = TopK::new(self.top_k, std::mem::take(&mut self.candidates));
        if penalize {
            self.walk_penalized(logits, |piece| match piece {
                Piece::Stretch(first, stretch) => top.offer_all(first, stretch),
                Piece::Penalized(token, logit) => top.offer(Candidate {
                    token: token as u32,
                    logit,
                }),
            });
        } else {
            top.offer_all(0, logits);
        }
        self.candidates = top.finish();
    }

    /// Locally typical sampling (Meister et al. 2022, as llama.cpp implements it): orders candidates by how far
    /// their information content lies from the entropy and keeps them until their probability passes
    /// `typical_p`. Leaves the survivors sorted most likely first.
    fn keep_typical(&mut self) {
        softmax(&self.candidates, 1.0, &mut self.weights);
        let entropy: f32 = self
            .weights
            .iter()
            .filter(|&&probability| probability > 0.0)
            .map(|&probability| -probability * probability.ln())
            .sum();
        self.order.clear();
        self.order.extend(
            self.weights
                .iter()
                .enumerate()
                .map(|(index, &probability)| ((-probability.ln() - entropy).abs(), index as u32)),
        );
        self.order
            .sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let mut cumulative = 0.0;
        let mut keep = self.order.len();
        for (position, &(_, index)) in self.order.iter().enumerate() {
            cumulative += self.weights[index as usize];
            if cumulative > self.typical_p {
                keep = position + 1;
                break;
            }
        }
        self.spare.clear();
        let candidates = &self.candidates;
        self.spare.extend(
            self.order[..keep]
                .iter()
                .map(|&(_, index)| candidates[index as usize]),
        );
        std::mem::swap(&mut self.candidates, &mut self.spare);
        self.candidates.sort_unstable_by(by_logit_descending);
    }

    /// Nucleus sampling: keeps the most likely candidates until their probability reaches `top_p`. Expects them
    /// sorted most likely first.
    fn keep_top_p(&mut self) {
        softmax(&self.candidates, 1.0, &mut self.weights);
        let mut cumulative = 0.0;
        let mut keep = self.candidates.len();
        for (position, &probability) in self.weights.iter().enumerate() {
            cumulative += probability;
            if cumulative >= self.top_p {
                keep = position + 1;
                break;
            }
        }
        self.candidates.truncate(keep);
    }

    /// Keeps the candidates at least `min_p` times as likely as the most likely one. Expects them sorted most
    /// likely first.
    fn keep_min_p(&mut self) {
        let threshold = self.candidates[0].logit + self.min_p.ln();
        let keep = self
            .candidates
            .iter()
            .position(|candidate| candidate.logit < threshold)
            .unwrap_or(self.candidates.len())
            .max(1);
        self.candidates.truncate(keep);
    }

    /// Draws one candidate with probability proportional to `exp(logit / temperature)`.
    fn draw(&mut self) -> u32 {
        softmax(&self.candidates, self.temperature, &mut self.weights);
        let total: f64 = self.weights.iter().map(|&weight| f64::from(weight)).sum();
        // 53 random bits: a uniform float in [0, 1).
        let unit = (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
        let target = unit * total;
        let mut cumulative = 0.0;
        let mut chosen = None;
        for (candidate, &weight) in self.candidates.iter().zip(&self.weights) {
            if weight <= 0.0 {
                continue;
            }
            cumulative += f64::from(weight);
            chosen = Some(candidate.token);
            if cumulative > target {
                break;
            }
        }
        // Rounding can leave the target a hair above the sum: the last possible candidate takes it.
        chosen.unwrap_or(self.candidates[0].token)
    }
}

/// A piece of the logits as [`Sampler::walk_penalized`] hands them out.
enum Piece<'l> {
    /// Tokens `first..` outside the penalty window, their logits as they are (NaN included).
    Stretch(usize, &'l [f32]),
    /// A token in the window and its penalized logit.
    Penalized(usize, f32),
}

/// The `k` most likely of the candidates offered to it, whatever their order: those offered are kept while they
/// can still be among the `k` (their logit at least the `k`-th largest kept so far), pruned to `k` each time the
/// buffer fills.
struct TopK {
    k: usize,
    kept: Vec<Candidate>,
    /// Offers below this logit cannot be among the `k`: the `k`-th largest kept at the last pruning.
    threshold: f32,
}

impl TopK {
    /// Offers kept between two prunings, beyond the `k` kept: enough that pruning is rare.
    const SLACK_MIN: usize = 64;

    fn new(k: usize, mut buffer: Vec<Candidate>) -> Self {
        assert!(k > 0, "at least one candidate");
        buffer.clear();
        Self {
            k,
            kept: buffer,
            threshold: f32::NEG_INFINITY,
        }
    }

    fn offer(&mut self, candidate: Candidate) {
        if candidate.logit >= self.threshold {
            self.kept.push(candidate);
            if self.kept.len() >= self.k + self.k.max(Self::SLACK_MIN) {
                self.prune();
            }
        }
    }

    /// Offers `logits[i]` as token `first + i`, NaN as negative infinity, looking at each chunk of lanes as a
    /// whole first: most chunks hold nothing above the threshold.
    fn offer_all(&mut self, first: usize, logits: &[f32]) {
        const LANES: usize = 16;
        for (index, chunk) in logits.chunks(LANES).enumerate() {
            let threshold = self.threshold;
            if !chunk
                .iter()
                .fold(false, |any, &logit| any | (not_nan(logit) >= threshold))
            {
                continue;
            }
            for (lane, &logit) in chunk.iter().enumerate() {
                self.offer(Candidate {
                    token: (first + index * LANES + lane) as u32,
                    logit: not_nan(logit),
                });
            }
        }
    }

    fn prune(&mut self) {
        if self.kept.len() > self.k {
            self.kept
                .select_nth_unstable_by(self.k - 1, by_logit_descending);
            self.kept.truncate(self.k);
            self.threshold = self.kept[self.k - 1].logit;
        }
    }

    /// The `k` most likely offered (all, when fewer were offered), most likely first.
    fn finish(mut self) -> Vec<Candidate> {
        self.prune();
        self.kept.sort_unstable_by(by_logit_descending);
        self.kept
    }
}

/// Fills `weights` with the probabilities of `candidates` at `temperature` (which must be positive). The most
/// likely logit weighs exactly 1 before normalizing, so infinite logits give a defined result: every `+inf` ties,
/// every `-inf` weighs 0 (unless all are `-inf`, then all tie).
fn softmax(candidates: &[Candidate], temperature: f32, weights: &mut Vec<f32>) {
    assert!(temperature > 0.0);
    let max = candidates
        .iter()
        .map(|candidate| candidate.logit)
        .fold(f32::NEG_INFINITY, f32::max);
    weights.clear();
    weights.extend(candidates.iter().map(|candidate| {
        if candidate.logit == max {
            1.0
        } else {
            ((candidate.logit - max) / temperature).exp()
        }
    }));
    let sum: f32 = weights.iter().sum();
    assert!(sum >= 1.0, "the most likely candidate weighs 1");
    for weight in weights.iter_mut() {
        *weight /= sum;
    }
}

#[cfg(test)]
mod tests;
