//! Devices a message names besides its publisher: a gateway relays readings of the devices
//! registered behind it, each group of its message naming its device (the profile's
//! `device`). Each named device must be registered, and the publisher must be it or its
//! gateway; otherwise the whole message is refused, naming the device.

use std::sync::Arc;

use kenko_devices::{DeviceEntry, Registry};

use super::{Context, RejectCode, Rejection};

/// Where a decoder finds the devices a message names.
pub trait DeviceLookup {
    /// The registered device with this id.
    fn device(&self, id: &str) -> Option<Arc<DeviceEntry>>;
}

impl DeviceLookup for Registry {
    fn device(&self, id: &str) -> Option<Arc<DeviceEntry>> {
        self.get(id)
    }
}

/// No device besides the publisher: for decoding where a message names none.
pub struct NoOthers;

impl DeviceLookup for NoOthers {
    fn device(&self, _id: &str) -> Option<Arc<DeviceEntry>> {
        None
    }
}

/// Any id, as if registered behind `publisher` for the same citizen: to try a profile
/// without a registry (`kenko profile test`).
pub struct AnyBehind(pub Arc<DeviceEntry>);

impl DeviceLookup for AnyBehind {
    fn device(&self, id: &str) -> Option<Arc<DeviceEntry>> {
        let publisher = &self.0;
        Some(Arc::new(DeviceEntry {
            id: Arc::from(id),
            gateway: Some(publisher.id.clone()),
            ..(**publisher).clone()
        }))
    }
}

/// The device `id`, named in the payload's `key`, if the context's device may publish
/// its readings.
pub(super) fn relayed(
    ctx: &Context<'_>,
    key: &str,
    id: &str,
) -> Result<Arc<DeviceEntry>, Rejection> {
    let publisher = &ctx.device.id;
    let Some(device) = ctx.devices.device(id) else {
        return Err(Rejection::new(
            RejectCode::UnknownDevice,
            format!(
                "device {id}, named in {key}, is not registered; register it behind gateway {publisher} (`kenko device add --id {id} --gateway {publisher} ...`)"
            ),
        ));
    };
    if !device.speaks_for_me(publisher) {
        return Err(Rejection::new(
            RejectCode::ClientMismatch,
            format!(
                "device {id}, named in {key}, is not registered behind {publisher}, so {publisher} may not publish its readings; register it with gateway {publisher}"
            ),
        ));
    }
    Ok(device)
}
