//! The chunked time-series store: per series, time-ordered points compressed into chunks
//! (delta-of-delta timestamps; fixed-decimal or XOR-float values) whose headers answer
//! whole-chunk aggregates without decoding.

pub mod bits;
pub mod chunk;
pub mod codec;
pub mod store;

pub use chunk::{Chunk, ChunkError, ChunkHeader, Points};
pub use codec::ValueCoding;

#[cfg(test)]
mod tests;
