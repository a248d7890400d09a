//! `kenko acl export`: the ACL rules, expanded for every principal, as a static file for a
//! broker that cannot call kenko's MQTT hooks: Mosquitto's `acl_file`, or EMQX's file
//! authorization (`acl.conf`). Never more permissive than kenko: what a file cannot say
//! (consent, QoS and retain limits, a deny on the client id in Mosquitto's file) is left
//! out or noted, and the file's header says what is lost.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use kenko_broker::acl::Acl;
use kenko_broker::auth::Directory;
use kenko_config::acl::{Action, Effect, Rule};

use crate::acl::{load, Source};
use crate::output::out;

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Mosquitto's `acl_file` (user / topic lines)
    Mosquitto,
    /// EMQX's file authorization (`acl.conf`, Erlang terms; first match wins)
    Emqx,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[command(flatten)]
    source: Source,
    #[arg(long, value_enum)]
    format: Format,
    /// Write the file here instead of to standard output
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A client id no principal can have: where a rule's `%c` lands on it, Mosquitto's file
/// has no way to say it for one user.
const UNKNOWN_CLIENT: &str = "\u{1}client-id\u{1}";

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let (directory, acl, _) = load(&args.source)?;
    let (text, summary) = render(&directory, &acl, args.format);
    match &args.out {
        Some(path) => {
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            eprintln!("kenko acl export: {summary}; written to {}", path.display());
        }
        None => {
            out!("{text}");
            eprintln!("kenko acl export: {summary}");
        }
    }
    Ok(())
}

/// One line of the file for one principal.
enum Grant {
    Allow(Action, String),
    Deny(Action, String),
    /// A rule left out or limited, and why (a comment).
    Note(String),
}

/// The file, and a one-line summary of what was written and left out.
fn render(directory: &Directory, acl: &Acl, format: Format) -> (String, String) {
    let mut body = String::new();
    let (mut principals, mut left_out) = (0, 0);
    for id in directory.ids() {
        let Some(identity) = directory.get(&id) else {
            continue;
        };
        if id == kenko_config::ANONYMOUS {
            left_out += 1;
            let _ = writeln!(
                body,
                "{} anonymous clients: not exported (give them rules in the broker itself)",
                comment(format)
            );
            continue;
        }
        let client = match (&identity.device, format) {
            (Some(device), _) => device.clone(),
            (None, Format::Emqx) => "${clientid}".to_owned(),
            (None, Format::Mosquitto) => UNKNOWN_CLIENT.to_owned(),
        };
        let principal = identity.principal(&client, Some(&id));
        let grants = grants(acl, &acl.rules_for(&principal), |i| {
            acl.expand(i, &principal)
        });
        left_out += grants
            .iter()
            .filter(|g| matches!(g, Grant::Note(_)))
            .count();
        principals += 1;
        write_principal(&mut body, format, &id, &grants);
    }
    let summary =
        format!("{principals} principals; {left_out} rules left out or limited (see the comments)");
    if format == Format::Emqx {
        body.push_str("{deny, all}.\n");
    }
    (header(format) + &body, summary)
}

/// What the rules selecting a principal (`selected`, in order) grant it, the topics
/// expanded by `expand`.
fn grants(acl: &Acl, selected: &[usize], expand: impl Fn(usize) -> Option<String>) -> Vec<Grant> {
    let mut out = Vec::new();
    for &i in selected {
        let (Some(rule), Some(topic)) = (acl.rules().get(i), expand(i)) else {
            continue;
        };
        let at = &rule.source;
        if topic.contains(" unbound>") {
            // The placeholder has no value for this principal: the rule never applies.
            continue;
        }
        let unknown_client = topic.contains(UNKNOWN_CLIENT);
        match rule.effect {
            Effect::Deny if unknown_client => {
                out.push(Grant::Note(format!(
                    "{at}: a deny on the client id (%c) cannot be written for one user; the rules after it are left out"
                )));
                break;
            }
            Effect::Deny => out.push(Grant::Deny(rule.action, topic)),
            Effect::Allow if rule.consent.is_some() => out.push(Grant::Note(format!(
                "{at}: allows {} only under the citizen's consent, which a static file cannot check: left out (denied); the MQTT hooks check it",
                rule.topic
            ))),
            Effect::Allow if unknown_client => out.push(Grant::Note(format!(
                "{at}: allows {} for this user's client id, which this file cannot name: left out",
                rule.topic
            ))),
            Effect::Allow => {
                if let Some(note) = limits(rule) {
                    out.push(Grant::Note(format!("{at}: {note}")));
                }
                out.push(Grant::Allow(rule.action, topic));
            }
        }
    }
    out
}

/// What a static file loses of an allow rule's QoS and retain limits.
fn limits(rule: &Rule) -> Option<String> {
    let mut lost = Vec::new();
    if let Some(max) = rule.max_qos {
        lost.push(format!("QoS above {max}"));
    }
    if rule.retain == Some(false) {
        lost.push("retained publishes".to_owned());
    }
    (!lost.is_empty()).then(|| {
        format!(
            "kenko refuses {} here; this file cannot: limit them in the broker (Mosquitto: max_qos, retain_available false)",
            lost.join(" and ")
        )
    })
}

fn comment(format: Format) -> &'static str {
    match format {
        Format::Mosquitto => "#",
        Format::Emqx => "%%",
    }
}

fn header(format: Format) -> String {
    let c = comment(format);
    let order = match format {
        Format::Mosquitto => format!(
            "{c} Mosquitto applies every deny line before any grant: where a kenko allow rule comes\n\
             {c} before an overlapping deny, this file denies what kenko allows (never the other\n\
             {c} way round), and a deny covers reading and writing alike.\n"
        ),
        Format::Emqx => format!(
            "{c} Rules are tried in order and the first match decides, as in kenko; the last rule\n\
             {c} denies the rest (set authorization.no_match = deny too).\n"
        ),
    };
    format!(
        "{c} kenko's ACL rules, expanded for each principal by `kenko acl export`.\n\
         {c} What a static file loses: consent (rules that need a citizen's consent are left out,\n\
         {c} so those deliveries are denied; kenko's MQTT hooks check consent at every check,\n\
         {c} docs/scale-out.md), QoS and retain limits (noted where a rule has them), and every\n\
         {c} change made after the export (principals, devices, rules): export again.\n\
         {order}\n"
    )
}

fn write_principal(body: &mut String, format: Format, id: &str, grants: &[Grant]) {
    match format {
        Format::Mosquitto => {
            let _ = writeln!(body, "user {id}");
            for grant in grants {
                let _ = match grant {
                    Grant::Allow(action, topic) => {
                        writeln!(body, "topic {} {topic}", mosquitto_access(*action))
                    }
                    Grant::Deny(_, topic) => writeln!(body, "topic deny {topic}"),
                    Grant::Note(note) => writeln!(body, "# {note}"),
                };
            }
            body.push('\n');
        }
        Format::Emqx => {
            for grant in grants {
                let user = erlang_string(id);
                let _ = match grant {
                    Grant::Allow(action, topic) => writeln!(
                        body,
                        "{{allow, {{user, {user}}}, {}, [{}]}}.",
                        emqx_action(*action),
                        erlang_string(topic)
                    ),
                    Grant::Deny(action, topic) => writeln!(
                        body,
                        "{{deny, {{user, {user}}}, {}, [{}]}}.",
                        emqx_action(*action),
                        erlang_string(topic)
                    ),
                    Grant::Note(note) => writeln!(body, "%% {id}: {note}"),
                };
            }
        }
    }
}

fn mosquitto_access(action: Action) -> &'static str {
    match action {
        Action::Publish => "write",
        Action::Subscribe => "read",
        Action::All => "readwrite",
    }
}

fn emqx_action(action: Action) -> &'static str {
    match action {
        Action::Publish => "publish",
        Action::Subscribe => "subscribe",
        Action::All => "all",
    }
}

/// `text` as an Erlang string literal.
fn erlang_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
