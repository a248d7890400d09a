//! Passwords a kenko process presents to another server (an external MQTT broker, the hub
//! whose registry a worker follows): from an environment variable, else from a file.

use std::path::Path;

/// The secret in environment variable `env`, else the first line of `file` (trimmed);
/// `None` when neither is set. `setting` names the section in errors (`source`).
pub fn read(setting: &str, env: &str, file: Option<&Path>) -> Result<Option<String>, String> {
    if let Ok(secret) = std::env::var(env) {
        if !secret.is_empty() {
            return Ok(Some(secret));
        }
    }
    let Some(path) = file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("{setting}.password_file {}: {e}", path.display()))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(format!(
            "{setting}.password_file {} is empty",
            path.display()
        ));
    }
    Ok(Some(secret.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_read_trimmed_and_an_empty_one_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cret\n").expect("write");
        let unset = "KENKO_TEST_SECRET_THAT_IS_NEVER_SET";
        assert_eq!(
            read("source", unset, Some(&path)),
            Ok(Some("s3cret".to_owned()))
        );
        assert_eq!(read("source", unset, None), Ok(None));
        std::fs::write(&path, " \n").expect("write");
        let err = read("registry", unset, Some(&path)).expect_err("empty");
        assert!(err.starts_with("registry.password_file"), "{err}");
    }
}
