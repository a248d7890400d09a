//! Times of day (`time_format = "time_of_day"`) on the day the profile's `date` names, in
//! the device's zone. A series runs forward: a time earlier than the one before it is on
//! the next day when it steps back more than twelve hours (the series crossed midnight);
//! within the hour a clock set back repeats, it is the later of the two; any other step
//! back is refused as out of order.

use std::cell::Cell;

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use kenko_devices::profile::Profile;
use serde_json::Value;

use super::find;
use crate::decode::Rejection;

/// A step back of more than this is the series crossing midnight.
const MIDNIGHT_STEP_S: i64 = 12 * 3600;

/// The day of a message's times of day and where its series has got to.
pub(super) struct Clock {
    day: Option<Date>,
    zone: TimeZone,
    /// The last time of day read, its instant (epoch ms), and the midnights crossed.
    last: Cell<Option<(Time, i64, i64)>>,
}

impl Clock {
    /// The day `profile.date` names in `document` (none when the profile has no `date`).
    pub(super) fn new(
        profile: &Profile,
        document: &Value,
        zone: &TimeZone,
    ) -> Result<Clock, Rejection> {
        let day = match profile.date.as_deref() {
            None => None,
            Some(key) => match find(document, key) {
                None => None,
                Some(value) => Some(
                    value
                        .as_str()
                        .filter(|t| t.len() == 10)
                        .and_then(|t| t.parse::<Date>().ok())
                        .ok_or_else(|| {
                            Rejection::malformed(format!(
                                "payload is not {}: {key} is not a date such as 2026-11-25",
                                profile.name
                            ))
                        })?,
                ),
            },
        };
        Ok(Clock {
            day,
            zone: zone.clone(),
            last: Cell::new(None),
        })
    }

    /// A clock of the same day in `zone`, its series not yet begun: another device's.
    pub(super) fn for_zone(&self, zone: TimeZone) -> Clock {
        Clock {
            day: self.day,
            zone,
            last: Cell::new(None),
        }
    }

    /// The instant (epoch ms) of the time of day `value`, in the series read so far.
    pub(super) fn read(&self, profile: &Profile, value: &Value) -> Result<i64, Rejection> {
        let refuse = |why: &str| {
            Rejection::malformed(format!(
                "payload is not {}: {} {why}",
                profile.name, profile.time
            ))
        };
        let time = value
            .as_str()
            .filter(|t| {
                t.bytes()
                    .all(|b| b.is_ascii_digit() || b == b':' || b == b'.')
            })
            .and_then(|t| t.parse::<Time>().ok())
            .ok_or_else(|| refuse("is not a time of day such as 23:59:00"))?;
        let Some(day) = self.day else {
            return Err(Rejection::malformed(format!(
                "field {} (the day of the times of day) is missing",
                profile.date.as_deref().unwrap_or("date")
            )));
        };
        let out_of_range = || refuse("is out of range");
        let (crossed, at) = match self.last.get() {
            None => (
                0,
                self.instant(day, 0, time, None).ok_or_else(out_of_range)?,
            ),
            Some((last, last_ms, crossed)) => {
                let same_day = self.instant(day, crossed, time, Some(last_ms));
                match same_day {
                    Some(at) => (crossed, at),
                    None if time.duration_until(last).as_secs() > MIDNIGHT_STEP_S => (
                        crossed + 1,
                        self.instant(day, crossed + 1, time, None)
                            .ok_or_else(out_of_range)?,
                    ),
                    None => return Err(refuse("steps back: its times of day are out of order")),
                }
            }
        };
        self.last.set(Some((time, at, crossed)));
        Ok(at)
    }

    /// `time` on `day` plus `crossed` days in the zone, as epoch ms: the earlier of two
    /// instants a repeated hour gives, or the later if only it is at or after `not_before`;
    /// `None` if neither is (or the date is out of range).
    fn instant(&self, day: Date, crossed: i64, time: Time, not_before: Option<i64>) -> Option<i64> {
        let date = day
            .checked_add(jiff::Span::new().try_days(crossed).ok()?)
            .ok()?;
        let ambiguous = self.zone.to_ambiguous_zoned(date.to_datetime(time));
        let earlier = ambiguous
            .clone()
            .earlier()
            .ok()?
            .timestamp()
            .as_millisecond();
        let later = ambiguous.later().ok()?.timestamp().as_millisecond();
        match not_before {
            None => Some(earlier),
            Some(floor) => [earlier, later].into_iter().find(|at| *at >= floor),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kenko_devices::profile::Profiles;

    fn profile() -> Profile {
        let config = kenko_config::Config::from_toml(
            r#"
[[profiles]]
name = "intraday"
kind = "wearable"
time = "time"
time_format = "time_of_day"
date = "/date"
samples = "/dataset"
[profiles.fields]
value = { metric = "heart_rate" }
"#,
            std::path::Path::new("kenko.toml"),
        )
        .expect("config");
        let all = kenko_config::profile::all_profiles(&config.profiles).expect("profiles");
        let profiles = Profiles::compile(&all).expect("compiled");
        (**profiles.get("intraday").expect("profile")).clone()
    }

    /// The instants of `times` on `date` in `zone`, as RFC 3339, or the refusal.
    fn series(zone: &str, date: &str, times: &[&str]) -> Result<Vec<String>, String> {
        let profile = profile();
        let zone = TimeZone::get(zone).expect("zone");
        let document = serde_json::json!({ "date": date });
        let clock = Clock::new(&profile, &document, &zone).map_err(|r| r.message)?;
        times
            .iter()
            .map(|t| {
                clock
                    .read(&profile, &Value::from(*t))
                    .map(|ms| {
                        jiff::Timestamp::from_millisecond(ms)
                            .expect("ms")
                            .to_string()
                    })
                    .map_err(|r| r.message)
            })
            .collect()
    }

    #[test]
    fn a_series_crosses_midnight_onto_the_next_day() {
        let got = series(
            "Asia/Tokyo",
            "2026-11-24",
            &["23:58:00", "23:59", "00:00:00", "00:01"],
        );
        assert_eq!(
            got,
            Ok(vec![
                "2026-11-24T14:58:00Z".into(),
                "2026-11-24T14:59:00Z".into(),
                "2026-11-24T15:00:00Z".into(),
                "2026-11-24T15:01:00Z".into(),
            ])
        );
    }

    #[test]
    fn the_repeated_hour_of_a_clock_set_back_is_the_later_one() {
        // New York sets its clocks back at 02:00 EDT on 2026-11-01: 01:00–01:59 happen
        // twice, first at -04:00, then at -05:00.
        let got = series(
            "America/New_York",
            "2026-11-01",
            &["01:50:00", "01:05:00", "03:00:00"],
        );
        assert_eq!(
            got,
            Ok(vec![
                "2026-11-01T05:50:00Z".into(),
                "2026-11-01T06:05:00Z".into(),
                "2026-11-01T08:00:00Z".into(),
            ])
        );
    }

    #[test]
    fn a_small_step_back_is_out_of_order_and_a_full_date_is_no_time_of_day() {
        let err = series("Asia/Tokyo", "2026-11-24", &["10:00:00", "09:00:00"]).expect_err("back");
        assert!(err.contains("out of order"), "{err}");
        for not_a_time in ["2026-11-30T10:00:00", "10:00:00-05:00", "25:00:00"] {
            let err = series("Asia/Tokyo", "2026-11-24", &[not_a_time]).expect_err(not_a_time);
            assert!(err.contains("is not a time of day"), "{not_a_time}: {err}");
            assert!(!err.contains(not_a_time), "no payload value in {err}");
        }
        let err = series("Asia/Tokyo", "2026-11-24T00:00:00", &["10:00"]).expect_err("date");
        assert!(err.contains("is not a date"), "{err}");
        let err = series("Asia/Tokyo", "9999-12-31", &["23:59", "00:00"]).expect_err("range");
        assert!(err.ends_with("time is out of range"), "{err}");
    }
}
