//! Stateless randomness: numbers derived from (seed, position, key) by hashing, so that what a
//! simulated person does at a given minute does not depend on how often they are sampled; and
//! measurement noise, drawn in sequence.

/// A uniform number in [0, 1) from (seed, a, key).
pub(crate) fn unit(seed: u64, a: i64, key: u64) -> f64 {
    let h = mix(seed ^ mix(a as u64 ^ mix(key.wrapping_add(0x9e37_79b9))));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A smooth wander in [-1, 1] over `t` (minutes), changing course about every `period` minutes:
/// hashed knots joined by smoothstep.
pub(crate) fn smooth(seed: u64, t: f64, period: f64, key: u64) -> f64 {
    let x = t / period;
    let knot = x.floor();
    let f = x - knot;
    let a = unit(seed, knot as i64, key) * 2.0 - 1.0;
    let b = unit(seed, knot as i64 + 1, key) * 2.0 - 1.0;
    a + (b - a) * f * f * (3.0 - 2.0 * f)
}

/// A standard normal number, near enough (Irwin–Hall with four terms), bounded by ±3.5. Drawn
/// in sequence: measurement noise, not the timeline.
pub(crate) fn gaussian(rng: &mut rand::rngs::SmallRng) -> f64 {
    use rand::Rng;
    let sum: f64 = (0..4).map(|_| rng.random::<f64>()).sum();
    (sum - 2.0) * 3f64.sqrt()
}

/// A number in [lo, hi) from (seed, a, key): a stable per-person or per-day draw.
pub(crate) fn between(seed: u64, a: i64, key: u64, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * unit(seed, a, key)
}

/// splitmix64's finalizer: a good cheap 64-bit mix.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_is_uniform_enough_and_in_range() {
        let n = 10_000;
        let values: Vec<f64> = (0..n).map(|i| unit(7, i, 3)).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
        let low = values.iter().filter(|&&v| v < 0.1).count();
        assert!((800..1200).contains(&low), "{low} of {n} below 0.1");
    }

    #[test]
    fn smooth_is_continuous_and_bounded() {
        let mut last = smooth(1, 0.0, 30.0, 9);
        for i in 1..3000 {
            let v = smooth(1, i as f64 * 0.1, 30.0, 9);
            assert!((-1.0..=1.0).contains(&v));
            assert!((v - last).abs() < 0.02, "jump at {i}: {last} -> {v}");
            last = v;
        }
    }
}
