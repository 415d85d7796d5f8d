//! The ggml tensor types a GGUF file may name, with their block geometry (ggml.h's `enum ggml_type` and the
//! `type_traits` table in ggml.c; gguf-py's `GGML_QUANT_SIZES`). Ids ggml removed (4, 5, 31–33, 36–38) and ids past
//! the table are unknown, and a file using one is refused: without a block size its tensors cannot be bounded.

/// One ggml tensor type: its id in the file, name, elements per block and bytes per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GgmlType {
    /// The number stored in the tensor info.
    pub id: u32,
    /// ggml's name ("Q4_K").
    pub name: &'static str,
    /// Elements per block (1 for plain types).
    pub block_elements: u64,
    /// Bytes per block.
    pub block_bytes: u64,
}

const fn ggml(id: u32, name: &'static str, block_elements: u64, block_bytes: u64) -> GgmlType {
    GgmlType {
        id,
        name,
        block_elements,
        block_bytes,
    }
}

/// Elements per super-block of the K and most IQ types (ggml's `QK_K`).
const QK_K: u64 = 256;

/// Every type this validator accepts, in id order.
pub const GGML_TYPES: &[GgmlType] = &[
    ggml(0, "F32", 1, 4),
    ggml(1, "F16", 1, 2),
    ggml(2, "Q4_0", 32, 2 + 16),
    ggml(3, "Q4_1", 32, 2 + 2 + 16),
    ggml(6, "Q5_0", 32, 2 + 4 + 16),
    ggml(7, "Q5_1", 32, 2 + 2 + 4 + 16),
    ggml(8, "Q8_0", 32, 2 + 32),
    ggml(9, "Q8_1", 32, 2 + 2 + 32),
    ggml(10, "Q2_K", QK_K, QK_K / 16 + QK_K / 4 + 2 + 2),
    ggml(11, "Q3_K", QK_K, QK_K / 8 + QK_K / 4 + 12 + 2),
    ggml(12, "Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2),
    ggml(13, "Q5_K", QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2),
    ggml(14, "Q6_K", QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),
    ggml(15, "Q8_K", QK_K, 4 + QK_K + QK_K / 16 * 2),
    ggml(16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
    ggml(17, "IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32),
    ggml(18, "IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8),
    ggml(19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
    ggml(20, "IQ4_NL", 32, 2 + 16),
    ggml(21, "IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4),
    ggml(22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
    ggml(23, "IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),
    ggml(24, "I8", 1, 1),
    ggml(25, "I16", 1, 2),
    ggml(26, "I32", 1, 4),
    ggml(27, "I64", 1, 8),
    ggml(28, "F64", 1, 8),
    ggml(29, "IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),
    ggml(30, "BF16", 1, 2),
    ggml(34, "TQ1_0", QK_K, 2 + 4 * 13),
    ggml(35, "TQ2_0", QK_K, 2 + 64),
    ggml(39, "MXFP4", 32, 1 + 16),
    ggml(40, "NVFP4", 64, 4 + 32),
];

// Spot checks against ggml's `static_assert`s on the block structs.
const _: () = assert!(GGML_TYPES[8].block_bytes == 84); // Q2_K
const _: () = assert!(GGML_TYPES[9].block_bytes == 110); // Q3_K
const _: () = assert!(GGML_TYPES[10].block_bytes == 144); // Q4_K
const _: () = assert!(GGML_TYPES[11].block_bytes == 176); // Q5_K
const _: () = assert!(GGML_TYPES[12].block_bytes == 210); // Q6_K
const _: () = assert!(GGML_TYPES[13].block_bytes == 292); // Q8_K
const _: () = assert!(GGML_TYPES[21].block_bytes == 136); // IQ4_XS

/// The type with this id, if ggml defines it.
pub fn ggml_type(id: u32) -> Option<GgmlType> {
    GGML_TYPES.iter().find(|known| known.id == id).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_sorted_unique_and_sane() {
        for pair in GGML_TYPES.windows(2) {
            assert!(pair[0].id < pair[1].id);
        }
        for known in GGML_TYPES {
            assert!(known.block_elements >= 1 && known.block_bytes >= 1);
            assert_eq!(ggml_type(known.id), Some(*known));
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 41, u32::MAX] {
            assert_eq!(ggml_type(removed), None);
        }
    }
}
