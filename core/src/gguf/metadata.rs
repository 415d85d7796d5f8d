//! The metadata key/value pairs: each one read and bounded, duplicates refused, and the few keys the checks need
//! (`general.alignment`, `general.architecture`, `tokenizer.ggml.*`) kept as small facts. Values are never copied:
//! an array of 100 000 token strings is walked, not collected.

use super::reader::Reader;
use super::{ALIGNMENT_DEFAULT, ALIGNMENT_MAX, GgufError, Limits};
use std::collections::{BTreeMap, BTreeSet};

/// GGUF value type numbers (`enum gguf_type`).
pub(crate) mod value_type {
    /// `u8`.
    pub const U8: u32 = 0;
    /// `i8`.
    pub const I8: u32 = 1;
    /// `u16`.
    pub const U16: u32 = 2;
    /// `i16`.
    pub const I16: u32 = 3;
    /// `u32`.
    pub const U32: u32 = 4;
    /// `i32`.
    pub const I32: u32 = 5;
    /// `f32`.
    pub const F32: u32 = 6;
    /// One byte.
    pub const BOOL: u32 = 7;
    /// `u64` length, then bytes.
    pub const STRING: u32 = 8;
    /// `u32` element type, `u64` length, then the elements.
    pub const ARRAY: u32 = 9;
    /// `u64`.
    pub const U64: u32 = 10;
    /// `i64`.
    pub const I64: u32 = 11;
    /// `f64`.
    pub const F64: u32 = 12;
}

/// Smallest metadata pair: an empty key (8 bytes of length), a type (4) and a one-byte value.
const KV_BYTES_MIN: u64 = 8 + 4 + 1;

/// Key prefix and suffix of the special token ids (`tokenizer.ggml.bos_token_id`, `…eot_token_id`, …).
const TOKENIZER_PREFIX: &str = "tokenizer.ggml.";
const TOKEN_ID_SUFFIX: &str = "_token_id";

/// What was seen of a value, enough for the checks and no more.
#[derive(Debug, Clone, Copy)]
enum Seen<'a> {
    Integer { value: i128, type_id: u32 },
    Other,
    String(&'a [u8]),
    Array { element_type: u32, length: u64 },
}

/// The facts the metadata section gives the rest of the validation.
#[derive(Debug)]
pub(crate) struct Metadata<'a> {
    /// `general.alignment`, checked, or the default.
    pub(crate) alignment: u32,
    /// `general.architecture`, if present.
    pub(crate) architecture: Option<&'a str>,
    /// Length of `tokenizer.ggml.tokens`, if present.
    pub(crate) vocab_size: Option<u64>,
}

/// Reads `kv_count` pairs and checks them.
pub(crate) fn read<'a>(
    reader: &mut Reader<'a>,
    kv_count: u64,
    limits: &Limits,
) -> Result<Metadata<'a>, GgufError> {
    reader.check_count(kv_count, KV_BYTES_MIN, "metadata count")?;
    if kv_count > limits.kv_count_max {
        return Err(GgufError::LimitExceeded {
            what: "metadata count",
            value: kv_count,
            limit: limits.kv_count_max,
        });
    }
    let mut keys: BTreeSet<&'a str> = BTreeSet::new();
    let mut kept: BTreeMap<&'a str, Seen<'a>> = BTreeMap::new();
    for _ in 0..kv_count {
        let offset = reader.position();
        let key = reader.string("metadata key", "key length", limits.key_bytes_max)?;
        let key = std::str::from_utf8(key).map_err(|_| GgufError::KeyNotUtf8 { offset })?;
        if !keys.insert(key) {
            return Err(GgufError::DuplicateKey(key.to_string()));
        }
        let type_id = reader.u32("value type")?;
        let seen = read_value(reader, type_id, key, limits)?;
        if key.starts_with("general.") || key.starts_with(TOKENIZER_PREFIX) {
            kept.insert(key, seen);
        }
    }
    let vocab_size = check_tokenizer(&kept)?;
    Ok(Metadata {
        alignment: alignment(&kept)?,
        architecture: architecture(&kept)?,
        vocab_size,
    })
}

fn read_value<'a>(
    reader: &mut Reader<'a>,
    type_id: u32,
    key: &str,
    limits: &Limits,
) -> Result<Seen<'a>, GgufError> {
    use value_type::*;
    let seen = match type_id {
        U8 => integer(reader.array::<1>("value")?[0].into(), type_id),
        I8 => integer((reader.array::<1>("value")?[0] as i8).into(), type_id),
        U16 => integer(u16::from_le_bytes(reader.array("value")?).into(), type_id),
        I16 => integer(i16::from_le_bytes(reader.array("value")?).into(), type_id),
        U32 => integer(reader.u32("value")?.into(), type_id),
        I32 => integer(i32::from_le_bytes(reader.array("value")?).into(), type_id),
        U64 => integer(reader.u64("value")?.into(), type_id),
        I64 => integer(i64::from_le_bytes(reader.array("value")?).into(), type_id),
        BOOL => reader.bytes(1, "value").map(|_| Seen::Other)?,
        F32 => reader.bytes(4, "value").map(|_| Seen::Other)?,
        F64 => reader.bytes(8, "value").map(|_| Seen::Other)?,
        STRING => {
            Seen::String(reader.string("string value", "string length", limits.string_bytes_max)?)
        }
        ARRAY => read_array(reader, key, limits)?,
        _ => {
            return Err(GgufError::UnknownValueType {
                key: key.to_string(),
                type_id,
            });
        }
    };
    Ok(seen)
}

fn integer<'a>(value: i128, type_id: u32) -> Seen<'a> {
    Seen::Integer { value, type_id }
}

/// Bytes of one element of a fixed-size type; `None` for strings, arrays and unknown types.
fn fixed_size(type_id: u32) -> Option<u64> {
    use value_type::*;
    match type_id {
        U8 | I8 | BOOL => Some(1),
        U16 | I16 => Some(2),
        U32 | I32 | F32 => Some(4),
        U64 | I64 | F64 => Some(8),
        _ => None,
    }
}

fn read_array<'a>(
    reader: &mut Reader<'a>,
    key: &str,
    limits: &Limits,
) -> Result<Seen<'a>, GgufError> {
    let element_type = reader.u32("array element type")?;
    let length = reader.u64("array length")?;
    let element_bytes = match (element_type, fixed_size(element_type)) {
        (_, Some(bytes)) => bytes,
        (value_type::STRING, None) => 8,
        (value_type::ARRAY, None) => return Err(GgufError::NestedArray(key.to_string())),
        (type_id, None) => {
            return Err(GgufError::UnknownValueType {
                key: key.to_string(),
                type_id,
            });
        }
    };
    reader.check_count(length, element_bytes, "array length")?;
    if length > limits.array_length_max {
        return Err(GgufError::LimitExceeded {
            what: "array length",
            value: length,
            limit: limits.array_length_max,
        });
    }
    if element_type == value_type::STRING {
        for _ in 0..length {
            reader.string("string value", "string length", limits.string_bytes_max)?;
        }
    } else {
        // check_count bounded the product by the bytes left.
        reader.bytes(length * element_bytes, "array")?;
    }
    Ok(Seen::Array {
        element_type,
        length,
    })
}

fn alignment(kept: &BTreeMap<&str, Seen<'_>>) -> Result<u32, GgufError> {
    let key = "general.alignment";
    let alignment = match kept.get(key) {
        None => return Ok(ALIGNMENT_DEFAULT),
        Some(Seen::Integer {
            value,
            type_id: value_type::U32,
        }) => *value,
        Some(_) => {
            return Err(GgufError::BadValue {
                key: key.to_string(),
                problem: "must be a u32",
            });
        }
    };
    let alignment = u64::try_from(alignment).expect("a u32 is never negative");
    if alignment == 0 || !alignment.is_power_of_two() || alignment > u64::from(ALIGNMENT_MAX) {
        return Err(GgufError::BadAlignment(alignment));
    }
    Ok(u32::try_from(alignment).expect("at most ALIGNMENT_MAX"))
}

fn architecture<'a>(kept: &BTreeMap<&'a str, Seen<'a>>) -> Result<Option<&'a str>, GgufError> {
    let key = "general.architecture";
    let bad = |problem| GgufError::BadValue {
        key: key.to_string(),
        problem,
    };
    match kept.get(key) {
        None => Ok(None),
        Some(Seen::String(bytes)) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| bad("is not UTF-8")),
        Some(_) => Err(bad("must be a string")),
    }
}

/// The tokenizer's arrays agree with each other and every special token id names a token. Returns the
/// vocabulary size when the file has a vocabulary.
fn check_tokenizer(kept: &BTreeMap<&str, Seen<'_>>) -> Result<Option<u64>, GgufError> {
    let strings = |key: &str| -> Result<Option<u64>, GgufError> {
        match kept.get(key) {
            None => Ok(None),
            Some(Seen::Array {
                element_type: value_type::STRING,
                length,
            }) => Ok(Some(*length)),
            Some(_) => Err(GgufError::BadTokenizerArray {
                key: key.to_string(),
                expected: "an array of strings",
            }),
        }
    };
    let vocab_size = strings("tokenizer.ggml.tokens")?;
    strings("tokenizer.ggml.merges")?;
    for key in ["tokenizer.ggml.scores", "tokenizer.ggml.token_type"] {
        let length = match kept.get(key) {
            None => continue,
            Some(Seen::Array {
                element_type,
                length,
            }) if fixed_size(*element_type).is_some() => *length,
            Some(_) => {
                return Err(GgufError::BadTokenizerArray {
                    key: key.to_string(),
                    expected: "an array of numbers",
                });
            }
        };
        if let Some(vocab_size) = vocab_size
            && length != vocab_size
        {
            return Err(GgufError::TokenArrayLength {
                key: key.to_string(),
                length,
                vocab_size,
            });
        }
    }
    let special = kept
        .iter()
        .filter(|(key, _)| key.starts_with(TOKENIZER_PREFIX) && key.ends_with(TOKEN_ID_SUFFIX));
    for (key, seen) in special {
        let Seen::Integer { value: id, .. } = *seen else {
            return Err(GgufError::BadValue {
                key: key.to_string(),
                problem: "must be an integer token id",
            });
        };
        // Without a vocabulary there is no table to index; a file with one must stay inside it.
        if let Some(vocab_size) = vocab_size
            && (id < 0 || id >= i128::from(vocab_size))
        {
            return Err(GgufError::TokenIdPastVocab {
                key: key.to_string(),
                id,
                vocab_size,
            });
        }
    }
    Ok(vocab_size)
}
