//! A citizen's consents on their page: per purpose and grantee whether it is in force and
//! since when, with a button to withdraw it or grant it again, one to allow research use if
//! never asked, and a choice of the hub's care services to give care consent to (the
//! buttons post to `POST /console/consents`).

use kenko_ingest::consent::{Consent, Consents, Purpose};
use maud::{html, Markup};

use super::i18n::Text;
use super::{head, Viewer};

/// A consent the citizen gave or withdrew, per purpose and grantee.
pub(super) struct ConsentLine {
    purpose: Purpose,
    grantee: String,
    since_ms: i64,
    in_force: bool,
}

/// Per purpose and grantee, the latest record and whether consent is in force now.
pub(super) fn lines(
    records: Vec<Consent>,
    consents: &Consents,
    citizen: &str,
    now: i64,
) -> Vec<ConsentLine> {
    let mut lines: Vec<ConsentLine> = Vec::new();
    for record in records {
        let change = record.change;
        let line = ConsentLine {
            in_force: consents.permits_any(citizen, &change.grantee, change.purpose, now),
            purpose: change.purpose,
            grantee: change.grantee,
            since_ms: record.recorded_ms,
        };
        match lines
            .iter_mut()
            .find(|l| l.purpose == line.purpose && l.grantee == line.grantee)
        {
            Some(old) => *old = line,
            None => lines.push(line),
        }
    }
    lines
}

/// The consents section of the page.
pub(super) fn section(
    viewer: &Viewer,
    lines: &[ConsentLine],
    care_services: &[String],
    date: &impl Fn(i64) -> String,
) -> Markup {
    html! {
        section id="consents" aria-labelledby="consents-h" {
            h2 id="consents-h" { (viewer.lang.t(Text::Consents)) }
            (consent_table(viewer, lines, date))
            (care_grant(viewer, lines, care_services))
        }
    }
}

/// A form to give care consent to a care service the citizen has not given it to now.
fn care_grant(viewer: &Viewer, lines: &[ConsentLine], services: &[String]) -> Markup {
    let lang = viewer.lang;
    let open: Vec<&String> = services
        .iter()
        .filter(|s| {
            !lines
                .iter()
                .any(|l| l.purpose == Purpose::Care && &l.grantee == *s && l.in_force)
        })
        .collect();
    html! {
        @if !open.is_empty() {
            form method="post" action="/console/consents" class="grant-care" {
                input type="hidden" name="csrf_token" value=(viewer.csrf);
                input type="hidden" name="purpose" value="care";
                input type="hidden" name="change" value="grant";
                label for="grant-care" { (lang.t(Text::GrantCare)) } " "
                select id="grant-care" name="grantee" {
                    @for s in &open { option value=(s) { (s) } }
                }
                " "
                button type="submit" { (lang.t(Text::Grant)) }
            }
        }
    }
}

fn consent_table(viewer: &Viewer, lines: &[ConsentLine], date: &impl Fn(i64) -> String) -> Markup {
    let lang = viewer.lang;
    let research_asked = lines.iter().any(|l| l.purpose == Purpose::Research);
    html! {
        @if lines.is_empty() {
            p { (lang.t(Text::NoConsents)) }
        } @else {
            table class="consents" {
                (head(lang, &[Text::Purpose, Text::Grantee, Text::State, Text::Blank]))
                tbody {
                    @for l in lines {
                        tr data-purpose=(l.purpose.as_str()) data-grantee=(l.grantee) {
                            td { (lang.purpose(l.purpose.as_str())) }
                            td { (l.grantee) }
                            td { (lang.t(if l.in_force { Text::InForce } else { Text::Withdrawn })) " (" (date(l.since_ms)) ")" }
                            td { (consent_button(viewer, l.purpose, &l.grantee, !l.in_force)) }
                        }
                    }
                }
            }
        }
        @if !research_asked {
            (consent_button(viewer, Purpose::Research, kenko_ingest::consent::HUB, true))
        }
    }
}

/// A form of one button: grant (`grant`) or withdraw consent for a purpose and grantee.
fn consent_button(viewer: &Viewer, purpose: Purpose, grantee: &str, grant: bool) -> Markup {
    let lang = viewer.lang;
    let label = match (grant, purpose) {
        (false, _) => lang.t(Text::Withdraw),
        (true, Purpose::Research) => lang.t(Text::GrantResearch),
        (true, _) => lang.t(Text::GrantAgain),
    };
    html! {
        form method="post" action="/console/consents" class="inline" {
            input type="hidden" name="csrf_token" value=(viewer.csrf);
            input type="hidden" name="purpose" value=(purpose.as_str());
            input type="hidden" name="grantee" value=(grantee);
            input type="hidden" name="change" value=(if grant { "grant" } else { "revoke" });
            button type="submit" { (label) }
        }
    }
}
