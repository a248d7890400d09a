//! The event time the hub attaches to its live observations, so that a delivery on a
//! consent-gated topic is decided by the time of the observation it carries, not only by
//! the consent in force now.
//!
//! The time travels as an MQTT 5 user property on the hub's own publish. Only the hub may
//! set it: the property is removed from every client's publish and will before the router
//! sees them, and from every delivery before a subscriber sees it.

use rumqttd::protocol::PublishProperties;

/// The user property that carries an observation's event time (epoch milliseconds).
pub(crate) const EVENT_TIME_PROPERTY: &str = "kenko-event-ms";

/// Properties of a hub publish whose observation was made at `event_ms`.
pub(crate) fn hub_properties(event_ms: Option<i64>) -> Option<PublishProperties> {
    event_ms.map(|ms| PublishProperties {
        user_properties: vec![(EVENT_TIME_PROPERTY.to_owned(), ms.to_string())],
        ..PublishProperties::default()
    })
}

/// Removes any event time a client put on its publish: it is the hub's to say.
pub(crate) fn strip(props: &mut Option<PublishProperties>) {
    take(props);
}

/// Takes the event time off a delivery's properties (a subscriber never sees it); `None`
/// when it has none or it does not parse, which a consent-gated rule treats as deny.
pub(crate) fn take(props: &mut Option<PublishProperties>) -> Option<i64> {
    let p = props.as_mut()?;
    let mut event_ms = None;
    p.user_properties.retain(|(key, value)| {
        if key != EVENT_TIME_PROPERTY {
            return true;
        }
        event_ms = value.parse().ok();
        false
    });
    if *p == PublishProperties::default() {
        // Nothing else was set: the delivery goes out as the hub published it, bare.
        *props = None;
    }
    event_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_time_is_taken_off_and_other_properties_stay() {
        let mut props = hub_properties(Some(1_700_000_000_123));
        assert_eq!(take(&mut props), Some(1_700_000_000_123));
        assert_eq!(props, None, "nothing left to send");

        let mut props = Some(PublishProperties {
            content_type: Some("application/json".into()),
            user_properties: vec![
                ("a".into(), "1".into()),
                (EVENT_TIME_PROPERTY.into(), "not a time".into()),
            ],
            ..PublishProperties::default()
        });
        assert_eq!(take(&mut props), None, "an unreadable time is no time");
        let left = props.expect("other properties stay");
        assert_eq!(left.user_properties, vec![("a".to_owned(), "1".to_owned())]);
        assert_eq!(left.content_type.as_deref(), Some("application/json"));
    }
}
