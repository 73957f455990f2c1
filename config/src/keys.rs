//! API key / secret handling shared by the file and environment sources.

use crate::error::{ConfigError, ValueSource};
use crate::layer::KeySet;

/// Checks one key/secret pair and adds it to `set`.
///
/// The key name must be non-empty and the secret must contain something other
/// than whitespace. The same key given twice with the same secret is accepted;
/// with different secrets it is an error.
pub(crate) fn insert_key(
    set: &mut KeySet,
    key: &str,
    secret: &str,
    origin: &ValueSource,
) -> Result<(), ConfigError> {
    if key.is_empty() {
        return Err(ConfigError::InvalidKey {
            key: None,
            problem: "empty API key name".into(),
            origin: origin.clone(),
        });
    }
    if secret.trim().is_empty() {
        return Err(ConfigError::InvalidKey {
            key: Some(key.to_owned()),
            problem: "empty secret".into(),
            origin: origin.clone(),
        });
    }
    if let Some((existing, first)) = set.get(key) {
        if existing != secret {
            return Err(ConfigError::DuplicateKey {
                key: key.to_owned(),
                first: first.clone(),
                second: origin.clone(),
            });
        }
        return Ok(());
    }
    set.insert(key.to_owned(), (secret.to_owned(), origin.clone()));
    Ok(())
}

/// Removes one pair of matching surrounding quotes (`"..."` or `'...'`), as a
/// YAML reader would.
fn unquote(text: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = text.strip_prefix(quote).and_then(|t| t.strip_suffix(quote)) {
            return inner;
        }
    }
    text
}

/// Parses LiveKit's `key: secret` list (the `LIVEKIT_KEYS` value or a
/// `key_file`) into `set`.
///
/// Entries are separated by newlines, and also by commas when `commas` is set.
/// Whitespace around keys, secrets and the colon is ignored, empty entries and
/// entries starting with `#` are skipped, and a pair of surrounding quotes is
/// removed. The entry is split at its first colon, so secrets may contain
/// colons. At least one entry is required.
pub(crate) fn parse_key_list(
    text: &str,
    commas: bool,
    origin: &ValueSource,
    set: &mut KeySet,
) -> Result<(), ConfigError> {
    let mut count = 0;
    let entries = text.split(|c| c == '\n' || (commas && c == ','));
    for entry in entries.map(str::trim) {
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        count += 1;
        let Some((key, secret)) = entry.split_once(':') else {
            // The entry is not echoed: it may be a bare secret.
            return Err(ConfigError::InvalidKey {
                key: None,
                problem: format!("entry {count} is not of the form \"key: secret\""),
                origin: origin.clone(),
            });
        };
        insert_key(set, unquote(key.trim()), unquote(secret.trim()), origin)?;
    }
    if count == 0 {
        return Err(ConfigError::InvalidKey {
            key: None,
            problem: "no \"key: secret\" entry".into(),
            origin: origin.clone(),
        });
    }
    Ok(())
}
