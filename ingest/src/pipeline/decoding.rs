//! The writer's decoding: which device sent a message, under which profile, and its
//! observations (or why there are none).

use std::cell::RefCell;
use std::sync::Arc;

use kenko_config::Plausibility;
use kenko_devices::{DeviceEntry, Profiles, Registry};

use super::{Origin, Submission, PROTOBUF_PROFILE};
use crate::decode::{self, Context, DeviceLookup, RejectCode, Rejection, TimeLimits, Zones};
use crate::observation::Observation;

pub(super) struct Decoder {
    pub registry: Registry,
    pub zones: Zones,
    pub profiles: Profiles,
    pub limits: TimeLimits,
    pub plausibility: Plausibility,
}

impl Decoder {
    /// Appends the message's observations to `out`, or says why it has none. `named` gets
    /// the registered devices a gateway's message named (a refused one may hold readings of
    /// their citizens).
    pub fn decode(
        &self,
        sub: &Submission,
        out: &mut Vec<Observation>,
        named: &mut Vec<Arc<DeviceEntry>>,
    ) -> Result<(), Rejection> {
        let Some(device) = self.registry.get(&sub.device) else {
            return Err(Rejection {
                code: RejectCode::UnknownDevice,
                message: format!(
                    "device {} is not registered; add it to the [[devices]] of the hub's config",
                    sub.device
                ),
            });
        };
        if *sub.client_id != *sub.device {
            return Err(Rejection {
                code: RejectCode::ClientMismatch,
                message: format!(
                    "client {} may publish only on devices/{}/telemetry; connect with client id {}",
                    sub.client_id, sub.client_id, sub.device
                ),
            });
        }
        let window = match &sub.origin {
            Origin::Window(derived) => Some(derived),
            _ => None,
        };
        // Computed readings are named by metric, as in the protobuf schema.
        let name = if sub.protobuf || window.is_some() {
            PROTOBUF_PROFILE
        } else {
            &device.profile
        };
        let Some(profile) = self.profiles.get(name) else {
            return Err(Rejection {
                code: RejectCode::MalformedPayload,
                message: format!(
                    "device {} has payload profile {name:?}, which this hub does not know; declare it under [[profiles]]",
                    device.id
                ),
            });
        };
        let noting = Noting {
            registry: &self.registry,
            named: RefCell::new(std::mem::take(named)),
        };
        let ctx = Context {
            device: &device,
            devices: &noting,
            profile,
            zones: &self.zones,
            received_ms: sub.received_ms,
            plausibility: self.plausibility,
            limits: self.limits,
            derived: window.is_some(),
        };
        let result = match window {
            Some(derived) => decode::derived(&ctx, derived.time_ms, &derived.readings, out),
            None => decode::decode(&ctx, &sub.payload, out),
        };
        *named = noting.named.into_inner();
        result
    }
}

/// The registry, noting each registered device a message names.
struct Noting<'r> {
    registry: &'r Registry,
    named: RefCell<Vec<Arc<DeviceEntry>>>,
}

impl DeviceLookup for Noting<'_> {
    fn device(&self, id: &str) -> Option<Arc<DeviceEntry>> {
        let device = self.registry.get(id)?;
        self.named.borrow_mut().push(device.clone());
        Some(device)
    }
}
