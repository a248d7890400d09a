//! The operators' ACL rule file: ordered rules, first match wins, default deny.
//!
//! ```toml
//! [[rule]]
//! effect = "allow"            # allow | deny
//! role = "device"             # or principal = "bed-001"; either may be a list; neither = everyone
//! action = "publish"          # publish | subscribe | all
//! topic = "devices/%c/telemetry"
//! max_qos = 1                 # optional: highest QoS allowed
//! retain = false              # optional: whether retained publishes are allowed
//! consent = "care"            # optional: deliveries of citizens/{citizen}/observations/{metric}
//!                             # need the citizen's consent (care | research) for the metric
//! ```
//!
//! Topic patterns use MQTT wildcards (`+` one level, `#` the rest) and placeholders that fill a
//! whole level: `%c` the client id, `%u` the username, `{device}` and `{citizen}` the device and
//! citizen bound to the principal in the registry. This module parses and checks the file; the
//! broker evaluates it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ConfigError;

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
}

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Publish,
    Subscribe,
    All,
}

/// One level of a topic pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Level {
    Literal(String),
    /// `+`
    Single,
    /// `#`, always last.
    Rest,
    /// `%c`
    ClientId,
    /// `%u`
    Username,
    /// `{device}`
    Device,
    /// `{citizen}`
    Citizen,
}

/// The consent a rule requires of the citizen whose data a delivery carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentNeed {
    /// The citizen granted `care` to the subscribing principal, for the metric.
    Care,
    /// The citizen granted `research`.
    Research,
}

/// A checked rule with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub effect: Effect,
    /// Principal ids the rule applies to; empty with empty `roles` means everyone.
    pub principals: Vec<String>,
    pub roles: Vec<String>,
    pub action: Action,
    pub pattern: Vec<Level>,
    /// The pattern as written.
    pub topic: String,
    pub max_qos: Option<u8>,
    pub retain: Option<bool>,
    /// Deliveries on `citizens/{citizen}/observations/{metric}` need this consent of the
    /// citizen, for the metric, to the principal, checked against the consents in force.
    pub consent: Option<ConsentNeed>,
    pub source: Source,
}

/// File, line and column of a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    effect: Effect,
    #[serde(default)]
    principal: Option<OneOrMany>,
    #[serde(default)]
    role: Option<OneOrMany>,
    action: Action,
    topic: toml::Spanned<String>,
    #[serde(default)]
    max_qos: Option<u8>,
    #[serde(default)]
    retain: Option<bool>,
    #[serde(default)]
    consent: Option<ConsentNeed>,
}

/// Where the built-in rules say they come from.
pub const DEFAULT_RULES_NAME: &str = "<built-in config/acl.default.toml>";

/// kenko's built-in rules (`config/acl.default.toml`), used when no rule file is configured.
pub fn default_rules() -> Result<Vec<Rule>, ConfigError> {
    parse_rules(
        include_str!("../acl.default.toml"),
        Path::new(DEFAULT_RULES_NAME),
    )
}

/// Reads and checks an ACL rule file.
pub fn read_rules(path: &Path) -> Result<Vec<Rule>, ConfigError> {
    parse_rules(&read(path)?, path)
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// An error at byte `offset` of `text`, as file:line:column.
fn located(text: &str, path: &Path, offset: usize, message: String) -> ConfigError {
    let (line, column) = crate::line_column(text, offset);
    ConfigError::Parse {
        path: path.to_owned(),
        line,
        column,
        message,
    }
}

/// Deserializes TOML, locating a syntax or type error in the file.
fn from_toml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        located(
            text,
            path,
            e.span().map_or(0, |s| s.start),
            e.message().trim_end().to_owned(),
        )
    })
}

/// Parses and checks ACL rules; `path` names the file in errors and rule sources.
pub fn parse_rules(text: &str, path: &Path) -> Result<Vec<Rule>, ConfigError> {
    let at = |offset: usize, message: String| located(text, path, offset, message);
    let file: File = from_toml(text, path)?;
    file.rule
        .into_iter()
        .map(|spanned| {
            let start = spanned.span().start;
            let raw = spanned.into_inner();
            let topic_at = raw.topic.span().start;
            let topic = raw.topic.into_inner();
            let pattern = parse_pattern(&topic).map_err(|why| at(topic_at, why))?;
            if let Some(qos) = raw.max_qos {
                if qos > 2 {
                    return Err(at(start, format!("max_qos is {qos}; it must be 0, 1 or 2")));
                }
            }
            let (line, column) = crate::line_column(text, start);
            Ok(Rule {
                effect: raw.effect,
                principals: raw.principal.map(OneOrMany::into_vec).unwrap_or_default(),
                roles: raw.role.map(OneOrMany::into_vec).unwrap_or_default(),
                action: raw.action,
                pattern,
                topic,
                max_qos: raw.max_qos,
                retain: raw.retain,
                consent: raw.consent,
                source: Source {
                    file: path.to_owned(),
                    line,
                    column,
                },
            })
        })
        .collect()
}

/// One operator-written expectation: `kenko acl test` checks it against the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    pub principal: String,
    /// `true` for a publish, `false` for a subscribe.
    pub publish: bool,
    pub topic: String,
    pub qos: u8,
    pub retain: bool,
    pub expect: Effect,
    pub source: Source,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    #[serde(default)]
    case: Vec<toml::Spanned<RawCase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    principal: String,
    #[serde(default)]
    publish: Option<String>,
    #[serde(default)]
    subscribe: Option<String>,
    #[serde(default)]
    qos: u8,
    #[serde(default)]
    retain: bool,
    expect: Effect,
}

/// Reads ACL expectation cases:
///
/// ```toml
/// [[case]]
/// principal = "bed-001"
/// publish = "devices/bed-001/telemetry"   # or subscribe = "filter"
/// qos = 1                                 # optional, default 0
/// retain = false                          # optional
/// expect = "allow"                        # or "deny"
/// ```
pub fn read_cases(path: &Path) -> Result<Vec<Case>, ConfigError> {
    parse_cases(&read(path)?, path)
}

/// Parses ACL expectation cases; `path` names the file in errors and case sources.
pub fn parse_cases(text: &str, path: &Path) -> Result<Vec<Case>, ConfigError> {
    let at = |offset: usize, message: String| located(text, path, offset, message);
    let file: CaseFile = from_toml(text, path)?;
    file.case
        .into_iter()
        .map(|spanned| {
            let start = spanned.span().start;
            let raw = spanned.into_inner();
            let (publish, topic) =
                match (raw.publish, raw.subscribe) {
                    (Some(t), None) => (true, t),
                    (None, Some(t)) => (false, t),
                    _ => return Err(at(
                        start,
                        "a case needs exactly one of publish = \"TOPIC\" or subscribe = \"FILTER\""
                            .into(),
                    )),
                };
            if raw.qos > 2 {
                return Err(at(
                    start,
                    format!("qos is {}; it must be 0, 1 or 2", raw.qos),
                ));
            }
            let (line, column) = crate::line_column(text, start);
            Ok(Case {
                principal: raw.principal,
                publish,
                topic,
                qos: raw.qos,
                retain: raw.retain,
                expect: raw.expect,
                source: Source {
                    file: path.to_owned(),
                    line,
                    column,
                },
            })
        })
        .collect()
}

/// Parses a topic pattern into levels, refusing what MQTT would refuse as a filter.
pub fn parse_pattern(topic: &str) -> Result<Vec<Level>, String> {
    if topic.is_empty() {
        return Err("topic pattern is empty".into());
    }
    if topic.contains('\0') {
        return Err("topic pattern contains a NUL character".into());
    }
    let parts: Vec<&str> = topic.split('/').collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| match *part {
            "#" if i == last => Ok(Level::Rest),
            "#" => Err(format!("in {topic:?}, '#' must be the last level")),
            "+" => Ok(Level::Single),
            "%c" => Ok(Level::ClientId),
            "%u" => Ok(Level::Username),
            "{device}" => Ok(Level::Device),
            "{citizen}" => Ok(Level::Citizen),
            p if p.contains(['#', '+']) => Err(format!(
                "in {topic:?}, level {p:?} mixes a wildcard with text; '+' and '#' must fill a whole level"
            )),
            p if p.contains("%c") || p.contains("%u") || p.contains('{') => Err(format!(
                "in {topic:?}, level {p:?} mixes a placeholder with text; %c, %u, {{device}} and {{citizen}} must fill a whole level"
            )),
            p => Ok(Level::Literal(p.to_owned())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Rule>, ConfigError> {
        parse_rules(text, Path::new("acl.toml"))
    }

    #[test]
    fn rules_parse_in_order_with_their_lines() {
        let rules = parse(
            r##"
[[rule]]
effect = "allow"
role = "device"
action = "publish"
topic = "devices/%c/telemetry"
max_qos = 1
retain = false

[[rule]]
effect = "deny"
principal = ["a", "b"]
action = "all"
topic = "#"
"##,
        )
        .expect("valid");
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].roles, vec!["device"]);
        assert_eq!(
            rules[0].pattern,
            vec![
                Level::Literal("devices".into()),
                Level::ClientId,
                Level::Literal("telemetry".into())
            ]
        );
        assert_eq!(rules[0].source.line, 2);
        assert_eq!(rules[1].principals, vec!["a", "b"]);
        assert_eq!(rules[1].pattern, vec![Level::Rest]);
        assert_eq!(rules[1].source.to_string(), "acl.toml:10:1");
    }

    #[test]
    fn the_built_in_rules_parse() {
        let rules = default_rules().expect("config/acl.default.toml parses");
        assert!(rules.iter().all(|r| r.effect == Effect::Allow));
        assert_eq!(rules[0].topic, "devices/%c/telemetry");
    }

    #[test]
    fn cases_parse_and_refuse_ambiguity() {
        let cases = parse_cases(
            "[[case]]\nprincipal = \"p\"\nsubscribe = \"a/#\"\nexpect = \"deny\"\n",
            Path::new("cases.toml"),
        )
        .expect("valid");
        assert_eq!(cases.len(), 1);
        assert!(!cases[0].publish);
        assert_eq!(cases[0].expect, Effect::Deny);
        assert_eq!(cases[0].source.to_string(), "cases.toml:1:1");
        let err = parse_cases(
            "[[case]]\nprincipal = \"p\"\nsubscribe = \"a\"\npublish = \"a\"\nexpect = \"deny\"\n",
            Path::new("cases.toml"),
        )
        .expect_err("both");
        assert!(err.to_string().contains("exactly one"), "{err}");
    }

    #[test]
    fn broken_rules_name_file_line_and_column() {
        let err = parse("[[rule]]\neffect = \"allow\"\naction = \"publish\"\ntopic = \"a/#/b\"\n")
            .expect_err("# in the middle");
        assert!(err.to_string().starts_with("acl.toml:4:9:"), "{err}");
        assert!(err.to_string().contains("last level"), "{err}");
        let err = parse("[[rule]]\neffect = \"maybe\"\naction = \"publish\"\ntopic = \"a\"\n")
            .expect_err("effect");
        assert!(err.to_string().starts_with("acl.toml:2:"), "{err}");
        let err =
            parse("[[rule]]\neffect = \"allow\"\naction = \"publish\"\ntopic = \"a\"\nqos = 1\n")
                .expect_err("unknown key");
        assert!(err.to_string().contains("qos"), "{err}");
        let err = parse(
            "[[rule]]\neffect = \"allow\"\naction = \"publish\"\ntopic = \"a\"\nmax_qos = 3\n",
        )
        .expect_err("qos 3");
        assert!(err.to_string().contains("max_qos"), "{err}");
    }

    #[test]
    fn patterns_refuse_partial_wildcards_and_placeholders() {
        for bad in ["", "a/b+", "a/#/b", "x#", "dev-%c", "c/{citizen}x", "a\0b"] {
            assert!(parse_pattern(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_pattern("+/+").expect("ok"),
            vec![Level::Single, Level::Single]
        );
        assert_eq!(
            parse_pattern("$SYS/#").expect("ok"),
            vec![Level::Literal("$SYS".into()), Level::Rest]
        );
    }
}
