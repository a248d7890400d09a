//! Coded measures: an array whose items each carry a code that selects the metric, a
//! value, and perhaps a power-of-ten exponent beside it (7150 with -2 is 71.50).

use kenko_config::UnknownCodes;
use kenko_devices::profile::{Field, Measures};
use serde_json::{Number, Value};

use super::{find, At, Reader};
use crate::decode::Rejection;
use crate::observation::Observation;

/// The largest power of ten a measure's exponent may name, either way.
const MAX_EXPONENT: i64 = 30;

impl Reader<'_, '_> {
    /// The measures of the array at `measures.path` in `object`, at `at`.
    pub(super) fn measures(
        &self,
        measures: &Measures,
        object: &Value,
        at: At<'_>,
        out: &mut Vec<Observation>,
    ) -> Result<(), Rejection> {
        let Some(items) = find(object, &measures.path) else {
            return Ok(());
        };
        let Some(items) = items.as_array() else {
            return Err(self.not(&measures.path, "an array of measure objects"));
        };
        for (n, item) in items.iter().enumerate() {
            let Some(code) = find(item, &measures.code).and_then(code_text) else {
                return Err(self.not(
                    &format!("{} of measure {}", measures.code, n + 1),
                    "a code (a whole number or text)",
                ));
            };
            let Some(field) = measures.code(&code) else {
                match measures.unknown {
                    UnknownCodes::Ignore => continue,
                    UnknownCodes::Reject => return Err(self.unknown_code(n, measures)),
                }
            };
            let Some(value) = find(item, &measures.value) else {
                continue;
            };
            let value = match &measures.exponent {
                Some(key) => self.scaled(value, find(item, key), key, field)?,
                None => value.clone(),
            };
            self.push(field, &value, at, out)?;
        }
        Ok(())
    }

    /// A numeric `mantissa` times ten to the power in `exponent` (absent or `null`: zero);
    /// any other value as it is (a flag, a sleep stage name, `null`), for the reading's own
    /// checks.
    fn scaled(
        &self,
        mantissa: &Value,
        exponent: Option<&Value>,
        key: &str,
        field: &Field,
    ) -> Result<Value, Rejection> {
        let Some(mantissa) = mantissa.as_f64() else {
            return Ok(mantissa.clone());
        };
        let power = match exponent.filter(|e| !e.is_null()) {
            None => 0,
            Some(e) => e
                .as_i64()
                .filter(|p| (-MAX_EXPONENT..=MAX_EXPONENT).contains(p))
                .ok_or_else(|| {
                    self.not(
                        key,
                        &format!("a whole power of ten from -{MAX_EXPONENT} to {MAX_EXPONENT}"),
                    )
                })?,
        };
        // Up to 10^22 a power of ten is exact, and dividing by it rounds once: 7150 and -2
        // give 71.5 exactly.
        let ten = 10f64.powi(i32::try_from(power.unsigned_abs()).unwrap_or(0));
        let value = if power < 0 {
            mantissa / ten
        } else {
            mantissa * ten
        };
        Number::from_f64(value)
            .map(Value::Number)
            .ok_or_else(|| self.not(&field.key, "a finite number once scaled by its exponent"))
    }

    /// Measure `n` (from 0) has a code the profile does not list. The code is not repeated:
    /// it is the payload's, and reasons never carry payload values.
    fn unknown_code(&self, n: usize, measures: &Measures) -> Rejection {
        let mut known: Vec<&str> = measures.codes.iter().map(|(c, _)| &**c).collect();
        known.sort_unstable();
        Rejection::malformed(format!(
            "payload is not {}: measure {} of {} has a {} that is not one of the profile's codes ({}); add it to [profiles.codes], or set measures.unknown = \"ignore\" (`kenko deadletter show` has the payload)",
            self.profile().name,
            n + 1,
            measures.path,
            measures.code,
            known.join(", ")
        ))
    }
}

/// A code as the `codes` table spells it: text as it is, a number as a whole number
/// (`1.0` is code `1`); `None` for anything else.
fn code_text(code: &Value) -> Option<String> {
    match code {
        Value::String(text) => Some(text.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => Some(i.to_string()),
            (None, Some(u), _) => Some(u.to_string()),
            (None, None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                Some(format!("{f:.0}"))
            }
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_whole_numbers_or_text() {
        let code = |json: &str| code_text(&serde_json::from_str(json).expect("json"));
        assert_eq!(code("1"), Some("1".into()));
        assert_eq!(code("1.0"), Some("1".into()));
        assert_eq!(code("1e0"), Some("1".into()));
        assert_eq!(code("-3"), Some("-3".into()));
        assert_eq!(code("\"bw\""), Some("bw".into()));
        assert_eq!(code("1.5"), None);
        assert_eq!(code("null"), None);
        assert_eq!(code("true"), None);
    }
}
