//! Topic filters as MQTT defines them: parsing a subscription's filter (plain or
//! `$share/{group}/{filter}`) and matching a plain filter against a topic name.

/// A subscription's topic filter, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter<'a> {
    /// An ordinary filter such as `devices/+/errors`.
    Plain(&'a str),
    /// `$share/{group}/{filter}` (MQTT 5 4.8.2): each message matching `filter` goes to one
    /// member of `group`.
    Shared { group: &'a str, filter: &'a str },
}

impl<'a> Filter<'a> {
    /// The plain filter the topics are matched against (for a shared one, the part after its
    /// group).
    pub fn filter(&self) -> &'a str {
        match *self {
            Filter::Plain(filter) | Filter::Shared { filter, .. } => filter,
        }
    }

    /// The group of a shared subscription.
    pub fn group(&self) -> Option<&'a str> {
        match *self {
            Filter::Plain(_) => None,
            Filter::Shared { group, .. } => Some(group),
        }
    }
}

/// Why a topic filter is not one MQTT allows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("the topic filter is empty; name at least one level, such as `a` or `#`")]
    Empty,
    #[error("the topic filter contains a NUL character, which MQTT forbids in any string")]
    Nul,
    #[error("`#` must be a whole level of a topic filter, as in `a/#`, not part of {0:?}")]
    HashInLevel(String),
    #[error("`#` must be the last level of a topic filter, as in `a/#`; remove what follows it")]
    HashNotLast,
    #[error("`+` must be a whole level of a topic filter, as in `a/+/b`, not part of {0:?}")]
    PlusInLevel(String),
    #[error("a shared subscription is `$share/{{group}}/{{filter}}`; this one has no filter after its group")]
    SharedWithoutFilter,
    #[error(
        "the group of a shared subscription is empty; name it in `$share/{{group}}/{{filter}}`"
    )]
    EmptyGroup,
    #[error("the group {0:?} of a shared subscription contains a wildcard; a group is a name without `+` or `#`")]
    WildcardInGroup(String),
}

const SHARE_PREFIX: &str = "$share/";

/// Parses a SUBSCRIBE's (or UNSUBSCRIBE's) topic filter: a plain filter, or
/// `$share/{group}/{filter}` whose group is a non-empty name without `+`, `#` or `/`, and
/// whose filter is itself a valid plain filter.
pub fn parse_filter(raw: &str) -> Result<Filter<'_>, FilterError> {
    let Some(rest) = raw.strip_prefix(SHARE_PREFIX) else {
        check_plain(raw)?;
        return Ok(Filter::Plain(raw));
    };
    let (group, filter) = rest
        .split_once('/')
        .ok_or(FilterError::SharedWithoutFilter)?;
    check_group(group)?;
    if filter.is_empty() {
        return Err(FilterError::SharedWithoutFilter);
    }
    check_plain(filter)?;
    Ok(Filter::Shared { group, filter })
}

/// A plain filter: non-empty, no NUL (MQTT-1.5.4-2), `#` only as the whole last level
/// (MQTT-4.7.1-2), `+` only as a whole level (MQTT-4.7.1-3).
fn check_plain(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.contains('\0') {
        return Err(FilterError::Nul);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') {
            if level != "#" {
                return Err(FilterError::HashInLevel(level.to_owned()));
            }
            if levels.peek().is_some() {
                return Err(FilterError::HashNotLast);
            }
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::PlusInLevel(level.to_owned()));
        }
    }
    Ok(())
}

fn check_group(group: &str) -> Result<(), FilterError> {
    if group.is_empty() {
        return Err(FilterError::EmptyGroup);
    }
    if group.contains('\0') {
        return Err(FilterError::Nul);
    }
    if group.contains(['+', '#']) {
        return Err(FilterError::WildcardInGroup(group.to_owned()));
    }
    Ok(())
}

/// Whether the plain `filter` matches the topic name `topic`. `+` matches one level, `#` any
/// number of levels including none (`a/#` matches `a`), and a filter starting with a wildcard
/// matches no topic starting with `$` (MQTT-4.7.2-1), so that `#` does not take `$SYS/…`.
///
/// The filter is expected to be valid (see [`parse_filter`]); this is the reference the
/// router's [`Trie`](super::trie::Trie) and [`Retained`](super::retained::Retained) are
/// checked against.
pub fn matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut filter_levels = filter.split('/');
    let mut topic_levels = topic.split('/');
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some("#"), _) => return true,
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn plain_filters_follow_the_wildcard_rules() {
        for ok in [
            "a",
            "#",
            "+",
            "/",
            "a//b",
            "/a",
            "a/",
            "+/+",
            "a/+/b",
            "a/#",
            "+/#",
            "$SYS/#",
            "$share",
            "$sharex/a",
            "é/x",
        ] {
            assert_eq!(parse_filter(ok), Ok(Filter::Plain(ok)), "{ok:?}");
        }
        let cases = [
            ("", FilterError::Empty),
            ("a\0b", FilterError::Nul),
            ("a#", FilterError::HashInLevel("a#".into())),
            ("a/b#", FilterError::HashInLevel("b#".into())),
            ("##", FilterError::HashInLevel("##".into())),
            ("#/a", FilterError::HashNotLast),
            ("a/#/", FilterError::HashNotLast),
            ("a+", FilterError::PlusInLevel("a+".into())),
            ("a/++/b", FilterError::PlusInLevel("++".into())),
        ];
        for (raw, error) in cases {
            assert_eq!(parse_filter(raw), Err(error), "{raw:?}");
        }
    }

    #[test]
    fn shared_filters_need_a_group_and_a_valid_filter() {
        assert_eq!(
            parse_filter("$share/g/a/+/#"),
            Ok(Filter::Shared {
                group: "g",
                filter: "a/+/#"
            })
        );
        assert_eq!(
            parse_filter("$share/g/#").map(|f| (f.group(), f.filter())),
            Ok((Some("g"), "#"))
        );
        assert_eq!(parse_filter("a/b").map(|f| f.group()), Ok(None));
        let cases = [
            ("$share/", FilterError::SharedWithoutFilter),
            ("$share/g", FilterError::SharedWithoutFilter),
            ("$share/g/", FilterError::SharedWithoutFilter),
            ("$share//a", FilterError::EmptyGroup),
            ("$share/g+/a", FilterError::WildcardInGroup("g+".into())),
            ("$share/#/a", FilterError::WildcardInGroup("#".into())),
            ("$share/g\0/a", FilterError::Nul),
            ("$share/g/a#", FilterError::HashInLevel("a#".into())),
            ("$share/g/#/a", FilterError::HashNotLast),
            ("$share/g/+a", FilterError::PlusInLevel("+a".into())),
        ];
        for (raw, error) in cases {
            assert_eq!(parse_filter(raw), Err(error), "{raw:?}");
        }
    }

    #[test]
    fn errors_say_what_is_wrong_without_a_trailing_period() {
        let errors = [
            FilterError::Empty,
            FilterError::Nul,
            FilterError::HashInLevel("a#".into()),
            FilterError::HashNotLast,
            FilterError::PlusInLevel("a+".into()),
            FilterError::SharedWithoutFilter,
            FilterError::EmptyGroup,
            FilterError::WildcardInGroup("g+".into()),
        ];
        for error in errors {
            let text = error.to_string();
            assert!(!text.ends_with('.'), "{text:?}");
        }
        assert!(FilterError::SharedWithoutFilter
            .to_string()
            .contains("`$share/{group}/{filter}`"));
        assert!(FilterError::PlusInLevel("a+".into())
            .to_string()
            .contains("\"a+\""));
    }

    /// The examples of MQTT 5 4.7.1 and 4.7.2, and the empty levels around them.
    #[test]
    fn matching_follows_the_specification_examples() {
        let cases = [
            ("sport/tennis/player1/#", "sport/tennis/player1", true),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/ranking",
                true,
            ),
            (
                "sport/tennis/player1/#",
                "sport/tennis/player1/score/wimbledon",
                true,
            ),
            ("sport/#", "sport", true),
            ("#", "sport", true),
            ("#", "/", true),
            ("#", "a//b", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/tournament", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+", "a", true),
            ("+", "", true),
            ("a/+/b", "a//b", true),
            ("a//b", "a//b", true),
            ("a/b", "a//b", false),
            ("/a", "/a", true),
            ("/a", "a", false),
            ("a/", "a", false),
            ("a/", "a/", true),
            ("a/#", "a", true),
            ("a/#", "a/", true),
            ("+/#", "a", true),
            ("a/+/#", "a", false),
            ("a", "a/b", false),
            ("a/b", "a", false),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("+", "$", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/+", "$SYS/x", true),
            ("$SYS/x", "$SYS/x", true),
            ("a/+", "a/$x", true),
            ("a/#", "a/$x/y", true),
        ];
        for (filter, topic, expected) in cases {
            assert_eq!(matches(filter, topic), expected, "{filter:?} vs {topic:?}");
        }
    }

    proptest! {
        /// The session's codec check and this parser agree on plain filters, but for the first
        /// character, which the codec restricts to ASCII for rumqttd's router.
        #[test]
        fn plain_filters_agree_with_the_codec_check(raw in "[a+#/$\0é]{0,8}") {
            prop_assume!(!raw.starts_with(SHARE_PREFIX));
            prop_assume!(raw.is_empty() || raw.is_char_boundary(1));
            prop_assert_eq!(
                parse_filter(&raw).is_ok(),
                crate::packet::check_topic_filter(&raw).is_ok()
            );
        }

        /// A filter without wildcards matches exactly the topic it spells.
        #[test]
        fn a_literal_filter_matches_only_itself(
            filter in "[ab$/]{1,6}",
            topic in "[ab$/]{1,6}",
        ) {
            prop_assert_eq!(matches(&filter, &topic), filter == topic);
        }

        /// `{prefix}/#` matches exactly the topics that are `prefix` or under it, and `+`
        /// stands for exactly one level.
        #[test]
        fn wildcards_stand_for_levels(
            prefix in "[ab$]{0,2}(/[ab$]{0,2}){0,2}",
            topic in "[ab$]{0,2}(/[ab$]{0,2}){0,3}",
        ) {
            let dollar_guard = |filter: &str| !(topic.starts_with('$') && filter.starts_with(['+', '#']));
            let under = topic == prefix || topic.starts_with(&format!("{prefix}/"));
            let hash = format!("{prefix}/#");
            prop_assert_eq!(matches(&hash, &topic), under);
            let levels: Vec<&str> = topic.split('/').collect();
            for i in 0..levels.len() {
                let mut filter = levels.clone();
                filter[i] = "+";
                let filter = filter.join("/");
                prop_assert_eq!(matches(&filter, &topic), dollar_guard(&filter), "{}", filter);
            }
        }
    }
}
