//! Encoding and decoding the observations of one message as a write-ahead log record.

use std::sync::Arc;

use kenko_devices::Metric;
use kenko_proto::wal as proto;
use prost::Message;

use crate::observation::Observation;
use crate::wal::Position;

/// Encodes the observations of one message as a log record.
pub fn encode(personal: &[Observation], shared: &[Observation], out: &mut Vec<u8>) {
    let record = proto::Batch {
        personal: personal.iter().map(to_proto).collect(),
        shared: shared.iter().map(to_proto).collect(),
    };
    out.clear();
    record
        .encode(out)
        .expect("a Vec grows to hold whatever is encoded");
}

fn to_proto(o: &Observation) -> proto::Observation {
    proto::Observation {
        citizen: o.citizen.to_string(),
        device: o.device.to_string(),
        metric: u32::from(o.metric.id()),
        value: o.value,
        time_ms: o.time_ms,
        received_ms: o.received_ms,
        seq: o.seq,
        flags: o.flags,
    }
}

/// A record read back from the log.
#[derive(Debug, Default, PartialEq)]
pub struct Record {
    pub personal: Vec<Observation>,
    pub shared: Vec<Observation>,
}

/// Why a record could not be read back (the checksum matched, so it was written so).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("write-ahead log record at {at:?} does not decode: {source}")]
    Decode {
        at: Position,
        source: prost::DecodeError,
    },
    #[error(
        "write-ahead log record at {at:?} names metric id {id}, which this kenko does not know"
    )]
    UnknownMetric { at: Position, id: u32 },
}

/// Decodes a record into observations.
pub fn decode(bytes: &[u8], at: Position) -> Result<Record, RecordError> {
    let batch = proto::Batch::decode(bytes).map_err(|source| RecordError::Decode { at, source })?;
    let convert = |list: Vec<proto::Observation>| -> Result<Vec<Observation>, RecordError> {
        list.into_iter()
            .map(|o| {
                let metric = u8::try_from(o.metric)
                    .ok()
                    .and_then(Metric::from_id)
                    .ok_or(RecordError::UnknownMetric { at, id: o.metric })?;
                Ok(Observation {
                    citizen: Arc::from(o.citizen),
                    device: Arc::from(o.device),
                    metric,
                    value: o.value,
                    time_ms: o.time_ms,
                    received_ms: o.received_ms,
                    seq: o.seq,
                    flags: o.flags,
                })
            })
            .collect()
    };
    Ok(Record {
        personal: convert(batch.personal)?,
        shared: convert(batch.shared)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let o = Observation {
            citizen: Arc::from("citizen-001"),
            device: Arc::from("bed-001"),
            metric: Metric::HeartRate,
            value: 61.5,
            time_ms: 1_764_049_990_000,
            received_ms: 1_764_049_990_123,
            seq: 7,
            flags: 1,
        };
        let shared = Observation {
            citizen: Arc::from("p-00"),
            device: Arc::from("-"),
            ..o.clone()
        };
        let mut bytes = Vec::new();
        encode(
            std::slice::from_ref(&o),
            std::slice::from_ref(&shared),
            &mut bytes,
        );
        let record = decode(&bytes, Position::default()).expect("decodes");
        assert_eq!(record.personal, vec![o]);
        assert_eq!(record.shared, vec![shared]);
        let mut bad = bytes.clone();
        bad.truncate(bytes.len() / 2);
        assert!(decode(&bad, Position::default()).is_err());
    }
}
