//! Protobuf schemas of kenko (in `protos/`) and their prost types. Module names mirror the
//! proto packages.

pub mod kenko {
    pub mod telemetry {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            include!(concat!(env!("OUT_DIR"), "/kenko.telemetry.v1.rs"));
        }
    }
    pub mod wal {
        pub mod v1 {
            #![allow(clippy::all, missing_docs)]
            include!(concat!(env!("OUT_DIR"), "/kenko.wal.v1.rs"));
        }
    }
}

pub use kenko::telemetry::v1 as telemetry;
pub use kenko::wal::v1 as wal;

#[cfg(test)]
mod tests {
    use super::telemetry::{Reading, Sample, Telemetry};
    use prost::Message;

    #[test]
    fn telemetry_round_trips_and_stays_compact() {
        let message = Telemetry {
            seq: 7,
            samples: vec![Sample {
                time_ms: 1_764_050_000_000,
                readings: vec![Reading {
                    metric: "heart_rate".into(),
                    value: 58.5,
                }],
            }],
        };
        let bytes = message.encode_to_vec();
        assert!(bytes.len() < 40, "{} bytes", bytes.len());
        assert_eq!(Telemetry::decode(bytes.as_slice()).ok(), Some(message));
        assert!(Telemetry::decode(&b"\xff\xff\xff"[..]).is_err());
    }

    #[test]
    fn a_wal_batch_round_trips() {
        use super::wal::{Batch, Observation};
        let obs = Observation {
            citizen: "citizen-001".into(),
            device: "bed-001".into(),
            metric: 1,
            value: 61.5,
            time_ms: 1_764_050_000_000,
            received_ms: 1_764_050_000_120,
            seq: 9,
            flags: 0,
        };
        let batch = Batch {
            personal: vec![obs.clone()],
            shared: vec![Observation {
                citizen: "p-0123".into(),
                device: "-".into(),
                ..obs
            }],
        };
        let bytes = batch.encode_to_vec();
        assert_eq!(Batch::decode(bytes.as_slice()).ok(), Some(batch));
    }
}
