//! Tests of [`super`]: f16 rounding, the dot products, softmax, rotation and the vectorised functions against
//! scalar references and ggml's orders.

use super::*;

/// Deterministic values in about [-2, 2) (also the attention tests' inputs, in `kv.rs`).
pub(in crate::engine) fn values(count: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..count)
        .map(|_| {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 22) as f32 - 2.0
        })
        .collect()
}

fn ulps(a: f32, b: f32) -> u32 {
    (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
}

#[test]
fn expf_is_within_two_ulps_of_exp_and_saturates() {
    let mut x = -100.0f32;
    while x < 88.0 {
        let exact = (f64::from(x)).exp() as f32;
        assert!(
            ulps(expf(x), exact) <= 2,
            "expf({x}) = {} vs {exact}",
            expf(x)
        );
        x += 0.0137;
    }
    assert_eq!(expf(0.0), 1.0);
    assert_eq!(expf(f32::NEG_INFINITY), 0.0);
    assert_eq!(expf(-500.0), 0.0);
    assert_eq!(expf(500.0), f32::INFINITY);
    assert!((silu(1.5) - 1.5 / (1.0 + (-1.5f32).exp())).abs() < 1e-6);
}

#[test]
fn expf_lanes_match_expf() {
    let inputs = edge_inputs();
    for lanes in inputs.chunks_exact(LANES) {
        let lanes: &[f32; LANES] = lanes.try_into().unwrap();
        let got = expf_lanes(lanes);
        for (x, got) in lanes.iter().zip(got) {
            let expected = expf(*x);
            assert!(
                got.to_bits() == expected.to_bits() || (got.is_nan() && expected.is_nan()),
                "expf({x}): {got} vs {expected}"
            );
        }
    }
}

/// Values from tiny to saturating (about -150..150) and the exact edges, a whole number of vectors.
fn edge_inputs() -> Vec<f32> {
    let mut inputs = values(4096, 7);
    for (i, v) in inputs.iter_mut().enumerate() {
        // From tiny to saturating: about -150..150, plus the exact edges.
        *v *= [1e-3, 1.0, 30.0, 75.0][i % 4];
    }
    inputs.extend([
        0.0,
        -0.0,
        88.0,
        89.0,
        -104.0,
        -110.0,
        200.0,
        -200.0,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
    ]);
    inputs.resize(inputs.len().next_multiple_of(LANES), 1.0);
    inputs
}

#[test]
fn swiglu_lanes_match_silu() {
    let inputs = edge_inputs();
    let ups = values(inputs.len(), 8);
    for (gate, up) in inputs.chunks_exact(LANES).zip(ups.chunks_exact(LANES)) {
        let (gate, up): (&[f32; LANES], &[f32; LANES]) =
            (gate.try_into().unwrap(), up.try_into().unwrap());
        let mut out = [0f32; LANES];
        swiglu_lanes(gate, up, &mut out);
        for lane in 0..LANES {
            let expected = silu(gate[lane]) * up[lane];
            assert!(
                out[lane].to_bits() == expected.to_bits()
                    || (out[lane].is_nan() && expected.is_nan()),
                "silu({}) · {}: {} vs {expected}",
                gate[lane],
                up[lane],
                out[lane]
            );
        }
    }
}

#[test]
fn the_f16_dot_product_equals_converting_first() {
    for (length, y_length) in [
        (64, 64),
        (64, 1),
        (128, 100),
        (256, 193),
        (80, 80),
        (100, 37),
    ] {
        let x = values(length, 3);
        let y: Vec<u16> = values(y_length, 4)
            .iter()
            .map(|&v| f16::from_f32(v * 40.0).to_bits())
            .collect();
        let mut widened: Vec<f32> = y
            .iter()
            .map(|&bits| f16::from_bits(bits).to_f32())
            .collect();
        widened.resize(length, 0.0);
        assert_eq!(
            dot_vec_f16(&x, &y).to_bits(),
            dot_vec(&x, &widened).to_bits(),
            "{length} by {y_length}"
        );
    }
}

#[test]
fn zero_padding_changes_no_dot_product() {
    for length in [16, 48, 64, 100] {
        let (x, y) = (values(length, 1), values(length, 2));
        let padded = |v: &[f32], to: usize| {
            let mut v = v.to_vec();
            v.resize(to, 0.0);
            v
        };
        let to = length.next_multiple_of(DOT_STEP) + DOT_STEP;
        assert_eq!(
            dot_vec(&padded(&x, to), &padded(&y, to)).to_bits(),
            dot_vec(
                &padded(&x, length.next_multiple_of(DOT_STEP)),
                &padded(&y, length.next_multiple_of(DOT_STEP))
            )
            .to_bits(),
        );
        let to = length.next_multiple_of(LANES);
        assert_eq!(
            dot_tiled(&padded(&x, to + LANES), &padded(&y, to + LANES)).to_bits(),
            dot_tiled(&padded(&x, to), &padded(&y, to)).to_bits()
        );
        let exact: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum();
        assert!((f64::from(dot_tiled(&padded(&x, to), &padded(&y, to))) - exact).abs() < 1e-4);
    }
}

#[test]
fn vector_dots_equal_the_portable_ones_bit_for_bit() {
    for length in [64, 128, 320, 4096] {
        let (x, y) = (values(length, 3), values(length, 4));
        assert_eq!(
            dot_vec(&x, &y).to_bits(),
            dot_vec_portable(&x, &y).to_bits()
        );
        assert_eq!(
            dot_tiled(&x, &y).to_bits(),
            dot_tiled_portable(&x, &y).to_bits()
        );
    }
}

#[test]
fn the_lane_reduction_is_avx512s_tree() {
    // Large and small values whose sum depends on the order of additions.
    let mut lanes = [1.0f32; LANES];
    lanes[0] = 1e8;
    lanes[8] = -1e8;
    // Lanes 0 and 8 cancel first, so every 1 survives: 14. Left to right would lose the ones added to 1e8.
    assert_eq!(reduce_lanes(&lanes), 14.0);
}

#[test]
fn softmax_normalises_visible_positions_and_zeroes_the_rest() {
    let mut row = values(32, 5);
    softmax(&mut row, 20, 0.125);
    assert!(row[20..].iter().all(|v| *v == 0.0));
    let sum: f32 = row[..20].iter().sum();
    assert!((sum - 1.0).abs() < 1e-5 && row[..20].iter().all(|v| *v > 0.0));
}

#[test]
fn rotation_at_position_zero_changes_nothing() {
    let mut head = values(8, 6);
    let before = head.clone();
    rotate(&mut head, &[1.0; 4], &[0.0; 4]);
    assert_eq!(head, before);
}

/// NEOX rotation is the adjacent-pair rotation of the head with its halves interleaved: the same pairs, the
/// same arithmetic, bit for bit.
#[test]
fn half_rotation_is_adjacent_rotation_of_interleaved_halves() {
    let (heads, pairs) = (3, 4);
    let cos: Vec<f32> = (0..pairs).map(|i| (i as f32 * 0.7 + 0.3).cos()).collect();
    let sin: Vec<f32> = (0..pairs).map(|i| (i as f32 * 0.7 + 0.3).sin()).collect();
    let halves = values(heads * 2 * pairs, 7);
    let interleave = |head: &[f32]| -> Vec<f32> {
        (0..pairs)
            .flat_map(|i| [head[i], head[i + pairs]])
            .collect()
    };
    let mut adjacent: Vec<f32> = halves.chunks(2 * pairs).flat_map(interleave).collect();
    let mut rotated = halves.clone();
    rotate_halves(&mut rotated, &cos, &sin);
    rotate(&mut adjacent, &cos, &sin);
    let rotated: Vec<f32> = rotated.chunks(2 * pairs).flat_map(interleave).collect();
    assert_eq!(rotated, adjacent);
    assert_ne!(
        rotated,
        halves
            .chunks(2 * pairs)
            .flat_map(interleave)
            .collect::<Vec<_>>()
    );
}

proptest::proptest! {
    /// Rounding eight at a time gives the scalar conversion's bits, NaN, infinities, subnormals, values past
    /// f16's range and ties included, for any length (the tail goes one at a time).
    #[test]
    fn rounding_in_place_matches_the_scalar_conversion(
        values in proptest::collection::vec(
            proptest::prop_oneof![
                4 => -7e4f32..7e4,
                1 => -1e-4f32..1e-4,
                1 => proptest::prelude::Just(f32::NAN),
                1 => proptest::prelude::Just(f32::INFINITY),
                1 => proptest::prelude::Just(-0.0f32),
                1 => proptest::prelude::Just(1.0 + 1.0 / 2048.0),
                1 => proptest::prelude::Just(65520.0f32),
            ],
            0..40,
        ),
    ) {
        let mut rounded = values.clone();
        round_in_place_through_f16(&mut rounded);
        let expected: Vec<u32> = values.iter().map(|v| f16::from_f32(*v).to_f32().to_bits()).collect();
        let got: Vec<u32> = rounded.iter().map(|v| v.to_bits()).collect();
        proptest::prop_assert_eq!(got, expected);
    }
}
