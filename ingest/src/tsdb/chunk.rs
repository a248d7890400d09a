//! A chunk: one encoded run of a series' points, sorted and unique by time, behind a header
//! that answers count, first/last time, min, max, sum and mean without decoding, and a
//! CRC-32 that makes a damaged chunk an error rather than a wrong answer.
//!
//! Layout (little-endian): version, time ladder, value coding (tag, scale, order, ladder),
//! count u32, first and last time i64, min, max and sum f64, the bit stream of the points
//! (per point: time, then value), CRC-32 of everything before it.

use super::bits::{BitReader, BitWriter};
use super::codec::{
    choose_value_coding, time_dods, write_ladder, Histogram, Ladder, TimeDecoder, ValueCoding,
    ValueDecoder, ValueEncoder, LADDERS,
};

const VERSION: u8 = 1;
const HEADER_LEN: usize = 50;
const CRC_LEN: usize = 4;

/// What is wrong with points to encode or bytes to read as a chunk.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ChunkError {
    #[error("a chunk needs at least one point; skip empty runs before encoding")]
    Empty,
    #[error("a chunk holds at most {max} points, not {count}; split the run into several chunks", max = u32::MAX)]
    TooMany { count: usize },
    #[error("point {index} at {time_ms} ms does not come after the previous one at {previous_ms} ms; sort the points by time and drop repeats before encoding")]
    NotSorted {
        index: usize,
        previous_ms: i64,
        time_ms: i64,
    },
    #[error("chunk of {len} bytes is shorter than a header and checksum ({min} bytes); the stored chunk is truncated", min = HEADER_LEN + CRC_LEN)]
    TooShort { len: usize },
    #[error("chunk checksum is {found:08x} but its bytes sum to {computed:08x}; the stored chunk is damaged")]
    Checksum { found: u32, computed: u32 },
    #[error("chunk format version {0} is not understood by this kenko (it reads version {VERSION}); upgrade kenko")]
    Version(u8),
    #[error("chunk header is invalid ({0}); the stored chunk is damaged")]
    Header(&'static str),
    #[error("chunk points do not match its header ({0}); the stored chunk is damaged")]
    Points(&'static str),
}

/// The summary a chunk header holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkHeader {
    pub count: u32,
    pub first_ms: i64,
    pub last_ms: i64,
    pub min: f64,
    pub max: f64,
    /// Sum of the values in time order.
    pub sum: f64,
    pub time_ladder: u8,
    pub values: ValueCoding,
}

impl ChunkHeader {
    pub fn mean(&self) -> f64 {
        self.sum / f64::from(self.count)
    }
}

/// An encoded, checked chunk.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    header: ChunkHeader,
    bytes: Vec<u8>,
}

impl Chunk {
    /// Encodes points sorted by strictly increasing time.
    pub fn encode(points: &[(i64, f64)]) -> Result<Chunk, ChunkError> {
        let (header, ints) = summarize(points)?;
        // The header is filled in after the points, into the zeros reserved here.
        let mut buffer = Vec::with_capacity(HEADER_LEN + CRC_LEN + points.len() * 2);
        buffer.resize(HEADER_LEN, 0);
        let mut writer = BitWriter::with_buffer(buffer);
        write_points(&mut writer, &header, points, &ints);
        let mut bytes = writer.finish();
        write_header(&mut bytes[..HEADER_LEN], &header);
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_le_bytes());
        Ok(Chunk { header, bytes })
    }

    /// Reads a stored chunk, checking its checksum and header.
    pub fn from_bytes(bytes: &[u8]) -> Result<Chunk, ChunkError> {
        if bytes.len() < HEADER_LEN + CRC_LEN {
            return Err(ChunkError::TooShort { len: bytes.len() });
        }
        let (body, crc) = bytes.split_at(bytes.len() - CRC_LEN);
        let found = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let computed = crc32fast::hash(body);
        if found != computed {
            return Err(ChunkError::Checksum { found, computed });
        }
        let header = read_header(body)?;
        Ok(Chunk {
            header,
            bytes: bytes.to_vec(),
        })
    }

    pub fn header(&self) -> &ChunkHeader {
        &self.header
    }

    /// The stored form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The points in time order.
    pub fn decode(&self) -> Points<'_> {
        let payload = &self.bytes[HEADER_LEN..self.bytes.len() - CRC_LEN];
        Points {
            reader: BitReader::new(payload),
            remaining: self.header.count,
            time: None,
            time_ladder: &LADDERS[usize::from(self.header.time_ladder)],
            values: ValueDecoder::new(self.header.values),
        }
    }

    /// All points, checked against the header: a stream that runs short, goes back in time or
    /// ends elsewhere than the header says is an error. The checksum already makes that
    /// practically impossible; this guards against a checksum that happens to match.
    pub fn points(&self) -> Result<Vec<(i64, f64)>, ChunkError> {
        let mut points = Vec::with_capacity(self.header.count as usize);
        let mut iter = self.decode();
        for point in iter.by_ref() {
            if let Some(&(previous, _)) = points.last() {
                if point.0 <= previous {
                    return Err(ChunkError::Points("times do not increase"));
                }
            }
            points.push(point);
        }
        if iter.reader.overran() {
            return Err(ChunkError::Points("bit stream ends early"));
        }
        let first = points.first().map(|p| p.0);
        let last = points.last().map(|p| p.0);
        if first != Some(self.header.first_ms) || last != Some(self.header.last_ms) {
            return Err(ChunkError::Points("first or last time differs"));
        }
        Ok(points)
    }
}

/// Iterator over a chunk's points.
#[derive(Debug, Clone)]
pub struct Points<'a> {
    reader: BitReader<'a>,
    remaining: u32,
    time: Option<TimeDecoder>,
    time_ladder: &'static Ladder,
    values: ValueDecoder,
}

impl Iterator for Points<'_> {
    type Item = (i64, f64);

    #[inline]
    fn next(&mut self) -> Option<(i64, f64)> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let time = match &mut self.time {
            Some(decoder) => decoder.next(&mut self.reader, self.time_ladder),
            None => {
                let (decoder, first) = TimeDecoder::first(&mut self.reader);
                self.time = Some(decoder);
                first
            }
        };
        let value = self.values.next(&mut self.reader);
        Some((time, value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining as usize, Some(self.remaining as usize))
    }
}

impl ExactSizeIterator for Points<'_> {}

/// Checks the points and computes the header, choosing the codings; also returns the
/// integers of a decimal value coding.
fn summarize(points: &[(i64, f64)]) -> Result<(ChunkHeader, Vec<i64>), ChunkError> {
    let (Some(&(first_ms, _)), Some(&(last_ms, _))) = (points.first(), points.last()) else {
        return Err(ChunkError::Empty);
    };
    let count = u32::try_from(points.len()).map_err(|_| ChunkError::TooMany {
        count: points.len(),
    })?;
    if let Some(index) = points.windows(2).position(|w| w[1].0 <= w[0].0) {
        return Err(ChunkError::NotSorted {
            index: index + 1,
            previous_ms: points[index].0,
            time_ms: points[index + 1].0,
        });
    }
    let (min, max, sum) = aggregates(points.iter().map(|p| p.1));
    let mut dods = Histogram::default();
    time_dods(points.iter().map(|p| p.0)).for_each(|z| dods.add(z));
    let (values, ints) = choose_value_coding(points.iter().map(|p| p.1));
    let header = ChunkHeader {
        count,
        first_ms,
        last_ms,
        min,
        max,
        sum,
        time_ladder: dods.best().0,
        values,
    };
    Ok((header, ints))
}

/// Min, max and sum (in order) of values, as a chunk header states them.
pub fn aggregates(values: impl Iterator<Item = f64>) -> (f64, f64, f64) {
    values.fold(
        (f64::INFINITY, f64::NEG_INFINITY, -0.0),
        |(min, max, sum), v| (min.min(v), max.max(v), sum + v),
    )
}

fn write_points(writer: &mut BitWriter, header: &ChunkHeader, points: &[(i64, f64)], ints: &[i64]) {
    let ladder = &LADDERS[usize::from(header.time_ladder)];
    let mut values = ValueEncoder::new(header.values);
    let mut dods = time_dods(points.iter().map(|p| p.0));
    for (index, &(time, value)) in points.iter().enumerate() {
        if index == 0 {
            writer.write(time as u64, 64);
        } else if let Some(z) = dods.next() {
            write_ladder(writer, ladder, z);
        }
        values.push(writer, value, ints.get(index).copied().unwrap_or(0));
    }
}

fn write_header(out: &mut [u8], header: &ChunkHeader) {
    let (tag, scale, order, ladder) = match header.values {
        ValueCoding::Xor => (0, 0, 0, 0),
        ValueCoding::Decimal {
            scale,
            order,
            ladder,
        } => (1, scale, order, ladder),
    };
    out[..6].copy_from_slice(&[VERSION, header.time_ladder, tag, scale, order, ladder]);
    out[6..10].copy_from_slice(&header.count.to_le_bytes());
    out[10..18].copy_from_slice(&header.first_ms.to_le_bytes());
    out[18..26].copy_from_slice(&header.last_ms.to_le_bytes());
    out[26..34].copy_from_slice(&header.min.to_le_bytes());
    out[34..42].copy_from_slice(&header.max.to_le_bytes());
    out[42..50].copy_from_slice(&header.sum.to_le_bytes());
}

fn read_header(body: &[u8]) -> Result<ChunkHeader, ChunkError> {
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[at..at + 8]);
        b
    };
    if body[0] != VERSION {
        return Err(ChunkError::Version(body[0]));
    }
    let time_ladder = body[1];
    if usize::from(time_ladder) >= LADDERS.len() {
        return Err(ChunkError::Header("unknown time ladder"));
    }
    let values = match (body[2], body[3], body[4], body[5]) {
        (0, 0, 0, 0) => ValueCoding::Xor,
        (1, scale @ 0..=4, order @ 1..=2, ladder) if usize::from(ladder) < LADDERS.len() => {
            ValueCoding::Decimal {
                scale,
                order,
                ladder,
            }
        }
        _ => return Err(ChunkError::Header("unknown value coding")),
    };
    let count = u32::from_le_bytes([body[6], body[7], body[8], body[9]]);
    let header = ChunkHeader {
        count,
        first_ms: i64::from_le_bytes(word(10)),
        last_ms: i64::from_le_bytes(word(18)),
        min: f64::from_le_bytes(word(26)),
        max: f64::from_le_bytes(word(34)),
        sum: f64::from_le_bytes(word(42)),
        time_ladder,
        values,
    };
    check_header(&header, body.len() - HEADER_LEN)?;
    Ok(header)
}

/// Consistency a header must have whatever its points.
fn check_header(header: &ChunkHeader, payload_len: usize) -> Result<(), ChunkError> {
    if header.count == 0 {
        return Err(ChunkError::Header("no points"));
    }
    if header.first_ms > header.last_ms
        || (header.count == 1) != (header.first_ms == header.last_ms)
    {
        return Err(ChunkError::Header(
            "first and last time disagree with the count",
        ));
    }
    // Every point after the first costs at least two bits (time and value), the first 64+.
    let needed_bits = 64 + 2 * (u64::from(header.count) - 1);
    if (payload_len as u64) * 8 < needed_bits {
        return Err(ChunkError::Header("count exceeds what the bytes can hold"));
    }
    Ok(())
}
