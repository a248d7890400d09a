//! Keeps payload values out of rejection texts: a reason goes to `devices/{id}/errors`,
//! which operators read, so it names the field and the rule, never the reading itself.

/// How serde shows an unexpected value: a kind, a space, then the value in backticks (or, for
/// strings, in double quotes with escapes).
const KINDS: [(&str, char); 5] = [
    ("boolean ", '`'),
    ("integer ", '`'),
    ("floating point ", '`'),
    ("character ", '`'),
    ("string ", '"'),
];

/// `message` with every value serde quoted after its kind removed: `invalid type: string
/// "fast", expected ...` becomes `invalid type: string, expected ...`.
pub(super) fn without_values(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while !rest.is_empty() {
        match next_value(rest) {
            Some((kind_end, value_end)) => {
                // Keep the kind's name, drop the space before the value and the value.
                out.push_str(rest[..kind_end].trim_end_matches(' '));
                rest = &rest[value_end..];
            }
            None => {
                out.push_str(rest);
                break;
            }
        }
    }
    out
}

/// The first quoted value in `text`: where its kind ends and where the value ends.
fn next_value(text: &str) -> Option<(usize, usize)> {
    KINDS
        .iter()
        .filter_map(|&(kind, quote)| {
            let at = text.find(&format!("{kind}{quote}"))?;
            let open = at + kind.len();
            let close = closing_quote(&text[open + 1..], quote)? + open + 1;
            Some((open, close + 1))
        })
        .min_by_key(|&(open, _)| open)
}

/// Where the quote that closes a value starts in `text` (after the opening quote); a
/// backslash escapes the next character in double-quoted strings.
fn closing_quote(text: &str, quote: char) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quote == '"' => escaped = true,
            c if c == quote => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::without_values;

    #[test]
    fn values_serde_quotes_are_removed_and_the_rest_kept() {
        for (message, expected) in [
            (
                "invalid type: string \"fast\", expected field hr to be a number at line 1 column 30",
                "invalid type: string, expected field hr to be a number at line 1 column 30",
            ),
            (
                "invalid type: floating point `98.6`, expected a JSON object",
                "invalid type: floating point, expected a JSON object",
            ),
            (
                "invalid type: integer `-3`, expected a counter; invalid type: boolean `true`",
                "invalid type: integer, expected a counter; invalid type: boolean",
            ),
            (
                "invalid value: string \"say \\\"hi\\\"\", expected a stage",
                "invalid value: string, expected a stage",
            ),
            (
                "field `hr` is missing; expected value at line 1 column 1",
                "field `hr` is missing; expected value at line 1 column 1",
            ),
        ] {
            assert_eq!(without_values(message), expected);
        }
    }
}
