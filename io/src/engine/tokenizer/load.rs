//! Building a [`Tokenizer`] from a GGUF file's `tokenizer.ggml.*` metadata, with llama.cpp's defaults and its
//! fix-ups by token text (`llama_vocab::impl::load`). Only metadata is read, so vocabulary-only files work.

use candle_core::quantized::gguf_file::Value;

use super::super::gguf::{GgufError, GgufFile};
use super::super::pretokenize::PreTokenizerKind;
use super::{TokenType, Tokenizer, TokenizerError};

/// Texts llama.cpp treats as ending a generation, from `llama-vocab.cpp`. It forces them to control tokens,
/// which changes how text is partitioned (Phi-3's `</s>` is user-defined in the file), so we do too, and a token
/// with one of these texts ends a generation (llama.cpp's `special_eog_ids`; see [`end_of_generation_ids`]).
const END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle texts llama.cpp detects as its FIM pad, repository and file-separator tokens, which also end
/// a generation. (Their type fix-up is not reproduced here: partitioning stays as before.)
const FIM_END_OF_GENERATION_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// The metadata ids llama.cpp adds to the end-of-generation set besides EOS and EOT (which the tokenizer checks
/// itself).
const END_OF_GENERATION_KEYS: &[&str] = &[
    "tokenizer.ggml.eom_token_id",
    "tokenizer.ggml.fim_pad_token_id",
    "tokenizer.ggml.fim_rep_token_id",
    "tokenizer.ggml.fim_sep_token_id",
];

/// llama.cpp's end-of-generation set (`special_eog_ids`), less EOS and EOT: every token whose text is in
/// [`END_OF_GENERATION_TEXTS`] or [`FIM_END_OF_GENERATION_TEXTS`], and `ids` (the metadata's end-of-message and FIM
/// ids). Sorted, without duplicates. Two of llama.cpp's exceptions, found by asking llama.cpp 0.3.36
/// (`llama_vocab_is_eog`) about vocabularies of these texts: with `<|return|>` and `<|call|>` or `<|calls|>` in the
/// vocabulary (gpt-oss), `<|end|>` does not end a generation; with `<|tool_response>`, `</s>` does not.
pub(super) fn end_of_generation_ids(texts: &[&str], ids: &[u32]) -> Vec<u32> {
    let has = |text: &str| texts.contains(&text);
    let harmony = has("<|return|>") && (has("<|call|>") || has("<|calls|>"));
    let tool_response = has("<|tool_response>");
    let mut set: Vec<u32> = texts
        .iter()
        .enumerate()
        .filter(|(_, text)| {
            END_OF_GENERATION_TEXTS.contains(text) || FIM_END_OF_GENERATION_TEXTS.contains(text)
        })
        .filter(|(_, text)| !(harmony && **text == "<|end|>"))
        .filter(|(_, text)| !(tool_response && **text == "</s>"))
        .map(|(id, _)| u32::try_from(id).expect("vocabulary ids fit in u32"))
        .collect();
    set.extend(ids.iter().filter(|&&id| (id as usize) < texts.len()));
    set.sort_unstable();
    set.dedup();
    set
}

/// SentencePiece's default special tokens when the metadata names none (llama.cpp's for `"llama"`).
const SPM_DEFAULT_BOS: u32 = 1;
const SPM_DEFAULT_EOS: u32 = 2;
const SPM_DEFAULT_UNKNOWN: u32 = 0;

/// Llama 3's pre-tokenizer names, for which llama.cpp looks whole words up before merging and adds BOS.
const LLAMA3_NAMES: &[&str] = &[
    "llama3",
    "llama-v3",
    "llama-bpe",
    "falcon3",
    "falcon-h1",
    "pixtral",
    "midm-2.0",
    "lfm2",
    "jina-v5-nano",
];

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let model = file.string("tokenizer.ggml.model")?;
        let texts = file.strings("tokenizer.ggml.tokens")?;
        let types = read_types(file, &texts)?;

        let mut tokenizer = match model {
            "gpt2" => {
                let pre_name = match file.get("tokenizer.ggml.pre") {
                    Some(_) => file.string("tokenizer.ggml.pre")?,
                    None => "gpt2",
                };
                let pre_kind = PreTokenizerKind::from_gguf(pre_name)
                    .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(pre_name.to_string()))?;
                let merges = file.strings("tokenizer.ggml.merges")?;
                let llama3 = LLAMA3_NAMES.contains(&pre_name);
                let mut tokenizer = Self::new_bpe(&texts, &types, &merges, pre_kind, llama3)?;
                tokenizer.add_bos = llama3;
                tokenizer
            }
            "llama" => {
                let scores = read_scores(file, texts.len())?;
                let mut tokenizer = Self::new_spm(&texts, &types, &scores)?;
                let in_vocab = |id: u32| (id < texts.len() as u32).then_some(id);
                tokenizer.bos = in_vocab(SPM_DEFAULT_BOS);
                tokenizer.eos = in_vocab(SPM_DEFAULT_EOS);
                tokenizer.unknown = in_vocab(SPM_DEFAULT_UNKNOWN);
                tokenizer.add_bos = true;
                tokenizer.add_space_prefix =
                    optional_flag(file, "tokenizer.ggml.add_space_prefix", true)?;
                tokenizer
            }
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };

        let vocab_size = texts.len() as u32;
        let optional_id = |key: &str, default: Option<u32>| -> Result<Option<u32>, GgufError> {
            // An id outside the vocabulary keeps the default, as in llama.cpp.
            Ok(match file.get(key) {
                Some(_) => Some(file.u32(key)?)
                    .filter(|&id| id < vocab_size)
                    .or(default),
                None => default,
            })
        };
        tokenizer.bos = optional_id("tokenizer.ggml.bos_token_id", tokenizer.bos)?;
        tokenizer.eos = optional_id("tokenizer.ggml.eos_token_id", tokenizer.eos)?;
        tokenizer.unknown = optional_id("tokenizer.ggml.unknown_token_id", tokenizer.unknown)?;
        tokenizer.eot = optional_id("tokenizer.ggml.eot_token_id", None)?;
        tokenizer.add_bos = optional_flag(file, "tokenizer.ggml.add_bos_token", tokenizer.add_bos)?;
        tokenizer.add_eos = optional_flag(file, "tokenizer.ggml.add_eos_token", false)?;
        let mut ids = Vec::with_capacity(END_OF_GENERATION_KEYS.len());
        for key in END_OF_GENERATION_KEYS {
            ids.extend(optional_id(key, None)?);
        }
        tokenizer.end_of_generation = end_of_generation_ids(&texts, &ids);

        if let Some(Value::String(name)) = file.get("general.name") {
            tokenizer.apply_name_attributes(name);
        }
        Ok(tokenizer)
    }

    /// llama.cpp's per-model token attributes chosen by `general.name`: for Phi-3, whitespace after a special
    /// token is dropped, except after `<unk>`, `<s>` and `<|endoftext|>`.
    fn apply_name_attributes(&mut self, name: &str) {
        let name = name.to_lowercase();
        if !(name.contains("phi-3") || name.contains("phi3")) {
            return;
        }
        for special in &mut self.specials {
            special.rstrip = !matches!(special.text.as_str(), "<unk>" | "<s>" | "<|endoftext|>");
        }
    }
}

/// `tokenizer.ggml.token_type` (all normal when absent), with llama.cpp's fix-up: every token with an
/// end-of-generation text is a control token, whatever the file says.
fn read_types(file: &GgufFile, texts: &[&str]) -> Result<Vec<TokenType>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.token_type";
    let mut types: Vec<TokenType> = match file.get(KEY) {
        Some(_) => file
            .i32s(KEY)?
            .into_iter()
            .map(TokenType::from_gguf)
            .collect(),
        None => vec![TokenType::Normal; texts.len()],
    };
    if types.len() != texts.len() {
        return Err(TokenizerError::CountMismatch {
            key: KEY,
            tokens: texts.len(),
            entries: types.len(),
        });
    }
    for (kind, text) in types.iter_mut().zip(texts) {
        if END_OF_GENERATION_TEXTS.contains(text) {
            *kind = TokenType::Control;
        }
    }
    Ok(types)
}

/// Reads a flag, or `default` when the key is absent.
fn optional_flag(file: &GgufFile, key: &str, default: bool) -> Result<bool, GgufError> {
    file.get(key).map_or(Ok(default), |_| file.bool(key))
}

/// `tokenizer.ggml.scores` (float or integer), one per token; all 0 when absent, as in llama.cpp.
fn read_scores(file: &GgufFile, tokens: usize) -> Result<Vec<f32>, TokenizerError> {
    const KEY: &str = "tokenizer.ggml.scores";
    if file.get(KEY).is_none() {
        return Ok(vec![0.0; tokens]);
    }
    let scores = file
        .array(KEY)?
        .iter()
        .map(|value| match value {
            Value::F32(score) => Ok(*score),
            Value::I32(score) => Ok(*score as f32),
            _ => Err(GgufError::BadValue {
                key: KEY.to_string(),
                problem: "expected an array of f32 or i32".to_string(),
            }),
        })
        .collect::<Result<Vec<f32>, GgufError>>()?;
    if scores.len() < tokens {
        return Err(TokenizerError::CountMismatch {
            key: KEY,
            tokens,
            entries: scores.len(),
        });
    }
    Ok(scores[..tokens].to_vec())
}

#[cfg(test)]
mod tests {
    use super::end_of_generation_ids;

    /// The expectations are what llama.cpp 0.3.36's `llama_vocab_is_eog` answered for vocabularies of these texts.
    #[test]
    fn end_of_generation_follows_llama_cpp() {
        let texts = [
            "<s>",
            "hi",
            "<|im_end|>",
            "<|im_start|>",
            "<end_of_turn>",
            "</s>",
            "<|fim_pad|>",
        ];
        assert_eq!(end_of_generation_ids(&texts, &[]), [2, 4, 5, 6]);
        assert_eq!(
            end_of_generation_ids(&texts, &[1, 9]),
            [1, 2, 4, 5, 6],
            "in-vocabulary ids join"
        );
        let harmony = ["<|end|>", "<|return|>", "<|call|>"];
        assert_eq!(end_of_generation_ids(&harmony, &[]), [1, 2]);
        assert_eq!(end_of_generation_ids(&harmony[..2], &[]), [0, 1]);
        assert_eq!(
            end_of_generation_ids(&["</s>", "<|tool_response>"], &[]),
            [1]
        );
        assert!(end_of_generation_ids(&["<|im_start|>", "a"], &[]).is_empty());
    }
}
