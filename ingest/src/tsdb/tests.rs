//! Property tests of the chunk codec: bit-exact round trips, header aggregates, and damage
//! that is always noticed and never panics.

use proptest::prelude::*;

use super::chunk::aggregates;
use super::{Chunk, ChunkError, ChunkHeader, ValueCoding};

/// Sorted, unique times anywhere in i64: negative, huge gaps, neighbours 1 ms apart.
fn any_times(max: usize) -> impl Strategy<Value = Vec<i64>> {
    let scattered = prop::collection::vec(any::<i64>(), 1..max).prop_map(|mut t| {
        t.sort_unstable();
        t.dedup();
        t
    });
    let gaps = (
        any::<i64>(),
        prop::collection::vec(
            prop_oneof![Just(1i64), 1i64..2_000, 1i64..100_000_000, 1i64..i64::MAX],
            0..max,
        ),
    )
        .prop_map(|(start, gaps)| {
            let mut times = vec![start];
            for gap in gaps {
                match times.last().and_then(|t| t.checked_add(gap)) {
                    Some(t) => times.push(t),
                    None => break,
                }
            }
            times
        });
    prop_oneof![scattered, gaps]
}

/// Any f64 bit pattern, with the interesting classes made common.
fn any_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        any::<u64>().prop_map(f64::from_bits),
        any::<f64>(),
        Just(-0.0),
        Just(0.0),
        Just(f64::MIN_POSITIVE / 4.0),
        Just(f64::MAX),
        Just(f64::MIN),
        Just(f64::NAN),
        Just(f64::INFINITY),
        (-1_000_000i64..1_000_000, 0u32..=4).prop_map(|(n, k)| n as f64 / 10f64.powi(k as i32)),
    ]
}

fn arbitrary_points(max: usize) -> impl Strategy<Value = Vec<(i64, f64)>> {
    any_times(max).prop_flat_map(|times| {
        let n = times.len();
        (Just(times), prop::collection::vec(any_value(), n))
            .prop_map(|(t, v)| t.into_iter().zip(v).collect())
    })
}

/// A 1 Hz series with clock jitter whose values are a random walk in steps of 10^-scale.
fn realistic_points() -> impl Strategy<Value = (Vec<(i64, f64)>, u32)> {
    (
        1_700_000_000_000i64..1_800_000_000_000,
        0u32..=4,
        prop::collection::vec((-30i64..30, -3i64..=3), 1..3_000),
        0i64..=1,
    )
        .prop_map(|(start, scale, steps, jittery)| {
            let mut n = 600 * 10i64.pow(scale);
            let points = steps
                .into_iter()
                .enumerate()
                .map(|(i, (jitter, step))| {
                    n += step;
                    let time = start + i as i64 * 1_000 + jitter * jittery;
                    (time, n as f64 / 10f64.powi(scale as i32))
                })
                .collect();
            (points, scale)
        })
}

fn assert_round_trip(points: &[(i64, f64)]) -> Result<Chunk, TestCaseError> {
    let chunk = Chunk::encode(points).map_err(|e| TestCaseError::fail(e.to_string()))?;
    let read =
        Chunk::from_bytes(chunk.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
    // Bit patterns, since NaN sums compare unequal to themselves.
    prop_assert_eq!(header_bits(read.header()), header_bits(chunk.header()));
    let decoded = read
        .points()
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(decoded.len(), points.len());
    for (got, want) in decoded.iter().zip(points) {
        prop_assert_eq!(got.0, want.0);
        prop_assert_eq!(
            got.1.to_bits(),
            want.1.to_bits(),
            "value at {} ms: {} decoded as {}",
            want.0,
            want.1,
            got.1
        );
    }
    prop_assert_eq!(read.decode().count(), points.len());
    Ok(chunk)
}

fn header_bits(h: &ChunkHeader) -> (u32, i64, i64, [u64; 3], u8, ValueCoding) {
    let floats = [h.min.to_bits(), h.max.to_bits(), h.sum.to_bits()];
    (
        h.count,
        h.first_ms,
        h.last_ms,
        floats,
        h.time_ladder,
        h.values,
    )
}

fn assert_header_aggregates(chunk: &Chunk, points: &[(i64, f64)]) -> Result<(), TestCaseError> {
    let header = chunk.header();
    let (min, max, sum) = aggregates(points.iter().map(|p| p.1));
    prop_assert_eq!(header.count as usize, points.len());
    prop_assert_eq!(header.first_ms, points[0].0);
    prop_assert_eq!(header.last_ms, points[points.len() - 1].0);
    prop_assert_eq!(header.min.to_bits(), min.to_bits());
    prop_assert_eq!(header.max.to_bits(), max.to_bits());
    prop_assert_eq!(header.sum.to_bits(), sum.to_bits());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_points_round_trip_bit_exactly(points in arbitrary_points(300)) {
        let chunk = assert_round_trip(&points)?;
        assert_header_aggregates(&chunk, &points)?;
    }

    #[test]
    fn realistic_series_round_trip_as_decimals((points, scale) in realistic_points()) {
        let chunk = assert_round_trip(&points)?;
        assert_header_aggregates(&chunk, &points)?;
        // Equality below is by value: min and max of the walk are the same numbers.
        let finite_min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
        prop_assert_eq!(chunk.header().min, finite_min);
        match chunk.header().values {
            ValueCoding::Decimal { scale: chosen, .. } => prop_assert!(u32::from(chosen) <= scale),
            ValueCoding::Xor => prop_assert!(false, "decimal values coded as XOR"),
        }
    }

    #[test]
    fn any_damaged_byte_is_an_error(
        points in arbitrary_points(100),
        at in any::<prop::sample::Index>(),
        flip in 1u8..=255,
    ) {
        let mut bytes = Chunk::encode(&points).map_err(|e| TestCaseError::fail(e.to_string()))?.into_bytes();
        let at = at.index(bytes.len());
        bytes[at] ^= flip;
        prop_assert!(Chunk::from_bytes(&bytes).is_err());
    }

    #[test]
    fn truncated_chunks_are_errors(points in arbitrary_points(100), cut in any::<prop::sample::Index>()) {
        let bytes = Chunk::encode(&points).map_err(|e| TestCaseError::fail(e.to_string()))?.into_bytes();
        let keep = cut.index(bytes.len());
        prop_assert!(Chunk::from_bytes(&bytes[..keep]).is_err());
    }

    /// Damage behind a checksum recomputed to match (what a colliding CRC would let
    /// through): reading may fail, but never panics.
    #[test]
    fn damage_with_a_matching_checksum_never_panics(
        points in arbitrary_points(100),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = Chunk::encode(&points).map_err(|e| TestCaseError::fail(e.to_string()))?.into_bytes();
        let body = bytes.len() - 4;
        for (at, value) in damage {
            bytes[at.index(body)] = value;
        }
        let crc = crc32fast::hash(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
        if let Ok(chunk) = Chunk::from_bytes(&bytes) {
            let _ = chunk.points();
            prop_assert_eq!(chunk.decode().count(), chunk.header().count as usize);
        }
    }
}

#[test]
fn unsorted_repeated_or_empty_points_are_refused() {
    assert_eq!(Chunk::encode(&[]), Err(ChunkError::Empty));
    assert_eq!(
        Chunk::encode(&[(5, 1.0), (5, 2.0)]),
        Err(ChunkError::NotSorted {
            index: 1,
            previous_ms: 5,
            time_ms: 5
        })
    );
    assert!(matches!(
        Chunk::encode(&[(1, 1.0), (3, 1.0), (2, 1.0)]),
        Err(ChunkError::NotSorted { index: 2, .. })
    ));
}

#[test]
fn regular_integral_heart_rate_costs_a_few_bits_per_point() {
    let points: Vec<(i64, f64)> = (0..7_200i64)
        .map(|i| (1_764_000_000_000 + i * 1_000, (62 + (i / 97) % 9) as f64))
        .collect();
    let chunk = Chunk::encode(&points).expect("encode");
    let bytes_per_point = chunk.as_bytes().len() as f64 / points.len() as f64;
    assert!(
        bytes_per_point < 1.0,
        "{bytes_per_point} bytes per point for a regular integral series"
    );
    assert!(matches!(
        chunk.header().values,
        ValueCoding::Decimal { scale: 0, .. }
    ));
    assert_eq!(chunk.header().mean(), chunk.header().sum / 7_200.0);
}

#[test]
fn negative_zero_and_nan_fall_back_to_xor_and_survive() {
    let points = [
        (0, 1.0),
        (1, -0.0),
        (2, f64::NAN),
        (3, f64::NEG_INFINITY),
        (4, 5e-324),
    ];
    let chunk = Chunk::encode(&points).expect("encode");
    assert_eq!(chunk.header().values, ValueCoding::Xor);
    let decoded = chunk.points().expect("decode");
    let bits = |p: &[(i64, f64)]| p.iter().map(|&(t, v)| (t, v.to_bits())).collect::<Vec<_>>();
    assert_eq!(bits(&decoded), bits(&points));
}
