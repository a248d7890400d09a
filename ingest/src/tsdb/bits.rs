//! Bit-level writer and reader (most significant bit first) for the chunk codec.
//!
//! The reader never panics on short input: past the end it yields zero bits and remembers
//! that it ran over, so a damaged chunk is reported as an error by the caller.

/// Appends bit fields to a byte buffer.
#[derive(Debug, Default)]
pub struct BitWriter {
    buf: Vec<u8>,
    /// Pending bits, right-aligned; `pending` of them are valid.
    acc: u64,
    pending: u32,
}

impl BitWriter {
    /// A writer that appends after the bytes already in `buf`.
    pub fn with_buffer(buf: Vec<u8>) -> BitWriter {
        BitWriter {
            buf,
            acc: 0,
            pending: 0,
        }
    }

    /// Writes the low `width` bits of `value` (`width` ≤ 64).
    #[inline]
    pub fn write(&mut self, value: u64, width: u32) {
        debug_assert!(width <= 64);
        if width == 0 {
            return;
        }
        let value = value & mask(width);
        let free = 64 - self.pending;
        if width < free {
            self.acc = (self.acc << width) | value;
            self.pending += width;
        } else if width == free {
            // `acc << 64` would overflow: the field fills the accumulator exactly.
            let word = if width == 64 {
                value
            } else {
                (self.acc << width) | value
            };
            self.buf.extend_from_slice(&word.to_be_bytes());
            self.acc = 0;
            self.pending = 0;
        } else {
            let spill = width - free;
            let word = (self.acc << free) | (value >> spill);
            self.buf.extend_from_slice(&word.to_be_bytes());
            self.acc = value & mask(spill);
            self.pending = spill;
        }
    }

    /// Writes one bit.
    #[inline]
    pub fn bit(&mut self, set: bool) {
        self.write(u64::from(set), 1);
    }

    /// Bits written so far, including those in the buffer given at the start.
    pub fn bit_len(&self) -> u64 {
        self.buf.len() as u64 * 8 + u64::from(self.pending)
    }

    /// The bytes written, the last one padded with zero bits.
    pub fn finish(mut self) -> Vec<u8> {
        if self.pending > 0 {
            let word = self.acc << (64 - self.pending);
            let bytes = self.pending.div_ceil(8) as usize;
            self.buf.extend_from_slice(&word.to_be_bytes()[..bytes]);
        }
        self.buf
    }
}

/// Reads bit fields written by [`BitWriter`].
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    data: &'a [u8],
    /// Next byte of `data` to load into `acc`.
    next: usize,
    /// Bits left-aligned; the top `avail` are the next unread ones, those below are either
    /// zero or the correct following bits (a refill ORs them in again).
    acc: u64,
    avail: u32,
    /// Bits consumed so far.
    consumed: u64,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> BitReader<'a> {
        BitReader {
            data,
            next: 0,
            acc: 0,
            avail: 0,
            consumed: 0,
        }
    }

    /// True once more bits were read than the input holds (those read as zeros).
    pub fn overran(&self) -> bool {
        self.consumed > self.data.len() as u64 * 8
    }

    /// Bits consumed so far.
    pub fn position(&self) -> u64 {
        self.consumed
    }

    /// Reads a `width`-bit field (`width` ≤ 64).
    #[inline]
    pub fn read(&mut self, width: u32) -> u64 {
        debug_assert!(width <= 64);
        if width > 56 {
            let high = self.read(width - 32);
            return (high << 32) | self.read(32);
        }
        if width == 0 {
            return 0;
        }
        if self.avail < width {
            self.refill();
        }
        let value = self.acc >> (64 - width);
        self.take(width);
        value
    }

    /// Reads one bit.
    #[inline]
    pub fn bit(&mut self) -> bool {
        self.read(1) == 1
    }

    /// Counts set bits up to a clear one or to `max` (≤ 56), and consumes them and the clear
    /// bit if one ended the run: the unary prefix of a bucket code.
    #[inline]
    pub fn unary(&mut self, max: u32) -> u32 {
        debug_assert!(max <= 56);
        if self.avail < max + 1 {
            self.refill();
        }
        let ones = self.acc.leading_ones().min(max);
        let used = if ones < max { ones + 1 } else { ones };
        self.take(used);
        ones
    }

    #[inline]
    fn take(&mut self, width: u32) {
        // `width` ≤ 57 here, so the shift is in range; past the end `avail` saturates at 0
        // and zeros come out.
        self.acc <<= width;
        self.avail = self.avail.saturating_sub(width);
        self.consumed += u64::from(width);
    }

    /// Loads whole bytes until at least 57 bits are available (zeros past the end).
    #[inline]
    fn refill(&mut self) {
        if let Some(window) = self.data.get(self.next..self.next + 8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(window);
            self.acc |= u64::from_be_bytes(bytes) >> self.avail;
            let loaded = (64 - self.avail) / 8;
            self.next += loaded as usize;
            self.avail += loaded * 8;
            return;
        }
        while self.avail <= 56 {
            let byte = self.data.get(self.next).copied().unwrap_or(0);
            self.acc |= u64::from(byte) << (56 - self.avail);
            self.next += 1;
            self.avail += 8;
        }
    }
}

#[inline]
fn mask(width: u32) -> u64 {
    if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn fields_read_back_as_written(fields in prop::collection::vec((any::<u64>(), 0u32..=64), 0..200)) {
            let mut writer = BitWriter::default();
            for &(value, width) in &fields {
                writer.write(value, width);
            }
            let bits = writer.bit_len();
            let bytes = writer.finish();
            prop_assert_eq!(bytes.len() as u64, bits.div_ceil(8));
            let mut reader = BitReader::new(&bytes);
            for &(value, width) in &fields {
                prop_assert_eq!(reader.read(width), value & mask(width));
            }
            prop_assert_eq!(reader.position(), bits);
            prop_assert!(!reader.overran());
        }

        #[test]
        fn unary_prefixes_read_back(runs in prop::collection::vec(0u32..=8, 0..100)) {
            let mut writer = BitWriter::default();
            for &ones in &runs {
                writer.write(u64::MAX, ones);
                if ones < 8 {
                    writer.bit(false);
                }
                writer.write(0b101, 3);
            }
            let bytes = writer.finish();
            let mut reader = BitReader::new(&bytes);
            for &ones in &runs {
                prop_assert_eq!(reader.unary(8), ones);
                prop_assert_eq!(reader.read(3), 0b101);
            }
        }
    }

    #[test]
    fn reading_past_the_end_gives_zeros_and_is_noticed() {
        let mut reader = BitReader::new(&[0xff]);
        assert_eq!(reader.read(4), 0xf);
        assert!(!reader.overran());
        assert_eq!(reader.read(12), 0xf00);
        assert!(reader.overran());
        assert_eq!(reader.read(64), 0);
        assert_eq!(reader.unary(10), 0);
    }
}
