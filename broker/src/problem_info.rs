//! Reason strings and user properties on the packets kenko writes (MQTT 5 calls them problem
//! information): a reason string is cut to [`MAX_REASON_BYTES`], and both are left out of a
//! packet that would otherwise be larger than the client's Maximum Packet Size (MQTT-3.2.2-19,
//! -20 for CONNACK, MQTT-3.4.2-2, -3 for PUBACK and the same for PUBREC, PUBREL, PUBCOMP,
//! SUBACK, UNSUBACK and DISCONNECT). The whole text stays in the log, and a refused reading's
//! in its dead letter.

use rumqttd::protocol::Packet;

/// The longest reason string a packet carries: enough to say what was wrong and what to do,
/// and far from the two-byte length a string is limited to.
pub(crate) const MAX_REASON_BYTES: usize = 256;

/// What a reason string cut short ends with.
const CUT: &str = "…";

/// `packet` with its reason string, if any, cut to at most [`MAX_REASON_BYTES`].
pub(crate) fn with_short_reason(mut packet: Packet) -> Packet {
    if let Some(reason) = reason_string(&mut packet) {
        shorten(reason);
    }
    packet
}

/// Cuts `reason` to at most [`MAX_REASON_BYTES`] on a character boundary, marking the cut.
pub(crate) fn shorten(reason: &mut String) {
    if reason.len() <= MAX_REASON_BYTES {
        return;
    }
    let mut end = MAX_REASON_BYTES - CUT.len();
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason.truncate(end);
    reason.push_str(CUT);
}

/// A copy of `packet` without its reason string and user properties, if it has either and
/// they may be left out; `None` if there is nothing to leave out. A PUBLISH's user properties
/// are the publisher's, part of the message: never left out.
pub(crate) fn without_problem_info(packet: &Packet) -> Option<Packet> {
    let has = |reason: &Option<String>, users: &Vec<(String, String)>| {
        reason.is_some() || !users.is_empty()
    };
    let smaller = match packet {
        Packet::ConnAck(ack, Some(p)) if has(&p.reason_string, &p.user_properties) => {
            let mut p = p.clone();
            p.reason_string = None;
            p.user_properties = Vec::new();
            Packet::ConnAck(ack.clone(), Some(p))
        }
        Packet::Disconnect(d, Some(p)) if has(&p.reason_string, &p.user_properties) => {
            let mut p = p.clone();
            p.reason_string = None;
            p.user_properties = Vec::new();
            let keep = p.session_expiry_interval.is_some() || p.server_reference.is_some();
            Packet::Disconnect(d.clone(), keep.then_some(p))
        }
        // These acknowledgements have no other properties.
        Packet::PubAck(a, Some(p)) if has(&p.reason_string, &p.user_properties) => {
            Packet::PubAck(a.clone(), None)
        }
        Packet::PubRec(a, Some(p)) if has(&p.reason_string, &p.user_properties) => {
            Packet::PubRec(a.clone(), None)
        }
        Packet::PubRel(a, Some(p)) if has(&p.reason_string, &p.user_properties) => {
            Packet::PubRel(a.clone(), None)
        }
        Packet::PubComp(a, Some(p)) if has(&p.reason_string, &p.user_properties) => {
            Packet::PubComp(a.clone(), None)
        }
        Packet::SubAck(a, Some(p)) if has(&p.reason_string, &p.user_properties) => {
            Packet::SubAck(a.clone(), None)
        }
        Packet::UnsubAck(a, Some(p)) if has(&p.reason_string, &p.user_properties) => {
            Packet::UnsubAck(a.clone(), None)
        }
        _ => return None,
    };
    Some(smaller)
}

/// The packet's reason string, if it can carry one and does.
fn reason_string(packet: &mut Packet) -> Option<&mut String> {
    match packet {
        Packet::ConnAck(_, Some(p)) => p.reason_string.as_mut(),
        Packet::Disconnect(_, Some(p)) => p.reason_string.as_mut(),
        Packet::PubAck(_, Some(p)) => p.reason_string.as_mut(),
        Packet::PubRec(_, Some(p)) => p.reason_string.as_mut(),
        Packet::PubRel(_, Some(p)) => p.reason_string.as_mut(),
        Packet::PubComp(_, Some(p)) => p.reason_string.as_mut(),
        Packet::SubAck(_, Some(p)) => p.reason_string.as_mut(),
        Packet::UnsubAck(_, Some(p)) => p.reason_string.as_mut(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_reason_is_cut_on_a_character_boundary_and_marked() {
        let mut short = "not authorized".to_owned();
        shorten(&mut short);
        assert_eq!(short, "not authorized");
        let mut exact = "x".repeat(MAX_REASON_BYTES);
        shorten(&mut exact);
        assert_eq!(exact.len(), MAX_REASON_BYTES, "at the limit: unchanged");
        assert!(!exact.ends_with(CUT));
        for filler in ["x", "é", "温", "😀"] {
            let mut long = filler.repeat(100_000);
            shorten(&mut long);
            assert!(long.len() <= MAX_REASON_BYTES, "{filler}: {}", long.len());
            assert!(long.len() > MAX_REASON_BYTES - 4 - CUT.len(), "{filler}");
            assert!(long.ends_with(CUT), "{filler}");
            let kept = long.trim_end_matches(CUT);
            assert!(kept.chars().all(|c| c.to_string() == filler), "{filler}");
        }
    }
}
