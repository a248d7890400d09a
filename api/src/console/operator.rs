//! An operator's page (role `operator`): the devices with when each was last heard from,
//! its rate and whether it is connected now; the MQTT connections; the write-ahead log and
//! each sink's lag; dead letters per reason and the newest ones, each with a replay button;
//! denials per ACL rule; and a form that asks the rules in force what they decide, and why.
//! The same figures as the operator endpoints of the API (`operators.rs`), read the same way.

use std::collections::HashSet;

use jiff::tz::TimeZone;
use kenko_ingest::deadletter::Selection;
use maud::{html, Markup};

use super::format::{local, url_value};
use super::i18n::{Lang, Text};
use super::{head, PageParams, Viewer};
use crate::http::{ApiError, HttpApi};
use crate::operators::{
    dead_letter, dead_letter_views, denial_views, device_views, explain_view, log_view,
    replay_request, session_views, ExplainParams, ExplainView,
};

/// Dead letters listed on the page.
const LETTERS: usize = 20;

pub(crate) async fn page(
    api: &HttpApi,
    viewer: &Viewer,
    params: &PageParams,
) -> Result<Markup, ApiError> {
    let devices = device_views(api, None);
    let sessions = session_views(api, None);
    let online: HashSet<&str> = sessions.iter().map(|s| s.client_id.as_str()).collect();
    let log = log_view(api);
    let letters = dead_letter_views(api, Selection::default(), LETTERS).await?;
    let errors: std::collections::HashMap<&str, u64> = letters
        .devices
        .iter()
        .map(|d| (d.device.as_str(), d.count))
        .collect();
    let shown_letter = match params.letter {
        Some(id) => {
            let letter = dead_letter(api, id).await?;
            audit_letter(api, &viewer.who.id, id, letter.as_ref()).await?;
            Some((id, letter))
        }
        None => None,
    };
    let denials = denial_views(api);
    // An unknown request id shows as such in the dead-letter section, not as the page.
    let replay = match params.replay {
        Some(id) => Some((id, replay_request(api, id).await.ok())),
        None => None,
    };
    let explained = explain(api, params);
    let zone = TimeZone::get(&api.config.ingest.default_timezone).unwrap_or(TimeZone::UTC);
    let lang = viewer.lang;
    let when = |t: &str| {
        t.parse::<jiff::Timestamp>()
            .map(|t| local(t.as_millisecond(), &zone, "%m-%d %H:%M:%S"))
            .unwrap_or_else(|_| t.to_owned())
    };
    Ok(html! {
        section id="devices" aria-labelledby="devices-h" {
            h2 id="devices-h" { (lang.t(Text::Devices)) " (" (devices.len()) ")" }
            table {
                (head(lang, &[Text::Id, Text::Kind, Text::Citizen, Text::State, Text::LastSeen, Text::PerMinute, Text::Messages, Text::Errors]))
                tbody {
                    @for d in &devices {
                        @let on = online.contains(d.id.as_str());
                        tr data-device=(d.id) data-online=(on) {
                            td { a href=(format!("?tail={}#tail", url_value(&d.id))) { (d.id) } }
                            td { (d.kind) }
                            td { (d.citizen) }
                            td class=(if on { "online" } else { "offline" }) {
                                (lang.t(if on { Text::Online } else { Text::Offline }))
                            }
                            td { @if let Some(t) = &d.last_seen { (when(t)) } @else { "–" } }
                            td { (d.per_minute) }
                            td { (d.messages) }
                            td data-errors=(errors.get(d.id.as_str()).copied().unwrap_or(0)) {
                                (errors.get(d.id.as_str()).copied().unwrap_or(0))
                            }
                        }
                    }
                }
            }
        }
        @if let Some(device) = params.tail.as_deref().filter(|d| !d.is_empty()) {
            section id="tail" aria-labelledby="tail-h" {
                h2 id="tail-h" { (lang.t(Text::LiveTail)) ": " (device) }
                table data-live-tail=(format!("/console/live/device?id={}", url_value(device))) {
                    (head(lang, &[Text::When, Text::Metric, Text::Reading, Text::Unit]))
                    tbody {}
                }
            }
        }
        section id="connections" aria-labelledby="connections-h" {
            h2 id="connections-h" { (lang.t(Text::Connections)) " (" (sessions.len()) ")" }
            table {
                (head(lang, &[Text::ClientId, Text::Principal, Text::Protocol, Text::Address, Text::Since]))
                tbody {
                    @for s in &sessions {
                        tr { td { (s.client_id) } td { (s.principal) } td { (s.protocol) } td { (s.address) } td { (when(&s.connected)) } }
                    }
                }
            }
        }
        section id="log" aria-labelledby="log-h" {
            h2 id="log-h" { (lang.t(Text::Log)) }
            p {
                (lang.t(Text::LogHolds)) " " strong { (mib(log.bytes)) }
                @if log.full { " · " strong class="bad" { (lang.t(Text::LogFull)) } }
                @if log.failing { " · " strong class="bad" { (lang.t(Text::LogFailing)) } }
            }
            ul {
                @for s in &log.sinks {
                    li data-sink=(s.sink) { (s.sink) ": " (lang.t(Text::Behind)) " " (mib(s.lag_bytes)) }
                }
            }
        }
        (dead_letters(viewer, &letters, replay.as_ref(), &when))
        @if let Some((id, letter)) = &shown_letter {
            (letter_section(lang, *id, letter.as_ref(), &when))
        }
        section id="denials" aria-labelledby="denials-h" {
            h2 id="denials-h" { (lang.t(Text::Denials)) }
            @if denials.is_empty() { p { (lang.t(Text::NoneYet)) } }
            @else {
                table {
                    (head(lang, &[Text::Rule, Text::Count]))
                    tbody { @for d in &denials { tr { td { code { (d.rule) } } td { (d.count) } } } }
                }
            }
        }
        (explain_form(lang, params, explained))
    })
}

/// The explain form's answer, when the form was sent.
fn explain(api: &HttpApi, params: &PageParams) -> Option<Result<ExplainView, String>> {
    let principal = params.principal.clone().filter(|p| !p.is_empty())?;
    let topic = params.topic.clone().unwrap_or_default();
    let subscribe = params.action.as_deref() == Some("subscribe");
    let asked = ExplainParams {
        principal,
        publish: (!subscribe).then(|| topic.clone()),
        subscribe: subscribe.then_some(topic),
        qos: Some(1),
        retain: None,
        client_id: None,
        at: None,
    };
    Some(explain_view(api, &asked).map_err(|e| e.message().to_owned()))
}

fn dead_letters(
    viewer: &Viewer,
    letters: &crate::operators::DeadLetters,
    replay: Option<&(i64, Option<crate::operators::ReplayView>)>,
    when: &impl Fn(&str) -> String,
) -> Markup {
    let lang = viewer.lang;
    html! {
        section id="deadletters" aria-labelledby="deadletters-h" {
            h2 id="deadletters-h" { (lang.t(Text::DeadLetters)) }
            @if let Some((id, found)) = replay {
                p class="notice" role="status" data-replay=(id) {
                    (lang.t(Text::ReplayRequest)) " " (id) ": "
                    @match found {
                        None => (lang.t(Text::NoSuchRequest)),
                        Some(r) => @match &r.done {
                            None => (lang.t(Text::Waiting)),
                            Some(_) => { (lang.t(Text::Replayed)) " " (r.replayed) ", " (lang.t(Text::RefusedAgain)) " " (r.failed) ", " (lang.t(Text::Skipped)) " " (r.skipped) }
                        },
                    }
                }
            }
            @if letters.counts.is_empty() { p { (lang.t(Text::NoneYet)) } }
            @else {
                ul class="counts" { @for c in &letters.counts { li { code { (c.reason) } ": " (c.count) } } }
                table {
                    (head(lang, &[Text::When, Text::Device, Text::Reason, Text::Blank]))
                    tbody {
                        @for l in &letters.letters {
                            tr data-letter=(l.id) {
                                td { (when(&l.received)) }
                                td { (l.device.as_deref().unwrap_or(&l.client_id)) }
                                td { code { (l.reason_code) } " " (l.reason) " "
                                    a href=(format!("?letter={}#letter", l.id)) { (lang.t(Text::Show)) } }
                                td {
                                    form method="post" action="/console/deadletters/replay" class="inline" {
                                        input type="hidden" name="csrf_token" value=(viewer.csrf);
                                        input type="hidden" name="id" value=(l.id);
                                        button type="submit" { (lang.t(Text::Replay)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn explain_form(
    lang: Lang,
    params: &PageParams,
    explained: Option<Result<ExplainView, String>>,
) -> Markup {
    let subscribe = params.action.as_deref() == Some("subscribe");
    html! {
        section id="explain" aria-labelledby="explain-h" {
            h2 id="explain-h" { (lang.t(Text::Explain)) }
            form method="get" action="/console#explain" {
                p {
                    label for="principal" { (lang.t(Text::Principal)) } " "
                    input id="principal" name="principal" value=(params.principal.as_deref().unwrap_or("")) required;
                    " "
                    label for="action" { (lang.t(Text::Action)) } " "
                    select id="action" name="action" {
                        option value="publish" selected[!subscribe] { "publish" }
                        option value="subscribe" selected[subscribe] { "subscribe" }
                    }
                    " "
                    label for="topic" { (lang.t(Text::Topic)) } " "
                    input id="topic" name="topic" value=(params.topic.as_deref().unwrap_or("")) required;
                    " "
                    button type="submit" { (lang.t(Text::Ask)) }
                }
            }
            @match explained {
                None => {}
                Some(Ok(view)) => {
                    p class=(if view.allowed { "allowed" } else { "denied" }) data-allowed=(view.allowed) {
                        strong { (lang.t(if view.allowed { Text::Allowed } else { Text::Denied })) }
                    }
                    pre { (view.text) }
                }
                Some(Err(why)) => p class="bad" { (why) },
            }
        }
    }
}

/// Writes to the audit log that `who` opened dead letter `id`: its payload is usually a
/// reading of the device's citizen (a letter of no registered device names no citizen).
async fn audit_letter(
    api: &HttpApi,
    who: &str,
    id: i64,
    letter: Option<&kenko_ingest::deadletter::DeadLetter>,
) -> Result<(), ApiError> {
    let citizen = letter
        .and_then(|l| l.device.as_deref())
        .and_then(|d| api.directory.registry().lookup(d))
        .map(|d| d.entry.citizen.to_string());
    let Some(citizen) = citizen else {
        return Ok(());
    };
    let (registry, who) = (api.data_dir.join("registry.db"), who.to_owned());
    tokio::task::spawn_blocking(move || {
        crate::observations::audit_read_of(
            &registry,
            &who,
            &format!("dead letter {id}"),
            &[&citizen],
            1,
            crate::http::now_ms(),
        )
    })
    .await
    .map_err(crate::http::internal)?
}

/// One dead letter in full: where it came from, why, and its payload (as text when it is
/// UTF-8, else in hex), so an operator can tell what to fix before replaying it.
fn letter_section(
    lang: Lang,
    id: i64,
    letter: Option<&kenko_ingest::deadletter::DeadLetter>,
    when: &impl Fn(&str) -> String,
) -> Markup {
    html! {
        section id="letter" aria-labelledby="letter-h" {
            h2 id="letter-h" { (lang.t(Text::DeadLetter)) " " (id) }
            @match letter {
                None => p { (lang.t(Text::NoSuchLetter)) },
                Some(l) => {
                    dl class="letter" {
                        dt { (lang.t(Text::When)) } dd { (when(&crate::http::rfc3339(l.received_ms))) }
                        dt { (lang.t(Text::ClientId)) } dd { (l.client_id) }
                        dt { (lang.t(Text::Topic)) } dd { code { (l.topic) } }
                        dt { (lang.t(Text::Reason)) } dd { code { (l.reason_code) } " " (l.reason) }
                        dt { (lang.t(Text::Payload)) " (" (l.payload.len()) " B)" } dd { pre data-payload { (payload_text(&l.payload)) } }
                    }
                }
            }
        }
    }
}

/// A payload for people: the text if it is UTF-8, else hex, cut at about 4 KiB (text on a
/// character's boundary).
fn payload_text(payload: &[u8]) -> String {
    const SHOWN: usize = 4096;
    let mut text = match std::str::from_utf8(payload) {
        Ok(t) => {
            let mut end = t.len().min(SHOWN);
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t[..end].to_owned()
        }
        Err(_) => payload[..payload.len().min(SHOWN)]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
    };
    if payload.len() > SHOWN {
        text.push_str(" …");
    }
    text
}

/// Bytes as MiB with one decimal.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_show_as_text_or_hex_and_long_ones_are_cut() {
        assert_eq!(payload_text(b"{oops"), "{oops");
        assert_eq!(payload_text(&[0xff, 0x00, 0x10]), "ff 00 10");
        let long = payload_text(&vec![b'a'; 5000]);
        assert!(long.ends_with(" …") && long.len() == 4096 + " …".len());
        // Text cut inside a character stays text.
        let mut kana = "a".to_owned();
        kana.push_str(&"あ".repeat(2000));
        let cut = payload_text(kana.as_bytes());
        assert!(cut.starts_with("aあ") && cut.ends_with("あ …"), "{cut}");
    }
}
