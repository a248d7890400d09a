//! Point codecs of a chunk: timestamps as delta-of-delta, values as fixed-decimal integers
//! (delta or delta-of-delta) or, when no decimal scale fits every value exactly, Gorilla
//! XOR floats. Integers are zig-zag coded into "ladders" of bit buckets; each chunk picks
//! the ladder that costs it the fewest bits, from a histogram of its own numbers.

use super::bits::{BitReader, BitWriter};

/// Bucket widths of a ladder: bucket `i` holds zig-zag numbers below `2^width[i]` (width 0:
/// only zero) behind a prefix of `i` one bits and a zero (the last bucket has no zero).
/// The last bucket is always 64 bits wide, so every number has a bucket.
#[derive(Debug)]
pub(crate) struct Ladder {
    widths: &'static [u32],
    /// The bucket of a number by its significant bits, so that writing needs no search.
    bucket_of: [u8; 65],
}

const fn ladder(widths: &'static [u32]) -> Ladder {
    let mut bucket_of = [0u8; 65];
    let (mut bits, mut bucket) = (0, 0);
    while bits <= 64 {
        while widths[bucket] < bits as u32 {
            bucket += 1;
        }
        bucket_of[bits] = bucket as u8;
        bits += 1;
    }
    Ladder { widths, bucket_of }
}

pub(crate) const LADDERS: [Ladder; 5] = [
    // Small steps: slowly varying integral or one-decimal vitals, exact 1 Hz clocks.
    ladder(&[0, 2, 4, 7, 12, 20, 64]),
    // Gorilla's timestamp buckets: clocks with jitter of up to tens of milliseconds.
    ladder(&[0, 7, 10, 14, 20, 32, 64]),
    // Noisy series where zero is rare.
    ladder(&[3, 6, 9, 12, 16, 24, 32, 64]),
    // Fine steps for very regular series: ±1 costs 3 bits.
    ladder(&[0, 1, 2, 3, 5, 8, 12, 16, 24, 32, 64]),
    // Large irregular gaps (wearables that sample in bursts).
    ladder(&[0, 8, 14, 20, 26, 32, 40, 64]),
];

/// Powers of ten for the decimal scales 0..=4, as exact constants so that encoder and
/// decoder divide by the very same numbers.
pub(crate) const POW10: [f64; 5] = [1.0, 10.0, 100.0, 1_000.0, 10_000.0];

/// Largest integer magnitude whose f64 conversion is exact (2^53).
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

/// How the values of a chunk are coded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueCoding {
    /// Gorilla XOR of successive f64 bit patterns.
    Xor,
    /// Every value is `n / 10^scale` for an integer `n`; the `n` are coded as first value
    /// and deltas (`order` 1) or deltas of deltas (`order` 2) on ladder `ladder`.
    Decimal { scale: u8, order: u8, ladder: u8 },
}

#[inline]
pub(crate) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

#[inline]
pub(crate) fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

/// Bits needed to write `z` (0 for zero).
#[inline]
fn significant_bits(z: u64) -> usize {
    64 - z.leading_zeros() as usize
}

/// Counts numbers by their significant bits, to price ladders without writing anything.
#[derive(Clone)]
pub(crate) struct Histogram([u64; 65]);

impl Default for Histogram {
    fn default() -> Self {
        Histogram([0; 65])
    }
}

impl Histogram {
    #[inline]
    pub(crate) fn add(&mut self, z: u64) {
        self.0[significant_bits(z)] += 1;
    }

    /// Bits the numbers cost on `ladder`.
    fn cost(&self, ladder: &Ladder) -> u64 {
        let last = ladder.widths.len() - 1;
        let mut total = 0;
        for (bits, &count) in self.0.iter().enumerate() {
            if count == 0 {
                continue;
            }
            let bucket = usize::from(ladder.bucket_of[bits]);
            let prefix = if bucket == last { bucket } else { bucket + 1 };
            total += count * (prefix as u64 + u64::from(ladder.widths[bucket]));
        }
        total
    }

    /// The cheapest ladder and its cost in bits.
    pub(crate) fn best(&self) -> (u8, u64) {
        let mut best = (0u8, u64::MAX);
        for (index, ladder) in LADDERS.iter().enumerate() {
            let cost = self.cost(ladder);
            if cost < best.1 {
                best = (index as u8, cost);
            }
        }
        best
    }
}

/// Writes `z` on `ladder`.
#[inline]
pub(crate) fn write_ladder(w: &mut BitWriter, ladder: &Ladder, z: u64) {
    let bucket = usize::from(ladder.bucket_of[significant_bits(z)]);
    let width = ladder.widths[bucket];
    let ones = (1u64 << bucket) - 1;
    // `bucket` ones, then a zero unless this is the last bucket.
    let (prefix, prefix_len) = if bucket == ladder.widths.len() - 1 {
        (ones, bucket as u32)
    } else {
        (ones << 1, bucket as u32 + 1)
    };
    if prefix_len + width <= 64 {
        w.write((prefix << width) | z, prefix_len + width);
    } else {
        w.write(prefix, prefix_len);
        w.write(z, width);
    }
}

/// Reads a number written by [`write_ladder`].
#[inline]
pub(crate) fn read_ladder(r: &mut BitReader<'_>, ladder: &Ladder) -> u64 {
    let bucket = r.unary(ladder.widths.len() as u32 - 1) as usize;
    r.read(ladder.widths[bucket])
}

/// Zig-zag delta-of-delta of each timestamp after the first (the first delta is taken
/// against a delta of zero). Wrapping arithmetic, so any i64 times round-trip.
pub(crate) fn time_dods(times: impl Iterator<Item = i64>) -> impl Iterator<Item = u64> {
    let mut prev: Option<(i64, i64)> = None;
    times.filter_map(move |t| match prev {
        None => {
            prev = Some((t, 0));
            None
        }
        Some((last, delta)) => {
            let d = t.wrapping_sub(last);
            prev = Some((t, d));
            Some(zigzag(d.wrapping_sub(delta)))
        }
    })
}

/// Decodes timestamps written as the first raw and then ladder-coded deltas of deltas.
#[derive(Debug, Clone)]
pub(crate) struct TimeDecoder {
    last: i64,
    delta: i64,
}

impl TimeDecoder {
    pub(crate) fn first(r: &mut BitReader<'_>) -> (TimeDecoder, i64) {
        let t = r.read(64) as i64;
        (TimeDecoder { last: t, delta: 0 }, t)
    }

    #[inline]
    pub(crate) fn next(&mut self, r: &mut BitReader<'_>, ladder: &Ladder) -> i64 {
        let dod = unzigzag(read_ladder(r, ladder));
        self.delta = self.delta.wrapping_add(dod);
        self.last = self.last.wrapping_add(self.delta);
        self.last
    }
}

/// The integer `n` with `n / 10^scale == v` bit for bit, if there is one within exact range.
#[inline]
fn decimal_of(v: f64, scale: usize) -> Option<i64> {
    let x = v * POW10[scale];
    // Also refuses NaN, which compares with nothing.
    if x.abs().partial_cmp(&EXACT_INT).is_none_or(|o| o.is_gt()) {
        return None;
    }
    // Half away from zero, truncated: `as` is one instruction where `round` may be a library
    // call, and an n off by one only fails the check below.
    let n = (x + 0.5f64.copysign(x)) as i64;
    ((n as f64 / POW10[scale]).to_bits() == v.to_bits()).then_some(n)
}

/// The smallest decimal scale (0..=4) at which every value is exactly `n / 10^scale`.
fn decimal_scale(values: impl Iterator<Item = f64>) -> Option<usize> {
    let mut scale = 0;
    for v in values {
        if !v.is_finite() {
            return None;
        }
        while decimal_of(v, scale).is_none() {
            scale += 1;
            if scale == POW10.len() {
                return None;
            }
        }
    }
    Some(scale)
}

/// Chooses the coding for `values`: decimal when a scale fits them all, with the cheaper
/// of delta and delta-of-delta on its cheapest ladder; XOR otherwise. For a decimal coding
/// also returns the integers to write (empty for XOR).
pub(crate) fn choose_value_coding(
    values: impl Iterator<Item = f64> + Clone,
) -> (ValueCoding, Vec<i64>) {
    let Some(scale) = decimal_scale(values.clone()) else {
        return (ValueCoding::Xor, Vec::new());
    };
    let mut ints = Vec::with_capacity(values.size_hint().0);
    let (mut deltas, mut dods) = (Histogram::default(), Histogram::default());
    let (mut first, mut second) = (DecimalState::new(1), DecimalState::new(2));
    for v in values {
        // A value that passed at a smaller scale passes at this one (division is correctly
        // rounded and 10·n stays exact), but check rather than rely on it.
        let Some(n) = decimal_of(v, scale) else {
            return (ValueCoding::Xor, Vec::new());
        };
        deltas.add(zigzag(first.step(n)));
        dods.add(zigzag(second.step(n)));
        ints.push(n);
    }
    let (by_delta, by_dod) = (deltas.best(), dods.best());
    let (order, ladder) = if by_dod.1 < by_delta.1 {
        (2, by_dod.0)
    } else {
        (1, by_delta.0)
    };
    let coding = ValueCoding::Decimal {
        scale: scale as u8,
        order,
        ladder,
    };
    (coding, ints)
}

/// Encodes values one at a time in the chosen coding.
pub(crate) enum ValueEncoder {
    Xor(XorEncoder),
    Decimal(DecimalState, &'static Ladder),
}

impl ValueEncoder {
    pub(crate) fn new(coding: ValueCoding) -> ValueEncoder {
        match coding {
            ValueCoding::Xor => ValueEncoder::Xor(XorEncoder::default()),
            ValueCoding::Decimal { order, ladder, .. } => {
                ValueEncoder::Decimal(DecimalState::new(order), &LADDERS[usize::from(ladder)])
            }
        }
    }

    /// Writes value `v`, whose integer in a decimal coding is `n` (unused for XOR).
    #[inline]
    pub(crate) fn push(&mut self, w: &mut BitWriter, v: f64, n: i64) {
        match self {
            ValueEncoder::Xor(x) => x.push(w, v),
            ValueEncoder::Decimal(state, ladder) => write_ladder(w, ladder, zigzag(state.step(n))),
        }
    }
}

/// Decodes values one at a time.
#[derive(Debug, Clone)]
pub(crate) enum ValueDecoder {
    Xor(XorDecoder),
    Decimal(DecimalState, f64, &'static Ladder),
}

impl ValueDecoder {
    pub(crate) fn new(coding: ValueCoding) -> ValueDecoder {
        match coding {
            ValueCoding::Xor => ValueDecoder::Xor(XorDecoder::default()),
            ValueCoding::Decimal {
                scale,
                order,
                ladder,
            } => ValueDecoder::Decimal(
                DecimalState::new(order),
                POW10[usize::from(scale)],
                &LADDERS[usize::from(ladder)],
            ),
        }
    }

    #[inline]
    pub(crate) fn next(&mut self, r: &mut BitReader<'_>) -> f64 {
        match self {
            ValueDecoder::Xor(x) => x.next(r),
            ValueDecoder::Decimal(state, divisor, ladder) => {
                let n = state.unstep(unzigzag(read_ladder(r, ladder)));
                n as f64 / *divisor
            }
        }
    }
}

/// Running state of delta (order 1) or delta-of-delta (order 2) integer coding. The first
/// integer is written whole and the second as a plain delta, so that the first value's size
/// does not leak into the second number.
#[derive(Debug, Clone)]
pub(crate) struct DecimalState {
    second_order: bool,
    started: bool,
    last: i64,
    delta: i64,
}

impl DecimalState {
    fn new(order: u8) -> DecimalState {
        DecimalState {
            second_order: order == 2,
            started: false,
            last: 0,
            delta: 0,
        }
    }

    /// The number to write for `n`.
    #[inline]
    fn step(&mut self, n: i64) -> i64 {
        let d = n.wrapping_sub(self.last);
        let out = if self.second_order {
            d.wrapping_sub(self.delta)
        } else {
            d
        };
        self.last = n;
        self.delta = if self.started { d } else { 0 };
        self.started = true;
        out
    }

    /// The integer from a number read.
    #[inline]
    fn unstep(&mut self, read: i64) -> i64 {
        let d = if self.second_order {
            self.delta.wrapping_add(read)
        } else {
            read
        };
        self.last = self.last.wrapping_add(d);
        self.delta = if self.started { d } else { 0 };
        self.started = true;
        self.last
    }
}

/// Gorilla XOR encoder: a repeat costs one bit; otherwise the meaningful bits of the XOR,
/// inside the previous window of leading/trailing zeros when they fit, else with a new one.
#[derive(Debug, Default)]
pub(crate) struct XorEncoder {
    prev: Option<u64>,
    leading: u32,
    trailing: u32,
}

impl XorEncoder {
    #[inline]
    fn push(&mut self, w: &mut BitWriter, v: f64) {
        let bits = v.to_bits();
        let Some(prev) = self.prev.replace(bits) else {
            w.write(bits, 64);
            return;
        };
        let xor = bits ^ prev;
        if xor == 0 {
            w.bit(false);
            return;
        }
        let (leading, trailing) = (xor.leading_zeros(), xor.trailing_zeros());
        // The first XOR (window 0/0 from Default with no meaningful bits yet) never reuses.
        let window = 64 - self.leading - self.trailing;
        if window < 64 && leading >= self.leading && trailing >= self.trailing {
            w.write(0b10, 2);
            w.write(xor >> self.trailing, window);
        } else {
            let meaningful = 64 - leading - trailing;
            w.write(0b11, 2);
            w.write(u64::from(leading), 6);
            // 1..=64 stored as 0..=63.
            w.write(u64::from(meaningful - 1), 6);
            w.write(xor >> trailing, meaningful);
            (self.leading, self.trailing) = (leading, trailing);
        }
    }
}

/// Gorilla XOR decoder.
#[derive(Debug, Default, Clone)]
pub(crate) struct XorDecoder {
    prev: Option<u64>,
    leading: u32,
    trailing: u32,
}

impl XorDecoder {
    #[inline]
    fn next(&mut self, r: &mut BitReader<'_>) -> f64 {
        let Some(prev) = self.prev else {
            let bits = r.read(64);
            self.prev = Some(bits);
            return f64::from_bits(bits);
        };
        if !r.bit() {
            return f64::from_bits(prev);
        }
        if r.bit() {
            let leading = r.read(6) as u32;
            let meaningful = r.read(6) as u32 + 1;
            // A damaged stream can claim more than 64 bits; clamp so shifts stay in range
            // (the checksum or the final-time check reports the damage).
            let leading = leading.min(64 - meaningful);
            self.leading = leading;
            self.trailing = 64 - leading - meaningful;
        }
        let window = 64 - self.leading - self.trailing;
        let xor = if window == 0 {
            0
        } else {
            r.read(window) << self.trailing
        };
        let bits = prev ^ xor;
        self.prev = Some(bits);
        f64::from_bits(bits)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zigzag_round_trips_extremes() {
        for v in [0, 1, -1, 63, -64, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(-1), 1);
        assert_eq!(zigzag(1), 2);
    }

    #[test]
    fn ladder_cost_matches_bits_written() {
        let numbers = [0u64, 1, 2, 3, 5, 100, 1 << 20, u64::MAX, 7, 0, 0];
        for ladder in &LADDERS {
            let mut hist = Histogram::default();
            let mut w = BitWriter::default();
            for &z in &numbers {
                hist.add(z);
                write_ladder(&mut w, ladder, z);
            }
            assert_eq!(hist.cost(ladder), w.bit_len(), "ladder {ladder:?}");
            let bytes = w.finish();
            let mut r = BitReader::new(&bytes);
            for &z in &numbers {
                assert_eq!(read_ladder(&mut r, ladder), z);
            }
        }
    }

    #[test]
    fn decimal_scale_is_the_smallest_exact_one() {
        assert_eq!(decimal_scale([72.0, 73.0].into_iter()), Some(0));
        assert_eq!(decimal_scale([36.6, 36.7].into_iter()), Some(1));
        assert_eq!(decimal_scale([71.5, 71.25].into_iter()), Some(2));
        assert_eq!(decimal_scale([0.1 + 0.2].into_iter()), None);
        assert_eq!(decimal_scale([f64::NAN].into_iter()), None);
        assert_eq!(decimal_scale([f64::INFINITY].into_iter()), None);
        // -0.0 is not 0 / 1 bit for bit.
        assert_eq!(decimal_scale([-0.0].into_iter()), None);
        assert_eq!(decimal_scale([1e300].into_iter()), None);
    }
}
