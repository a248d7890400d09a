//! The consent rule ([`Consents::permits`]) checked against a reference model over random
//! grants, withdrawals, erasures, validity windows, data-type lists, record times and late
//! readings, with snapshots built in random steps (so that records are split between a
//! snapshot's older and newer parts, and folded).

use proptest::prelude::*;

use super::*;

const CITIZENS: [&str; 2] = ["c0", "c1"];
const GRANTEES: [&str; 2] = [HUB, "st-luke"];
const PURPOSES: [Purpose; 3] = [Purpose::Collect, Purpose::Care, Purpose::Research];
const TYPES: [&str; 3] = ["heart_rate", "spo2", "steps"];

fn time() -> impl Strategy<Value = i64> {
    0i64..100
}

fn record() -> impl Strategy<Value = (ConsentChange, i64)> {
    (
        (0..CITIZENS.len(), 0..GRANTEES.len(), 0..PURPOSES.len()),
        proptest::sample::subsequence(TYPES.to_vec(), 0..=2),
        (proptest::option::of(time()), proptest::option::of(time())),
        (any::<bool>(), prop::bool::weighted(0.1)),
        time(),
    )
        .prop_map(
            |((c, g, p), types, (from, until), (granted, erase), recorded_ms)| {
                let change = ConsentChange {
                    citizen: CITIZENS[c].into(),
                    grantee: GRANTEES[g].into(),
                    purpose: PURPOSES[p],
                    data_types: types.into_iter().map(str::to_owned).collect(),
                    valid_from_ms: from,
                    valid_until_ms: until,
                    source: "proptest".into(),
                    // An erasure request is a withdrawal.
                    granted: granted && !erase,
                    erase,
                };
                (change, recorded_ms)
            },
        )
}

/// A question: may grantee use citizen's type, observed at event_ms, for purpose at at_ms?
#[derive(Debug, Clone)]
struct Ask {
    citizen: &'static str,
    grantee: &'static str,
    purpose: Purpose,
    data_type: &'static str,
    event_ms: i64,
    at_ms: i64,
}

fn ask() -> impl Strategy<Value = Ask> {
    (
        (0..CITIZENS.len(), 0..GRANTEES.len(), 0..PURPOSES.len()),
        // One type no record ever names: only an "all types" record speaks for it.
        proptest::sample::select(vec!["heart_rate", "spo2", "steps", "sleep_stage"]),
        // Late readings: an event time often well before the moment of the decision.
        (time(), time()),
    )
        .prop_map(|((c, g, p), data_type, (event_ms, at_ms))| Ask {
            citizen: CITIZENS[c],
            grantee: GRANTEES[g],
            purpose: PURPOSES[p],
            data_type,
            event_ms,
            at_ms,
        })
}

/// The reference: replay the records in the order they were stored, keeping for the one
/// (citizen, grantee, purpose, type) asked about the last record recorded by `at_ms` that
/// speaks for the type; it must be a grant whose window holds `event_ms`.
fn model(records: &[Consent], q: &Ask) -> bool {
    let mut state: Option<&ConsentChange> = None;
    for r in records {
        let c = &r.change;
        let speaks = c.data_types.is_empty() || c.data_types.iter().any(|t| t == q.data_type);
        if c.citizen == q.citizen
            && c.grantee == q.grantee
            && c.purpose == q.purpose
            && speaks
            && r.recorded_ms <= q.at_ms
        {
            state = Some(c);
        }
    }
    state.is_some_and(|c| {
        c.granted
            && c.valid_from_ms.is_none_or(|f| f <= q.event_ms)
            && c.valid_until_ms.is_none_or(|u| q.event_ms < u)
    })
}

fn model_erased_after(records: &[Consent], citizen: &str, received_ms: i64) -> bool {
    records
        .iter()
        .any(|r| r.change.erase && r.change.citizen == citizen && r.recorded_ms >= received_ms)
}

/// Builds a snapshot by adding `records` in steps of the sizes in `steps`, folding the newer
/// part into the older one past `recent_max` records; a step may repeat records already in.
fn stepwise(records: &[Consent], steps: &[usize], recent_max: usize) -> Consents {
    let mut consents = Consents::default();
    let mut at = 0;
    for &step in steps.iter().cycle().take(records.len() + 1) {
        let end = (at + step).min(records.len());
        // Overlap with what is in already: a second reader may load the same records.
        let start = at.saturating_sub(1);
        consents = consents.with_folding(records[start..end].to_vec(), recent_max);
        at = end;
        if at == records.len() {
            break;
        }
    }
    consents
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10_000))]

    #[test]
    fn permits_follows_the_reference_model(
        changes in proptest::collection::vec(record(), 0..24),
        asks in proptest::collection::vec(ask(), 1..24),
        steps in proptest::collection::vec(1usize..6, 1..4),
        recent_max in 0usize..6,
    ) {
        let records: Vec<Consent> = changes
            .into_iter()
            .enumerate()
            .map(|(i, (change, recorded_ms))| Consent { id: i as i64 + 1, recorded_ms, change })
            .collect();
        let whole = Consents::new(records.clone());
        let built = stepwise(&records, &steps, recent_max);
        prop_assert_eq!(built.len(), records.len());
        prop_assert_eq!(built.last_id(), records.len() as i64);
        for q in &asks {
            let expected = model(&records, q);
            for (how, consents) in [("whole", &whole), ("stepwise", &built)] {
                let got = consents.permits(
                    q.citizen, q.grantee, q.purpose, q.data_type, q.event_ms, q.at_ms,
                );
                prop_assert_eq!(got, expected, "{} snapshot, {:?}", how, q);
                prop_assert_eq!(
                    consents.erased_after(q.citizen, q.at_ms),
                    model_erased_after(&records, q.citizen, q.at_ms),
                    "{} snapshot, erasure of {} after {}", how, q.citizen, q.at_ms
                );
            }
            // "Some type" is "one of the named types, or one no record names".
            let any = TYPES.iter().chain(["sleep_stage"].iter()).any(|t| {
                model(&records, &Ask { data_type: t, event_ms: q.at_ms, ..q.clone() })
            });
            prop_assert_eq!(built.permits_any(q.citizen, q.grantee, q.purpose, q.at_ms), any);
        }
    }
}
