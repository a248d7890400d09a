//! Participation: how many citizens take part, with each kind of consent, who joined and
//! who withdrew in a month, and how many care services follow citizens. Read from the
//! consent records as they stood at the month's end (a record entered later does not
//! change a past month).

use std::collections::BTreeSet;

use serde::Serialize;

use super::{Figure, Month};
use crate::consent::{Consent, Consents, Purpose, HUB};

/// The participation figures of one month.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participation {
    /// Citizens whose collection consent is in force at the month's end.
    pub enrolled: Figure,
    /// Of those, with care consent to some service in force.
    pub with_care: Figure,
    /// Of those, with research consent in force.
    pub with_research: Figure,
    /// Citizens whose first collection consent was recorded in the month.
    pub joined: Figure,
    /// Citizens who withdrew their collection consent in the month.
    pub withdrew: Figure,
    /// Care services that some citizen's care consent names at the month's end (shown only
    /// when the citizens with care consent may be).
    pub care_services: Figure,
}

/// One figure as a row of output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Row {
    pub kpi: &'static str,
    pub month: String,
    /// `None` when suppressed.
    pub value: Option<u64>,
    pub shown: String,
}

impl Participation {
    /// The figures of `month` from every consent record, under the k rule.
    pub fn of(records: &[Consent], month: &Month, k: u64) -> Participation {
        let until: Vec<Consent> = records
            .iter()
            .filter(|r| r.recorded_ms < month.end_ms)
            .cloned()
            .collect();
        let citizens: BTreeSet<&str> = until.iter().map(|r| r.change.citizen.as_str()).collect();
        let consents = Consents::new(until.clone());
        let at = month.end_ms - 1;
        let mut counts = Counts::default();
        let mut services = BTreeSet::new();
        for citizen in citizens {
            if !consents.permits_any(citizen, HUB, Purpose::Collect, at) {
                continue;
            }
            counts.enrolled += 1;
            let cared_for: Vec<&str> = consents
                .grantees(citizen, Purpose::Care)
                .into_iter()
                .filter(|g| consents.permits_any(citizen, g, Purpose::Care, at))
                .collect();
            if !cared_for.is_empty() {
                counts.with_care += 1;
                services.extend(cared_for.into_iter().map(str::to_owned));
            }
            if consents.permits_any(citizen, HUB, Purpose::Research, at) {
                counts.with_research += 1;
            }
        }
        let collect = |granted: bool| {
            until.iter().filter(move |r| {
                r.change.purpose == Purpose::Collect
                    && r.change.grantee == HUB
                    && r.change.granted == granted
            })
        };
        let mut first_grant = std::collections::HashMap::new();
        for r in collect(true) {
            first_grant
                .entry(r.change.citizen.as_str())
                .or_insert(r.recorded_ms);
        }
        counts.joined = first_grant
            .values()
            .filter(|&&at| month.contains(at))
            .count() as u64;
        let withdrew: BTreeSet<&str> = collect(false)
            .filter(|r| month.contains(r.recorded_ms))
            .map(|r| r.change.citizen.as_str())
            .collect();
        counts.withdrew = withdrew.len() as u64;
        let with_care = Figure::of(counts.with_care, k);
        Participation {
            enrolled: Figure::of(counts.enrolled, k),
            with_care,
            with_research: Figure::of(counts.with_research, k),
            joined: Figure::of(counts.joined, k),
            withdrew: Figure::of(counts.withdrew, k),
            care_services: match with_care {
                Figure::Count(_) => Figure::Count(services.len() as u64),
                suppressed => suppressed,
            },
        }
    }

    /// The figures as rows, in a fixed order.
    pub fn rows(&self, month: &Month) -> Vec<Row> {
        [
            ("enrolled_citizens", self.enrolled),
            ("citizens_with_care_consent", self.with_care),
            ("citizens_with_research_consent", self.with_research),
            ("citizens_joined", self.joined),
            ("citizens_withdrawn", self.withdrew),
            ("care_services_following", self.care_services),
        ]
        .into_iter()
        .map(|(kpi, figure)| Row {
            kpi,
            month: month.label.clone(),
            value: figure.value(),
            shown: figure.to_string(),
        })
        .collect()
    }
}

#[derive(Default)]
struct Counts {
    enrolled: u64,
    with_care: u64,
    with_research: u64,
    joined: u64,
    withdrew: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consent::ConsentChange;

    fn record(
        id: i64,
        at_ms: i64,
        citizen: &str,
        purpose: Purpose,
        grantee: &str,
        granted: bool,
    ) -> Consent {
        Consent {
            id,
            recorded_ms: at_ms,
            change: ConsentChange {
                citizen: citizen.into(),
                grantee: grantee.into(),
                purpose,
                data_types: Vec::new(),
                valid_from_ms: None,
                valid_until_ms: None,
                source: "test".into(),
                granted,
                erase: false,
            },
        }
    }

    #[test]
    fn the_month_end_decides_and_small_groups_are_suppressed() {
        let month = Month {
            label: "m".into(),
            start_ms: 1_000,
            end_ms: 2_000,
        };
        let mut records = Vec::new();
        let mut id = 0;
        let mut add = |at, citizen: &str, purpose, grantee: &str, granted| {
            id += 1;
            records.push(record(id, at, citizen, purpose, grantee, granted));
        };
        // Six citizens before the month, two who join in it, one who withdraws in it.
        for n in 0..6 {
            add(500, &format!("c-{n}"), Purpose::Collect, HUB, true);
        }
        for n in 6..8 {
            add(1_500, &format!("c-{n}"), Purpose::Collect, HUB, true);
        }
        add(1_600, "c-0", Purpose::Collect, HUB, false);
        // Five with care consent to two services; one of them withdraws care after the month.
        for n in 1..6 {
            let service = if n < 3 { "st-luke" } else { "aizu-care" };
            add(600, &format!("c-{n}"), Purpose::Care, service, true);
        }
        add(2_500, "c-1", Purpose::Care, "st-luke", false);
        // Research: two (suppressed).
        add(700, "c-1", Purpose::Research, HUB, true);
        add(700, "c-2", Purpose::Research, HUB, true);
        // A citizen who joins after the month is not counted in it.
        add(2_100, "c-9", Purpose::Collect, HUB, true);

        let p = Participation::of(&records, &month, 5);
        assert_eq!(
            p.enrolled,
            Figure::Count(7),
            "8 joined by the end, 1 withdrew"
        );
        assert_eq!(p.with_care, Figure::Count(5));
        assert_eq!(p.care_services, Figure::Count(2));
        assert_eq!(p.with_research, Figure::Suppressed { k: 5 });
        assert_eq!(p.joined, Figure::Suppressed { k: 5 });
        assert_eq!(p.withdrew, Figure::Suppressed { k: 5 });
        let p = Participation::of(&records, &month, 2);
        assert_eq!(
            (p.joined, p.withdrew, p.with_research),
            (
                Figure::Count(2),
                Figure::Suppressed { k: 2 },
                Figure::Count(2)
            )
        );
        let rows = p.rows(&month);
        assert_eq!(rows[4].shown, "fewer than 2");
        assert_eq!(rows[4].value, None);
    }
}
