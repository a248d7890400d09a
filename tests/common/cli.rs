//! The command line and MQTT logins as tests of `kenko device` and `kenko principal` use
//! them.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, Incoming, MqttOptions};
use tokio::sync::mpsc;

use super::Hub;

/// Runs `kenko ARGS…` with `stdin` (if any) on its standard input.
pub fn kenko(args: &[&str], stdin: Option<&str>) -> anyhow::Result<Output> {
    let mut child = Command::new(super::KENKO)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes())?;
    }
    drop(input);
    Ok(child.wait_with_output()?)
}

/// What a command printed, stdout then stderr.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A path as an argument.
pub fn path(p: &Path) -> String {
    p.display().to_string()
}

/// Connects as `id` with `password`; the client and its events, or why it was refused.
pub async fn connect(
    hub: &Hub,
    id: &str,
    password: &str,
) -> anyhow::Result<Result<(AsyncClient, mpsc::UnboundedReceiver<Event>), ConnectionError>> {
    let mut options = MqttOptions::new(id, "127.0.0.1", hub.port());
    options.set_keep_alive(Duration::from_secs(10));
    options.set_credentials(id, password);
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await? {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => break,
            Ok(_) => {}
            Err(e) => return Ok(Err(e)),
        }
    }
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    Ok(Ok((client, rx)))
}
