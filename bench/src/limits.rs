//! The open-file limit: every connection is a file descriptor in the harness and another in
//! the hub, which inherits the harness's limit.

use anyhow::{bail, Context as _};

/// Raises this process's soft RLIMIT_NOFILE to its hard limit when `need` exceeds the soft
/// one (`prlimit`, from util-linux, so the harness needs no unsafe code), or says what to do.
pub fn ensure_open_files(need: u64) -> anyhow::Result<()> {
    let (soft, hard) = nofile()?;
    if soft >= need {
        return Ok(());
    }
    if hard < need {
        bail!(
            "{need} open files are needed but the hard limit is {hard}; raise it (as root: \
             `ulimit -Hn {need}`, or nofile in /etc/security/limits.conf) or ask for fewer connections"
        );
    }
    let status = std::process::Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={hard}:{hard}"))
        .status();
    match status {
        Ok(s) if s.success() && nofile()?.0 >= need => Ok(()),
        _ => bail!(
            "{need} open files are needed but the limit is {soft}; run `ulimit -n {hard}` first"
        ),
    }
}

/// (soft, hard) "Max open files" of this process, from /proc/self/limits.
fn nofile() -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/self/limits").context("read /proc/self/limits")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no open-file limit in /proc/self/limits")?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    let mut value = || -> u64 {
        match fields.next() {
            Some("unlimited") | None => u64::MAX,
            Some(v) => v.parse().unwrap_or(u64::MAX),
        }
    };
    Ok((value(), value()))
}
