//! The compact schema `kenko.telemetry.v1.Telemetry` (proto/): samples of readings named by
//! metric, in canonical units, times in epoch milliseconds. Any kind of device may use it.

use kenko_devices::Metric;
use kenko_proto::telemetry::Telemetry;
use prost::Message;

use super::{observation, Context, Rejection};
use crate::observation::Observation;

pub(super) fn decode(
    ctx: &Context<'_>,
    payload: &[u8],
    out: &mut Vec<Observation>,
) -> Result<(), Rejection> {
    let message = Telemetry::decode(payload).map_err(|e| {
        Rejection::malformed(format!(
            "payload is not a kenko.telemetry.v1.Telemetry protobuf message: {e}"
        ))
    })?;
    for (n, sample) in message.samples.iter().enumerate() {
        if sample.time_ms == 0 {
            return Err(Rejection::malformed(format!(
                "sample {n} has no time_ms; set it to the event time in epoch milliseconds"
            )));
        }
        for reading in &sample.readings {
            let metric: Metric = reading
                .metric
                .parse()
                .map_err(|e| Rejection::malformed(format!("sample {n}: {e}")))?;
            if metric.is_derived() && !ctx.derived {
                return Err(Rejection::malformed(format!(
                    "sample {n}: {metric} is computed by the hub and cannot come from a device"
                )));
            }
            let mut obs = observation(ctx, metric, reading.value, sample.time_ms);
            obs.seq = message.seq;
            out.push(obs);
        }
    }
    Ok(())
}
