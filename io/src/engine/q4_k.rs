//! Q4_K and Q5_K weights in the 4-bit kernels of [`super::q4_1`]: each Q4_K block of 32 values is a Q4_1 block
//! whose scale and minimum are products of the super-block's and the block's (see [`SuperBlocks`]); a Q5_K block
//! is the same with a fifth bit per value, kept as Q5_0's are (`Q4_1Matrix::high_bits`).

use half::f16;

use super::kernel::{InputRow, ROW_GROUP};
use super::q4_1::{PAIR_BYTES, Q4_1Matrix, RepackTarget};

/// Blocks of 32 values per Q4_K super-block.
pub(super) const SUPER_BLOCK: usize = 8;

/// Q4_K's scales and minimums. A Q4_K super-block of 256 values has an f16 scale `d` and minimum `dmin`, and
/// each of its eight blocks of 32 a 6-bit scale `sc` and minimum `m`: a weight is `d · sc · q - dmin · m`. Each
/// block is then a Q4_1 block with scale `d · sc` and minimum `-dmin · m`, both exact in f32 (an 11-bit times a
/// 6-bit significand), so the Q4_1 kernels run it once they compute those products; the file's 128 bytes of
/// nibbles per super-block already are four of our pairs of blocks. Kept at the file's precision (about 0.58
/// bytes per weight, as in the file): f32 products per block would cost a third more memory traffic.
pub(super) struct SuperBlocks {
    /// Each super-block's `d`, row after row, then [`SCALE_PADDING`](super::q4_1::SCALE_PADDING) zeros.
    pub(super) scales: Vec<f16>,
    /// Each block's `sc`, row after row, then [`SCALE_PADDING`](super::q4_1::SCALE_PADDING) zeros.
    pub(super) block_scales: Vec<u8>,
    /// Per group of [`ROW_GROUP`] rows, per super-block, the group's rows' `-dmin` (zero past the last row).
    pub(super) minimums: Vec<f32>,
    /// Per group of [`ROW_GROUP`] rows, per block, the group's rows' `m`.
    pub(super) block_minimums: Vec<u8>,
}

impl RepackTarget<'_> {
    /// [`RepackTarget::repack_row`] for Q4_K: each super-block's nibbles are copied as they are (four pairs of
    /// blocks), its 6-bit scales and minimums unpacked as ggml's `get_scale_min_k4` does.
    pub(super) fn repack_k_row(&mut self, row: usize, row_bytes: &[u8]) {
        let (blocks, supers) = (self.blocks, self.blocks / SUPER_BLOCK);
        let (group, at) = (row / ROW_GROUP, row % ROW_GROUP);
        let pairs = &mut self.pairs[row * blocks / 2 * PAIR_BYTES..][..blocks / 2 * PAIR_BYTES];
        for (index, bytes) in row_bytes.chunks_exact(self.layout.block_bytes).enumerate() {
            self.super_scales[row * supers + index] = f16::from_le_bytes([bytes[0], bytes[1]]);
            self.super_minimums[(group * supers + index) * ROW_GROUP + at] =
                -f16::from_le_bytes([bytes[2], bytes[3]]).to_f32();
            let packed: &[u8; 12] = bytes[4..16].try_into().expect("12 bytes");
            for j in 0..SUPER_BLOCK {
                let (scale, minimum) = if j < 4 {
                    (packed[j] & 63, packed[j + 4] & 63)
                } else {
                    (
                        (packed[j + 4] & 0x0F) | ((packed[j - 4] >> 6) << 4),
                        (packed[j + 4] >> 4) | ((packed[j] >> 6) << 4),
                    )
                };
                let block = index * SUPER_BLOCK + j;
                self.block_scales[row * blocks + block] = scale;
                self.block_minimums[(group * blocks + block) * ROW_GROUP + at] = minimum;
            }
            // Q5_K: block `j`'s fifth bits are bit `j` of each of 32 bytes.
            if let Some(high) = self.layout.high_bits_at {
                let bits = &bytes[high..high + 32];
                for j in 0..SUPER_BLOCK {
                    let mut gathered = 0u32;
                    for (l, &byte) in bits.iter().enumerate() {
                        gathered |= u32::from((byte >> j) & 1) << l;
                    }
                    self.high_bits[row * blocks + index * SUPER_BLOCK + j] = gathered;
                }
            }
            let nibbles = &bytes[self.layout.nibbles_at..];
            pairs[index * SUPER_BLOCK / 2 * PAIR_BYTES..][..SUPER_BLOCK / 2 * PAIR_BYTES]
                .copy_from_slice(nibbles);
        }
    }
}

impl Q4_1Matrix {
    /// [`TileDots::group_terms`] for Q4_K: each block's minimum `-dmin · m` (exact in f32) times the input's
    /// block sum, added block after block.
    pub(super) fn k_group_terms<const N: usize>(
        &self,
        k: &SuperBlocks,
        group: usize,
        inputs: &[InputRow<'_>; N],
    ) -> [[f32; ROW_GROUP]; N] {
        let mut terms = [[0f32; ROW_GROUP]; N];
        let supers = self.blocks / SUPER_BLOCK;
        let scales = &k.minimums[group * supers * ROW_GROUP..][..supers * ROW_GROUP];
        let minimums =
            &k.block_minimums[group * self.blocks * ROW_GROUP..][..self.blocks * ROW_GROUP];
        for (block, minimums) in minimums.chunks_exact(ROW_GROUP).enumerate() {
            let scales = &scales[block / SUPER_BLOCK * ROW_GROUP..][..ROW_GROUP];
            let mut products = [0f32; ROW_GROUP];
            for ((product, &scale), &minimum) in products.iter_mut().zip(scales).zip(minimums) {
                *product = scale * f32::from(minimum);
            }
            for (terms, input) in terms.iter_mut().zip(inputs) {
                let sum = input.sums[block];
                for (term, &product) in terms.iter_mut().zip(&products) {
                    *term += product * sum;
                }
            }
        }
        terms
    }
}
