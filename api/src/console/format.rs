//! How the console words numbers, times and comparisons for people.

use jiff::tz::TimeZone;
use kenko_devices::Metric;

use super::i18n::{Change, Lang};

/// How a metric's values read to people: the unit, and the decimals worth showing.
pub(super) fn shown(metric: Metric, lang: Lang, value: f64) -> String {
    let (decimals, unit) = match (metric, lang) {
        (Metric::HeartRate | Metric::PulseRate, Lang::Ja) => (0, "拍/分"),
        (Metric::HeartRate | Metric::PulseRate, Lang::En) => (0, "bpm"),
        (Metric::SystolicBp | Metric::DiastolicBp, _) => (0, "mmHg"),
        (Metric::BodyWeight, _) => (1, "kg"),
        (Metric::Spo2 | Metric::BodyFat | Metric::SleepEfficiency, _) => (0, "%"),
        (Metric::BloodGlucose, _) => (0, "mg/dL"),
        (Metric::BodyTemperature, _) => (1, "°C"),
        (Metric::DailySteps | Metric::Steps, Lang::Ja) => (0, "歩"),
        (Metric::DailySteps | Metric::Steps, Lang::En) => (0, "steps"),
        (Metric::SleepAwakenings, Lang::Ja) => (0, "回"),
        (Metric::SleepAwakenings, Lang::En) => (0, "times"),
        (m, _) => (1, m.unit()),
    };
    format!("{} {unit}", grouped(value, decimals))
}

/// A number with `decimals` decimals and thousands separated by commas: 12,345.6.
fn grouped(value: f64, decimals: usize) -> String {
    let text = format!("{:.*}", decimals, value.abs());
    let (whole, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(w, f)| (w, Some(f)));
    let mut out = String::new();
    for (i, c) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(frac) = frac {
        out.push('.');
        out.push_str(frac);
    }
    if value < 0.0 && out.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.insert(0, '-');
    }
    out
}

/// The plain-words comparison of a panel's first metric.
pub(super) fn comparison(metric: Metric, lang: Lang, (recent, before): (f64, f64)) -> String {
    let show = |v: f64| shown(metric, lang, v);
    let (now_shown, diff_shown) = (show(recent), show((recent - before).abs()));
    // Differences that round to nothing, or under 2 % of the baseline, are "about the same".
    let same = show(0.0) == diff_shown || (recent - before).abs() < before.abs() * 0.02;
    let change = match (same, recent > before) {
        (true, _) => Change::Same,
        (false, true) => Change::Up(diff_shown),
        (false, false) => Change::Down(diff_shown),
    };
    let counted = matches!(metric, Metric::DailySteps | Metric::Steps);
    lang.compared(
        lang.metric(metric),
        &now_shown,
        &show(before),
        &change,
        counted,
    )
}

/// A time in the hub's zone, formatted with strftime directives.
pub(super) fn local(ms: i64, zone: &TimeZone, format: &str) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(zone.clone()).strftime(format).to_string())
        .unwrap_or_else(|_| ms.to_string())
}

/// `text` as one URL query value: unreserved characters as they are, every other byte as
/// %XX (a device id may hold `&`, `#` or `<`).
pub(super) fn url_value(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rise_reads_in_plain_words_in_both_languages() {
        let text = comparison(Metric::DailySteps, Lang::En, (7_200.0, 6_000.0));
        assert_eq!(
            text,
            "Daily steps: 7,200 steps on average over the last 7 days, 1,200 steps more than your 4-week average before them (6,000 steps)."
        );
        let ja = comparison(Metric::DailySteps, Lang::Ja, (7_200.0, 6_000.0));
        assert!(ja.contains("1,200 歩 多く"), "{ja}");
    }

    #[test]
    fn small_changes_read_as_about_the_same_and_falls_as_lower() {
        let same = comparison(Metric::HeartRate, Lang::En, (64.4, 64.0));
        assert!(same.contains("about the same"), "{same}");
        let lower = comparison(Metric::HeartRate, Lang::En, (61.0, 67.0));
        assert!(lower.contains("6 bpm lower"), "{lower}");
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(1_234_567.0, 0), "1,234,567");
        assert_eq!(grouped(999.0, 0), "999");
        assert_eq!(grouped(72.46, 1), "72.5");
        assert_eq!(grouped(-1_200.0, 0), "-1,200");
        assert_eq!(grouped(-0.01, 0), "0");
    }

    #[test]
    fn a_device_id_is_one_query_value() {
        assert_eq!(url_value("bed-001"), "bed-001");
        assert_eq!(url_value("<a&b#c>"), "%3Ca%26b%23c%3E");
        assert_eq!(url_value("体"), "%E4%BD%93");
    }
}
