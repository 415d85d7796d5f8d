//! Tests of [`super`]: the 4-bit kernels against the definition, candle and the exact product, on every
//! instruction set.

use super::*;
use crate::engine::kernel::QuantizedRows;
use crate::engine::kernel::test_support::{
    assert_near_exact_product, assert_rows_independent, assert_stack_gives_each_parts_bits,
    first_isa_that_differs, random, scaled_case,
};
use candle_core::Module;
use candle_core::quantized::QMatMul;
use proptest::prelude::*;

/// The plain definition: `Σ (d_w q + m_w)(d_x x)` (Q4_1) or `Σ d_w (q - 8) (d_x x)` (Q4_0) with ggml's
/// quantized sums, in f64.
fn definition(matrix: &Q4_1Matrix, row: usize, input: InputRow<'_>) -> f64 {
    let mut total = 0f64;
    for block in 0..matrix.blocks {
        let scale = matrix.block_scale(row, block);
        let products: i64 = (0..32)
            .map(|j| {
                i64::from(matrix.signed_value(row, block, j))
                    * i64::from(input.values[block * 32 + j])
            })
            .sum();
        total += f64::from(scale) * f64::from(input.scales[block]) * products as f64;
        if matrix.offset == 0 {
            total += f64::from(matrix.minimum(row, block)) * f64::from(input.sums[block]);
        }
    }
    total
}

#[test]
fn matches_the_definition_and_candle_on_every_instruction_set() {
    let shapes = [(8, 64, 1), (12, 576, 3), (7, 576, 4), (5, 1536, 17)];
    for dtype in [
        GgmlDType::Q4_1,
        GgmlDType::Q4_0,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
    ] {
        matches_the_definition_and_candle(dtype, &shapes);
    }
    // Q4_K rows are whole super-blocks: one, two (one AVX-512 chunk), three and six.
    let shapes = [(8, 256, 1), (12, 512, 3), (7, 768, 4), (5, 1536, 17)];
    matches_the_definition_and_candle(GgmlDType::Q4K, &shapes);
    matches_the_definition_and_candle(GgmlDType::Q5K, &shapes);
}

fn matches_the_definition_and_candle(dtype: GgmlDType, shapes: &[(usize, usize, usize)]) {
    for &(rows, columns, count) in shapes {
        let weights = QTensor::quantize(&random((rows, columns), 1), dtype).unwrap();
        let ours = Q4_1Matrix::from_qtensor(&weights).expect("a 4-bit matrix");
        let k_quant = matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K);
        assert_eq!(
            ours.high_bits.is_empty(),
            !matches!(dtype, GgmlDType::Q5_0 | GgmlDType::Q5_1 | GgmlDType::Q5K)
        );
        assert_eq!(ours.super_blocks.is_some(), k_quant);
        let input = random((count, columns), 2);
        let dequantized = weights
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let x = input.to_vec2::<f32>().unwrap();
        let candle = QMatMul::from_qtensor(weights)
            .unwrap()
            .forward(&input)
            .unwrap();
        let candle = candle.to_vec2::<f32>().unwrap();
        let quantized =
            QuantizedRows::new(&input.flatten_all().unwrap().to_vec1().unwrap(), columns);
        for isa in Isa::available() {
            let got = ours
                .forward_on(isa, &input)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for row in 0..count {
                for column in 0..rows {
                    let reference = definition(&ours, column, quantized.row(row)) as f32;
                    let value = got[row][column];
                    assert!(
                        (value - reference).abs() <= 1e-4 * (1.0 + reference.abs()),
                        "{dtype:?} {isa:?}: {value} vs {reference}"
                    );
                    assert_near_exact_product(
                        value,
                        &dequantized[column],
                        &x[row],
                        &format!("{dtype:?} {isa:?}"),
                    );
                    // candle quantizes the activations in blocks of 32 too, except for the k-quants (one
                    // scale per 256 values, ggml's Q8_K), whose results differ from ours by more than this.
                    let other = candle[row][column];
                    assert!(
                        k_quant || (value - other).abs() <= 2e-2 * (1.0 + other.abs()),
                        "{dtype:?} {isa:?}: {value} vs candle {other}"
                    );
                }
            }
        }
    }
}

#[test]
fn a_stack_gives_each_parts_bits() {
    let parts: Vec<QTensor> = [(32, 576), (16, 576), (9, 576)]
        .iter()
        .zip(20..)
        .map(|(&shape, seed)| QTensor::quantize(&random(shape, seed), GgmlDType::Q4_1).unwrap())
        .collect();
    let references: Vec<&QTensor> = parts.iter().collect();
    let stacked = Q4_1Matrix::from_qtensors(&references).expect("whole groups, then any rows");
    let x = random((3, 576), 30);
    let inputs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let together = stacked.forward_rows(&inputs);
    let alone: Vec<Vec<f32>> = parts
        .iter()
        .map(|part| {
            Q4_1Matrix::from_qtensor(part)
                .unwrap()
                .forward_rows(&inputs)
        })
        .collect();
    assert_stack_gives_each_parts_bits(&together, &alone, 3);
    // A part of 9 rows before another would share a group of minimums with it.
    assert!(Q4_1Matrix::from_qtensors(&[&parts[2], &parts[0]]).is_none());
    let narrow = QTensor::quantize(&random((16, 64), 31), GgmlDType::Q4_1).unwrap();
    assert!(Q4_1Matrix::from_qtensors(&[&parts[0], &narrow]).is_none());
    assert!(Q4_1Matrix::from_qtensors(&[]).is_none());
}

#[test]
fn a_rows_result_does_not_depend_on_the_other_rows() {
    for (dtype, columns) in [
        (GgmlDType::Q4_1, 576),
        (GgmlDType::Q4_0, 576),
        (GgmlDType::Q5_0, 576),
        (GgmlDType::Q5_1, 576),
        (GgmlDType::Q4K, 768),
        (GgmlDType::Q5K, 768),
    ] {
        let weights = QTensor::quantize(&random((9, columns), 4), dtype).unwrap();
        let ours = Q4_1Matrix::from_qtensor(&weights).expect("a 4-bit matrix");
        assert_rows_independent(
            |isa, x| ours.forward_on(isa, x).unwrap(),
            &random((9, columns), 5),
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every instruction set gives the portable kernel's bits, for any shape and any mix of rows.
    #[test]
    fn every_instruction_set_gives_the_portable_bits(
        rows in 1usize..11,
        blocks in 1usize..40,
        count in 1usize..10,
        seed in any::<u64>(),
        scale in prop_oneof![Just(1e-3f32), Just(1.0f32), Just(300.0f32)],
        dtype in prop_oneof![
            Just(GgmlDType::Q4_1),
            Just(GgmlDType::Q4_0),
            Just(GgmlDType::Q5_0),
            Just(GgmlDType::Q5_1),
            Just(GgmlDType::Q4K),
            Just(GgmlDType::Q5K),
        ],
    ) {
        // Q4_K rows are whole super-blocks.
        let blocks = if matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K) {
            blocks.div_ceil(SUPER_BLOCK) * SUPER_BLOCK
        } else {
            blocks
        };
        let columns = blocks * BLOCK_VALUES;
        let (weights, input) = scaled_case(dtype, (rows, columns, count), seed, scale);
        let ours = Q4_1Matrix::from_qtensor(&weights).expect("a 4-bit matrix");
        let differs = first_isa_that_differs(|isa, x| ours.forward_on(isa, x).unwrap(), &input);
        prop_assert_eq!(differs, None);
    }
}

#[test]
fn other_types_are_declined() {
    let weights = QTensor::quantize(&random((4, 32), 3), GgmlDType::Q8_0).unwrap();
    assert!(Q4_1Matrix::from_qtensor(&weights).is_none());
    let weights = QTensor::quantize(&random((4, 256), 3), GgmlDType::Q6K).unwrap();
    assert!(Q4_1Matrix::from_qtensor(&weights).is_none());
    // Both 4-bit types, but not in one stack.
    let q4_0 = QTensor::quantize(&random((16, 32), 3), GgmlDType::Q4_0).unwrap();
    let q4_1 = QTensor::quantize(&random((16, 32), 3), GgmlDType::Q4_1).unwrap();
    assert!(Q4_1Matrix::from_qtensors(&[&q4_1, &q4_0]).is_none());
}
