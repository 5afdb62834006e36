//! A warning for a config file that holds an inline secret and can be read by other users.
//!
//! Only a warning: refusing to start would break working deployments on an upgrade, and the file
//! may legitimately be shared with a group in some setups. The message names the file, its mode
//! and the two fixes.

use std::path::Path;

/// The keys whose values are credentials (under `[clouds.NAME.auth]`).
const SECRET_KEYS: &[&str] = &["password", "application_credential_secret", "token"];

/// A warning when the file at `path` is readable by its group or by others (mode & 0o044) and its
/// TOML `text` holds an inline secret (`password`, `application_credential_secret` or `token` with
/// a non-empty value). `None` otherwise, and when the file's mode cannot be read. The message names
/// the key (never its value).
pub(crate) fn secrets_readable_by_others(path: &Path, text: &str) -> Option<String> {
    let mode = mode_of(path)?;
    if mode & 0o044 == 0 {
        return None;
    }
    let key = inline_secret(text)?;
    let who = match (mode & 0o040 != 0, mode & 0o004 != 0) {
        (true, true) => "its group and all other users",
        (true, false) => "its group",
        _ => "all other users",
    };
    let file = path.display();
    Some(format!(
        "config file {file} holds an inline secret ({key}) and is readable by {who} \
         (mode {mode:04o}): run `chmod 600 {file}`, or move the secrets out of it \
         (into secure.yaml, referred to with cloud = \"NAME\", or into OS_* environment variables)"
    ))
}

#[cfg(unix)]
fn mode_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

#[cfg(not(unix))]
fn mode_of(_path: &Path) -> Option<u32> {
    None
}

/// The dotted path of the first secret key with a non-empty string value, e.g.
/// `clouds.prod.auth.password`. A file that is not valid TOML is scanned line by line instead, so
/// a typo elsewhere does not hide the warning.
fn inline_secret(text: &str) -> Option<String> {
    match toml::from_str::<toml::Table>(text) {
        Ok(table) => find_in_table(&table, &mut Vec::new()),
        Err(_) => text.lines().find_map(|line| {
            let (key, value) = line.split_once('=')?;
            let key = key.trim().trim_matches(['"', '\'']);
            let value = value.trim().trim_matches(['"', '\'']);
            (SECRET_KEYS.contains(&key) && !value.is_empty()).then(|| key.to_string())
        }),
    }
}

fn find_in_table<'a>(table: &'a toml::Table, at: &mut Vec<&'a str>) -> Option<String> {
    for (key, value) in table {
        at.push(key);
        let found = match value {
            toml::Value::String(s) if !s.is_empty() && SECRET_KEYS.contains(&key.as_str()) => {
                Some(at.join("."))
            }
            toml::Value::Table(t) => find_in_table(t, at),
            toml::Value::Array(items) => items.iter().find_map(|item| match item {
                toml::Value::Table(t) => find_in_table(t, at),
                _ => None,
            }),
            _ => None,
        };
        at.pop();
        if found.is_some() {
            return found;
        }
    }
    None
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const WITH_PASSWORD: &str = r#"
[state]
path = "/var/lib/glance-sync/state.db"

[clouds.prod]
auth_type = "password"
[clouds.prod.auth]
auth_url = "https://keystone.example:5000/v3"
username = "image-sync"
password = "hunter2-secret"
project_name = "images"

[clouds.dr]
cloud = "dr"

[[jobs]]
name = "golden"
source = "prod"
targets = ["dr"]
"#;

    const WITHOUT_SECRET: &str = r#"
[state]
path = "/var/lib/glance-sync/state.db"

[clouds.prod]
cloud = "prod"
# password = "commented-out"

[clouds.lab]
auth_type = "none"
image_endpoint_override = "http://127.0.0.1:9292"

[[jobs]]
name = "golden"
source = "prod"
targets = ["lab"]
"#;

    /// Writes `text` to a fresh file with `mode`; returns the dir (kept alive) and the path.
    fn config(text: &str, mode: u32) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        (dir, path)
    }

    #[test]
    fn world_readable_file_with_a_password_is_warned_about_with_file_mode_and_fix() {
        let (_dir, path) = config(WITH_PASSWORD, 0o644);
        let msg = secrets_readable_by_others(&path, WITH_PASSWORD).expect("a warning");
        let file = path.display().to_string();
        assert!(msg.contains(&format!("config file {file} ")), "{msg}");
        assert!(msg.contains("mode 0644"), "{msg}");
        assert!(msg.contains(&format!("chmod 600 {file}")), "{msg}");
        assert!(
            msg.contains("secure.yaml") && msg.contains("environment"),
            "{msg}"
        );
        assert!(msg.contains("clouds.prod.auth.password"), "{msg}");
        assert!(
            !msg.contains("hunter2-secret"),
            "the warning shows the secret: {msg}"
        );
    }

    #[test]
    fn group_or_other_read_bit_alone_is_enough() {
        for (mode, who) in [(0o640, "its group"), (0o604, "all other users")] {
            let (_dir, path) = config(WITH_PASSWORD, mode);
            let msg = secrets_readable_by_others(&path, WITH_PASSWORD).expect("a warning");
            assert!(msg.contains(&format!("mode {mode:04o}")), "{msg}");
            assert!(msg.contains(&format!("readable by {who} ")), "{msg}");
        }
    }

    #[test]
    fn owner_only_file_is_not_warned_about() {
        for mode in [0o600, 0o400, 0o700, 0o620, 0o602] {
            let (_dir, path) = config(WITH_PASSWORD, mode);
            assert_eq!(
                secrets_readable_by_others(&path, WITH_PASSWORD),
                None,
                "mode {mode:o}"
            );
        }
    }

    #[test]
    fn file_without_inline_secret_is_not_warned_about() {
        let (_dir, path) = config(WITHOUT_SECRET, 0o644);
        assert_eq!(secrets_readable_by_others(&path, WITHOUT_SECRET), None);
        let empty = WITH_PASSWORD.replace("\"hunter2-secret\"", "\"\"");
        assert_eq!(
            secrets_readable_by_others(&path, &empty),
            None,
            "an empty password is no secret"
        );
    }

    #[test]
    fn application_credential_secret_and_token_count_as_secrets() {
        let appcred = r#"
[clouds.app]
auth_type = "v3applicationcredential"
[clouds.app.auth]
auth_url = "https://keystone.example:5000/v3"
application_credential_id = "9da0a8da3d394d09bf49dfc27014d254"
application_credential_secret = "s3cr3t"
"#;
        let token = r#"
[clouds.tok]
auth_type = "token"
image_endpoint_override = "https://glance.example:9292"
auth = { token = "gAAAAABexample" }
"#;
        for (text, key) in [
            (appcred, "clouds.app.auth.application_credential_secret"),
            (token, "clouds.tok.auth.token"),
        ] {
            let (_dir, path) = config(text, 0o644);
            let msg = secrets_readable_by_others(&path, text).expect("a warning");
            assert!(msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn invalid_toml_is_still_scanned_for_secrets() {
        let broken = WITH_PASSWORD.replace("[[jobs]]", "[[jobs]");
        let (_dir, path) = config(&broken, 0o644);
        let msg = secrets_readable_by_others(&path, &broken).expect("a warning");
        assert!(msg.contains("(password)"), "{msg}");
    }

    #[test]
    fn missing_file_gives_no_warning() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            secrets_readable_by_others(&dir.path().join("absent.toml"), WITH_PASSWORD),
            None
        );
    }
}
