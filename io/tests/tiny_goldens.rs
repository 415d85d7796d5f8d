//! The tiny models in every architecture and weight type we write, greedy, against llama.cpp's own runs.
//!
//! `tests/data/tiny_goldens.json` (made by `tests/data/make_tiny_goldens.py` from the files the
//! `make_tiny_model` example writes; its header names the llama.cpp version, settings and CPU) holds, per variant
//! (seed, architecture, weight types, tied head, width), fixed prompts of token ids and llama.cpp's first 16
//! greedy tokens after each, with its top-1 margin and top 5 logits at every step. Here each model is rebuilt
//! in-process from the same fields (the same bytes), and the engine runs the same ids greedily.
//!
//! Per step: the engine's logits at llama.cpp's top 5 ids must be within the variant's tolerance of llama.cpp's,
//! and the engine must pick llama.cpp's token, except at a recorded near-tie (llama.cpp's margin below twice the
//! tolerance), where the continuations may part and the rest of that run is not compared. Tolerances (see
//! [`tolerance`]): 0 where the engine reproduces llama.cpp's arithmetic (Q4_0, Q4_1, Q5_0 and Q8_0 matrices with
//! our kernels under `Arithmetic::LlamaCpp`); a stated bound where kernels sum in another order than ggml's (see
//! each entry). The default `Arithmetic::Fast` runs the same goldens within [`fast_tolerance`].

mod tiny;

use std::fmt::Write as _;

use ollamamax_io::engine::Arithmetic;
use ollamamax_io::engine::sampling::argmax;
use serde_json::Value;
use tiny::gguf_writer::TensorType;
use tiny::{Architecture, Layout, load_bytes_with, model_writer};

/// Tokens generated per prompt, as recorded.
const TOKENS: usize = 16;

/// [`tolerance`] for [`Arithmetic::Fast`], where the panel kernels (`engine::panel`) take Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
/// Q4_K and Q5_K block matrices: the same integer sums as ggml, each block summed in integers before one
/// multiply-add where ggml sums eight lanes apart. After the prompt that is 4.8e-7 (Q8_0), 9.5e-7 (Q5_1); over a
/// run, through the f16 cache and the requantized activations, 2.6e-2 (Q4_0), 4.1e-2 (Q4_1), 6.2e-2 (Q5_0). K-quants as in
/// [`tolerance`] (their activations were never quantized as ggml's).
fn fast_tolerance(weights: TensorType) -> f32 {
    match weights {
        TensorType::Q4_0
        | TensorType::Q4_1
        | TensorType::Q5_0
        | TensorType::Q5_1
        | TensorType::Q8_0 => 0.1,
        other => tolerance(other),
    }
}

/// The largest difference allowed between the engine's logit and llama.cpp's for a model whose block matrices
/// are `weights`, and why. The measured maxima (llama.cpp 0.3.36's goldens) are in the comments. Differences grow
/// along a run: a last-bit difference can flip the f16 rounding of a cached key or value, or an int8 level of an
/// activation requantized for the next quantized matmul, and both are far coarser than the difference itself.
fn tolerance(weights: TensorType) -> f32 {
    match weights {
        // With `Arithmetic::LlamaCpp` our kernels reproduce ggml's `vec_dot` bit for bit: 0.
        TensorType::Q4_1 | TensorType::Q8_0 | TensorType::Q4_0 => 0.0,
        // Our Q5_0 kernel reproduces ggml's too (1e-4 from when candle's summed in another order: 9.5e-7).
        TensorType::Q5_0 => 1e-4,
        // candle's gemm against ggml's tinyBLAS, same products, another order: 1.5e-3 (width 64), 1.9e-3 (256).
        TensorType::F32 => 5e-3,
        // As F32 once the activations are rounded to f16 as ggml does (`Linear::round_input_to_f16`): 3.8e-3.
        TensorType::F16 => 1e-2,
        // candle's Q8_1 activation blocks store the sum term as f16(f16(Σq) · f16(d)), ggml's as f16(Σq · d)
        // (`quantize_row_q8_1`, d in f32): the same q and d, but s one f16 step off in 4 of 16 blocks of a random
        // row, so one Q5_1 dot product is off by 1e-4 of its size (ggml's `vec_dot_q5_1_q8_1` called through
        // `ggml_get_type_traits_cpu` against candle's `QMatMul`). 0.074 after the prompt, 0.11 over a run.
        TensorType::Q5_1 => 0.25,
        // candle's K-quant dot products against ggml's `vec_dot_q*_K_q8_K` on one row: Q4_K bit-exact, Q5_K and
        // Q6_K within 4e-8 and 3e-7 of the result (float sums in another order). Through the Q8_K requantization
        // of the next matmul's input and the f16 cache that grows to 0.21 (Q4_K), 0.25 (Q5_K, 0.16 already after
        // the prompt), 0.12 (Q6_K) over a run.
        TensorType::Q4K | TensorType::Q5K | TensorType::Q6K => 0.5,
    }
}

struct Run {
    prompt: Vec<u32>,
    tokens: Vec<u32>,
    margins: Vec<f32>,
    /// llama.cpp's top logits per step, `(id, logit)`, best first.
    top: Vec<Vec<(u32, f32)>>,
}

struct Variant {
    name: String,
    seed: u64,
    layout: Layout,
    runs: Vec<Run>,
}

fn u32s(value: &Value) -> Vec<u32> {
    let items = value.as_array().expect("a list of ids");
    items
        .iter()
        .map(|id| u32::try_from(id.as_u64().expect("an id")).expect("a u32 id"))
        .collect()
}

fn f32s(value: &Value) -> Vec<f32> {
    let items = value.as_array().expect("a list of numbers");
    items
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn tensor_type(value: &Value) -> TensorType {
    TensorType::from_name(value.as_str().expect("a type name")).expect("a known type")
}

fn run(value: &Value) -> Run {
    let top = value["top"].as_array().expect("top logits");
    let top = top
        .iter()
        .map(|step| {
            let pairs = step.as_array().expect("pairs");
            pairs
                .iter()
                .map(|pair| {
                    let id = pair[0].as_u64().expect("an id") as u32;
                    (id, pair[1].as_f64().expect("a logit") as f32)
                })
                .collect()
        })
        .collect();
    Run {
        prompt: u32s(&value["prompt"]),
        tokens: u32s(&value["tokens"]),
        margins: f32s(&value["margins"]),
        top,
    }
}

fn variants() -> Vec<Variant> {
    let file: Value =
        serde_json::from_str(include_str!("data/tiny_goldens.json")).expect("valid goldens");
    assert_eq!(file["tokens"].as_u64(), Some(TOKENS as u64));
    let variants = file["variants"].as_array().expect("variants");
    variants
        .iter()
        .map(|v| {
            let number = |key: &str| v[key].as_u64().expect("a number");
            let architecture = v["architecture"].as_str().expect("an architecture");
            let layout = Layout {
                weights: tensor_type(&v["weights"]),
                embedding: tensor_type(&v["embedding"]),
                tied: v["tied"].as_bool().expect("tied"),
                architecture: Architecture::from_name(architecture).expect("known"),
                width: number("width") as usize,
                ffn: number("ffn") as usize,
            };
            let runs = v["runs"]
                .as_array()
                .expect("runs")
                .iter()
                .map(run)
                .collect();
            Variant {
                name: v["name"].as_str().expect("a name").to_string(),
                seed: number("seed"),
                layout,
                runs,
            }
        })
        .collect()
}

/// What one run showed: steps whose token matched, the largest logit difference, and a near-tie parting if any.
#[derive(Default)]
struct Outcome {
    matched: usize,
    worst: f32,
    /// The largest difference after the prompt, before any generated token.
    first: f32,
    parted: Option<String>,
}

/// Runs the engine greedily on `run`'s prompt; `Err` describes the first step outside the tolerance.
fn compare(
    model: &ollamamax_io::engine::Model,
    run: &Run,
    tolerance: f32,
) -> Result<Outcome, String> {
    let llama = model.llama();
    let mut cache = llama
        .new_cache((run.prompt.len() + TOKENS) as u32)
        .expect("cache");
    let mut logits = llama.forward(&run.prompt, &mut cache).expect("forward");
    let mut outcome = Outcome::default();
    for step in 0..TOKENS {
        let values = logits.to_vec1::<f32>().expect("logits");
        for &(id, expected) in &run.top[step] {
            let difference = (values[id as usize] - expected).abs();
            outcome.worst = outcome.worst.max(difference);
            if step == 0 {
                outcome.first = outcome.first.max(difference);
            }
            if difference > tolerance {
                return Err(format!(
                    "step {step}: logit of {id} is {} against llama.cpp's {expected} (tolerance {tolerance})",
                    values[id as usize]
                ));
            }
        }
        let mine = argmax(&values);
        if mine != run.tokens[step] {
            let margin = run.margins[step];
            if margin < 2.0 * tolerance {
                outcome.parted = Some(format!("step {step} (llama.cpp's margin {margin})"));
                return Ok(outcome);
            }
            return Err(format!(
                "step {step}: picked {mine}, llama.cpp {} with margin {margin}",
                run.tokens[step]
            ));
        }
        outcome.matched += 1;
        logits = llama.forward(&[mine], &mut cache).expect("forward");
    }
    Ok(outcome)
}

#[test]
fn every_variant_follows_llama_cpp() {
    check_every_variant(Arithmetic::LlamaCpp, tolerance);
}

#[test]
fn the_fast_kernels_stay_near_llama_cpp() {
    check_every_variant(Arithmetic::Fast, fast_tolerance);
}

/// Runs every variant's prompts with `arithmetic`, each within `tolerance` of its weight type.
fn check_every_variant(arithmetic: Arithmetic, tolerance: fn(TensorType) -> f32) {
    let mut report = String::new();
    let mut failures = Vec::new();
    for variant in variants() {
        let bytes = model_writer(variant.seed, variant.layout).to_bytes();
        let model = load_bytes_with(&bytes, arithmetic).expect("the tiny model loads");
        let tolerance = tolerance(variant.layout.weights);
        let (mut matched, mut worst, mut first, mut parted) = (0, 0f32, 0f32, Vec::new());
        for (index, run) in variant.runs.iter().enumerate() {
            match compare(&model, run, tolerance) {
                Ok(outcome) => {
                    matched += outcome.matched;
                    worst = worst.max(outcome.worst);
                    first = first.max(outcome.first);
                    parted.extend(outcome.parted.map(|at| format!("prompt {index} at {at}")));
                }
                Err(problem) => {
                    failures.push(format!("{} prompt {index}: {problem}", variant.name))
                }
            }
        }
        let total = variant.runs.len() * TOKENS;
        writeln!(
            report,
            "{:<18} {matched:>2}/{total} tokens, max logit difference {worst:.3e} (after the prompt {first:.3e}) \
             {parted:?}",
            variant.name
        )
        .expect("a string");
    }
    eprintln!("{arithmetic:?}:\n{report}");
    assert!(failures.is_empty(), "{failures:#?}\n{report}");
}
