//! Tests of [`super`]: the panel kernels against the exact product, against the llama.cpp-order kernels of the
//! same weights, and bit for bit across instruction sets, shapes and batches.

use super::*;
use crate::engine::kernel::test_support::{
    assert_near_exact_product, assert_rows_independent, assert_stack_gives_each_parts_bits,
    first_isa_that_differs, random, scaled_case,
};
use crate::engine::q4_1::Q4_1Matrix;
use crate::engine::q6_k::Q6KMatrix;
use crate::engine::q8_0::Q8_0Matrix;
use candle_core::quantized::{GgmlDType, QTensor};
use proptest::prelude::*;

const TYPES: [GgmlDType; 8] = [
    GgmlDType::Q4_0,
    GgmlDType::Q4_1,
    GgmlDType::Q5_0,
    GgmlDType::Q5_1,
    GgmlDType::Q4K,
    GgmlDType::Q5K,
    GgmlDType::Q6K,
    GgmlDType::Q8_0,
];

fn k_quant(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K)
}

/// What the llama.cpp-order kernel of the same weights gives: the same sums, rounded in another order.
fn other_kernel(weights: &QTensor, x: &Tensor) -> Vec<Vec<f32>> {
    let result = if weights.dtype() == GgmlDType::Q8_0 {
        Q8_0Matrix::from_qtensors(&[weights])
            .unwrap()
            .forward(x)
            .unwrap()
    } else if weights.dtype() == GgmlDType::Q6K {
        Q6KMatrix::from_qtensor(weights)
            .unwrap()
            .forward(x)
            .unwrap()
    } else {
        Q4_1Matrix::from_qtensor(weights)
            .unwrap()
            .forward(x)
            .unwrap()
    };
    result.to_vec2::<f32>().unwrap()
}

#[test]
fn matches_the_exact_product_and_the_other_kernels_on_every_instruction_set() {
    for dtype in TYPES {
        // Rows that are not whole panels; widths of one block up to six k-quant super-blocks.
        let shapes: &[(usize, usize, usize)] = if k_quant(dtype) {
            &[(8, 256, 1), (13, 512, 3), (7, 768, 5), (21, 1536, 17)]
        } else {
            &[(8, 32, 1), (13, 576, 3), (7, 576, 5), (21, 1536, 17)]
        };
        for &(rows, columns, count) in shapes {
            let weights = QTensor::quantize(&random((rows, columns), 1), dtype).unwrap();
            let ours = PanelMatrix::from_qtensor(&weights).expect("a panel type");
            let input = random((count, columns), 2);
            let dequantized = weights
                .dequantize(&candle_core::Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            let x = input.to_vec2::<f32>().unwrap();
            let other = other_kernel(&weights, &input);
            for isa in Isa::available() {
                let got = ours
                    .forward_on(isa, &input)
                    .unwrap()
                    .to_vec2::<f32>()
                    .unwrap();
                for row in 0..count {
                    for column in 0..rows {
                        let value = got[row][column];
                        // The same integer sums and scales as the other kernel; only the f32 rounding differs.
                        let expected = other[row][column];
                        assert!(
                            (value - expected).abs() <= 1e-4 * (1.0 + expected.abs()),
                            "{dtype:?} {isa:?} ({rows}x{columns}): {value} vs {expected}"
                        );
                        assert_near_exact_product(
                            value,
                            &dequantized[column],
                            &x[row],
                            &format!("{dtype:?} {isa:?}"),
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn the_layout_holds_each_value_where_the_kernels_read_it() {
    for dtype in [GgmlDType::Q5_0, GgmlDType::Q8_0, GgmlDType::Q6K] {
        let columns = if k_quant(dtype) { 256 } else { 64 };
        let weights = QTensor::quantize(&random((11, columns), 7), dtype).unwrap();
        let ours = PanelMatrix::from_qtensor(&weights).unwrap();
        let dequantized = weights
            .dequantize(&candle_core::Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for (row, values) in dequantized.iter().enumerate() {
            let (panel, r) = (row / PANEL_ROWS, row % PANEL_ROWS);
            for (j, &w) in values.iter().enumerate() {
                let (block, j) = (j / BLOCK_VALUES, j % BLOCK_VALUES);
                let at = panel * ours.blocks + block;
                let integer = i32::from(ours.stored(at, r, j)) - ours.offset;
                let scale = if ours.format == Format::ScaledHalves && j >= BLOCK_VALUES / 2 {
                    ours.second_scales[at * PANEL_ROWS + r]
                } else {
                    ours.scales[at * PANEL_ROWS + r]
                };
                assert_eq!(integer as f32 * scale, w, "{dtype:?} row {row} value {j}");
            }
        }
        // The padding rows of the last panel are zero.
        let last = (11 / PANEL_ROWS) * ours.blocks;
        assert!((11 % PANEL_ROWS..PANEL_ROWS).all(|r| ours.scales[last * PANEL_ROWS + r] == 0.0));
    }
}

#[test]
fn a_rows_result_does_not_depend_on_the_other_rows() {
    for dtype in TYPES {
        let columns = if k_quant(dtype) { 768 } else { 576 };
        let weights = QTensor::quantize(&random((19, columns), 4), dtype).unwrap();
        let ours = PanelMatrix::from_qtensor(&weights).expect("a panel type");
        assert_rows_independent(
            |isa, x| ours.forward_on(isa, x).unwrap(),
            &random((9, columns), 5),
        );
    }
}

#[test]
fn a_stack_gives_each_parts_bits() {
    for dtype in [GgmlDType::Q4_0, GgmlDType::Q8_0] {
        let parts: Vec<QTensor> = [(32, 576), (16, 576), (9, 576)]
            .iter()
            .zip(20..)
            .map(|(&shape, seed)| QTensor::quantize(&random(shape, seed), dtype).unwrap())
            .collect();
        let references: Vec<&QTensor> = parts.iter().collect();
        let stacked = PanelMatrix::from_qtensors(&references).unwrap();
        let inputs = random((5, 576), 30)
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let together = stacked.forward_rows(&inputs);
        let alone: Vec<Vec<f32>> = parts
            .iter()
            .map(|part| {
                PanelMatrix::from_qtensor(part)
                    .unwrap()
                    .forward_rows(&inputs)
            })
            .collect();
        assert_stack_gives_each_parts_bits(&together, &alone, 5);
    }
}

#[test]
fn other_types_and_q8_0_with_minus_128_are_declined() {
    for dtype in [GgmlDType::Q2K, GgmlDType::Q3K, GgmlDType::F16] {
        let weights = QTensor::quantize(&random((4, 256), 3), dtype).unwrap();
        assert!(PanelMatrix::from_qtensor(&weights).is_none(), "{dtype:?}");
    }
    // A Q8_0 block holding -128, which no quantizer writes but a file may hold.
    let weights = QTensor::quantize(&random((4, 64), 3), GgmlDType::Q8_0).unwrap();
    let mut bytes = weights.data().unwrap().to_vec();
    bytes[2 + 5] = 0x80;
    let crafted = QTensor::new(
        candle_core::quantized::QStorage::from_data(
            std::borrow::Cow::Owned(bytes),
            &candle_core::Device::Cpu,
            GgmlDType::Q8_0,
        )
        .unwrap(),
        (4, 64),
    )
    .unwrap();
    assert!(PanelMatrix::from_qtensor(&crafted).is_none());
    // In a stack, too; and parts of different widths.
    let q4_0 = QTensor::quantize(&random((16, 64), 3), GgmlDType::Q4_0).unwrap();
    assert!(PanelMatrix::from_qtensors(&[&q4_0, &crafted]).is_none());
    let narrow = QTensor::quantize(&random((16, 32), 3), GgmlDType::Q4_0).unwrap();
    assert!(PanelMatrix::from_qtensors(&[&q4_0, &narrow]).is_none());
}

/// Parts of several types, as Q4_K_M files mix them in a block's query, key and value projections.
fn mixed_parts(dtypes: &[GgmlDType], columns: usize, seed: u64) -> Vec<QTensor> {
    dtypes
        .iter()
        .zip([32, 16, 9, 21].iter().cycle())
        .zip(seed..)
        .map(|((&dtype, &rows), seed)| {
            QTensor::quantize(&random((rows, columns), seed), dtype).unwrap()
        })
        .collect()
}

#[test]
fn a_stack_of_several_types_is_stored_as_bytes_and_gives_each_parts_bits() {
    for dtypes in [
        &[GgmlDType::Q5_0, GgmlDType::Q5_0, GgmlDType::Q8_0][..],
        &[GgmlDType::Q4_0, GgmlDType::Q4_1, GgmlDType::Q5_1][..],
        &[GgmlDType::Q8_0, GgmlDType::Q4K, GgmlDType::Q5_0][..],
    ] {
        let parts = mixed_parts(dtypes, 512, 40);
        let references: Vec<&QTensor> = parts.iter().collect();
        let stacked = PanelMatrix::from_qtensors(&references).expect("panel types");
        assert_eq!(stacked.format, Format::Bytes, "{dtypes:?}");
        assert_eq!(stacked.offset, 128);
        let input = random((5, 512), 50);
        let inputs = input.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for isa in Isa::available() {
            let together = stacked.forward_rows_on(isa, &inputs);
            let alone: Vec<Vec<f32>> = parts
                .iter()
                .map(|part| {
                    PanelMatrix::from_qtensor(part)
                        .unwrap()
                        .forward_rows_on(isa, &inputs)
                })
                .collect();
            assert_stack_gives_each_parts_bits(&together, &alone, 5);
        }
    }
}

#[test]
fn a_stack_with_a_q6_k_part_scales_every_half_block_and_stays_near_the_exact_product() {
    let dtypes = [GgmlDType::Q4K, GgmlDType::Q6K, GgmlDType::Q8_0];
    let parts = mixed_parts(&dtypes, 512, 60);
    let references: Vec<&QTensor> = parts.iter().collect();
    let stacked = PanelMatrix::from_qtensors(&references).expect("panel types");
    assert_eq!(stacked.format, Format::ScaledHalves);
    let input = random((6, 512), 70);
    let x = input.to_vec2::<f32>().unwrap();
    let weights: Vec<Vec<f32>> = parts
        .iter()
        .flat_map(|part| {
            part.dequantize(&candle_core::Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        })
        .collect();
    let got = stacked.forward(&input).unwrap().to_vec2::<f32>().unwrap();
    for (row, x) in x.iter().enumerate() {
        for (column, weights) in weights.iter().enumerate() {
            assert_near_exact_product(
                got[row][column],
                weights,
                x,
                &format!("row {row} column {column}"),
            );
        }
    }
    assert_eq!(
        first_isa_that_differs(|isa, x| stacked.forward_on(isa, x).unwrap(), &input),
        None
    );
    assert_rows_independent(|isa, x| stacked.forward_on(isa, x).unwrap(), &input);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every instruction set gives the portable kernel's bits, for any shape and any mix of rows.
    #[test]
    fn every_instruction_set_gives_the_portable_bits(
        rows in 1usize..20,
        blocks in 1usize..40,
        count in 1usize..10,
        seed in any::<u64>(),
        scale in prop_oneof![Just(1e-3f32), Just(1.0f32), Just(300.0f32)],
        dtype in proptest::sample::select(TYPES.to_vec()),
    ) {
        let blocks = if k_quant(dtype) { blocks.div_ceil(8) * 8 } else { blocks };
        let columns = blocks * BLOCK_VALUES;
        let (weights, input) = scaled_case(dtype, (rows, columns, count), seed, scale);
        let ours = PanelMatrix::from_qtensor(&weights).expect("a panel type");
        let differs = first_isa_that_differs(|isa, x| ours.forward_on(isa, x).unwrap(), &input);
        prop_assert_eq!(differs, None);
    }
}
