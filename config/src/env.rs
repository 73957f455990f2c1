//! Environment variables: `SWITCHBOARD_<SECTION>__<KEY>`, plus the key
//! variables of LiveKit (`LIVEKIT_KEYS`) and lk-jwt-service (`LIVEKIT_KEY`,
//! `LIVEKIT_SECRET`, `LIVEKIT_KEY_FROM_FILE`, `LIVEKIT_SECRET_FROM_FILE`,
//! `LIVEKIT_KEY_FILE`), and lk-jwt-service's MatrixRTC variables
//! (`LIVEKIT_FULL_ACCESS_HOMESERVERS`, `LIVEKIT_URL`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, ValueSource};
use crate::keys::{insert_key, parse_key_list};
use crate::layer::{parse_env_value, same_value, Field, KeySet, Layer, SECTIONS};

/// Prefix of Switchboard's own variables.
pub(crate) const PREFIX: &str = "SWITCHBOARD_";
/// Prefix of `SWITCHBOARD_KEYS__<APIKEY>`.
const KEYS_PREFIX: &str = "SWITCHBOARD_KEYS__";

pub(crate) const LIVEKIT_KEYS: &str = "LIVEKIT_KEYS";
pub(crate) const LIVEKIT_KEY: &str = "LIVEKIT_KEY";
pub(crate) const LIVEKIT_SECRET: &str = "LIVEKIT_SECRET";
pub(crate) const LIVEKIT_KEY_FROM_FILE: &str = "LIVEKIT_KEY_FROM_FILE";
pub(crate) const LIVEKIT_SECRET_FROM_FILE: &str = "LIVEKIT_SECRET_FROM_FILE";
pub(crate) const LIVEKIT_KEY_FILE: &str = "LIVEKIT_KEY_FILE";
pub(crate) const LIVEKIT_FULL_ACCESS_HOMESERVERS: &str = "LIVEKIT_FULL_ACCESS_HOMESERVERS";
pub(crate) const LIVEKIT_URL: &str = "LIVEKIT_URL";

/// The LiveKit / lk-jwt-service variables that are read; other `LIVEKIT_*`
/// variables are ignored.
pub(crate) const LIVEKIT_VARS: [&str; 8] = [
    LIVEKIT_KEYS,
    LIVEKIT_KEY,
    LIVEKIT_SECRET,
    LIVEKIT_KEY_FROM_FILE,
    LIVEKIT_SECRET_FROM_FILE,
    LIVEKIT_KEY_FILE,
    LIVEKIT_FULL_ACCESS_HOMESERVERS,
    LIVEKIT_URL,
];

/// lk-jwt-service variables that set a Switchboard setting, which can also be
/// set by its `SWITCHBOARD_*` variable.
const LIVEKIT_ALIASES: [(&str, Field); 2] = [
    (
        LIVEKIT_FULL_ACCESS_HOMESERVERS,
        Field::MatrixRtcFullAccessHomeservers,
    ),
    (LIVEKIT_URL, Field::MatrixRtcPublicUrl),
];

/// Whether `name` is read by [`parse`] (used to filter the process
/// environment).
pub(crate) fn is_relevant(name: &str) -> bool {
    name.starts_with(PREFIX) || LIVEKIT_VARS.contains(&name)
}

type ReadFile<'a> = &'a dyn Fn(&Path) -> std::io::Result<String>;

/// Builds the environment level from the variables in `env`.
pub(crate) fn parse(
    env: &BTreeMap<String, String>,
    read_file: ReadFile<'_>,
) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    let mut keys = KeySet::new();

    for (name, text) in env.range(PREFIX.to_owned()..) {
        if !name.starts_with(PREFIX) {
            break;
        }
        let origin = ValueSource::Env(name.clone());
        if let Some(key) = name.strip_prefix(KEYS_PREFIX) {
            insert_key(&mut keys, key, text.trim(), &origin)?;
            continue;
        }
        let Some(field) = Field::ALL.into_iter().find(|f| f.env_var() == *name) else {
            return Err(ConfigError::UnknownEnvVar {
                var: name.clone(),
                hint: unknown_var_hint(name),
            });
        };
        let value = parse_env_value(field, text)
            .ok_or_else(|| field.invalid(format!("{text:?}"), &origin))?;
        layer.set(field, value);
    }

    for (var, field) in LIVEKIT_ALIASES {
        let Some(text) = env.get(var) else { continue };
        let value = parse_env_value(field, text)
            .ok_or_else(|| field.invalid(format!("{text:?}"), &ValueSource::Env(var.into())))?;
        if let Some(own) = layer.aliased(field) {
            if !same_value(&own, &value) {
                return Err(ConfigError::ConflictingEnvValues {
                    setting: field.name(),
                    first: field.env_var(),
                    second: var.into(),
                });
            }
        }
        layer.set(field, value);
    }
    if env.contains_key(LIVEKIT_FULL_ACCESS_HOMESERVERS) {
        // lk-jwt-service deployments set only LIVEKIT_* variables.
        layer.matrixrtc_enabled_implied = Some(true);
    }

    livekit_keys(env, read_file, &mut keys)?;
    if !keys.is_empty() {
        layer.keys = Some(keys);
    }
    Ok(layer)
}

/// Reads the LiveKit / lk-jwt-service key variables into `keys`.
fn livekit_keys(
    env: &BTreeMap<String, String>,
    read_file: ReadFile<'_>,
    keys: &mut KeySet,
) -> Result<(), ConfigError> {
    if let Some(text) = env.get(LIVEKIT_KEYS) {
        parse_key_list(text, true, &ValueSource::Env(LIVEKIT_KEYS.into()), keys)?;
    }

    let key = direct_or_from_file(env, LIVEKIT_KEY, LIVEKIT_KEY_FROM_FILE, read_file)?;
    let secret = direct_or_from_file(env, LIVEKIT_SECRET, LIVEKIT_SECRET_FROM_FILE, read_file)?;

    if let Some(path) = env.get(LIVEKIT_KEY_FILE) {
        // lk-jwt-service treats LIVEKIT_KEY_FILE and LIVEKIT_{KEY,SECRET}
        // as mutually exclusive; so does Switchboard.
        if let Some((var, _, _)) = key.as_ref().or(secret.as_ref()) {
            return Err(ConfigError::ConflictingEnv {
                first: LIVEKIT_KEY_FILE.into(),
                second: var.clone(),
            });
        }
        let origin = ValueSource::EnvFile {
            var: LIVEKIT_KEY_FILE.into(),
            path: PathBuf::from(path),
        };
        let text = read(LIVEKIT_KEY_FILE, path, read_file)?;
        parse_key_list(&text, false, &origin, keys)?;
    }

    match (key, secret) {
        (None, None) => Ok(()),
        (Some((var, _, _)), None) => Err(ConfigError::IncompleteKeyPair {
            present: var,
            missing: format!("{LIVEKIT_SECRET} (or {LIVEKIT_SECRET_FROM_FILE})"),
        }),
        (None, Some((var, _, _))) => Err(ConfigError::IncompleteKeyPair {
            present: var,
            missing: format!("{LIVEKIT_KEY} (or {LIVEKIT_KEY_FROM_FILE})"),
        }),
        (Some((_, key, key_origin)), Some((_, secret, secret_origin))) => {
            // An empty key name is reported against the key's variable, an
            // empty secret against the secret's.
            if key.is_empty() {
                return insert_key(keys, &key, &secret, &key_origin);
            }
            insert_key(keys, &key, &secret, &secret_origin)
        }
    }
}

/// The value of `direct`, or the trimmed content of the file named by
/// `from_file`: `(variable used, value, origin)`. Both set is an error.
fn direct_or_from_file(
    env: &BTreeMap<String, String>,
    direct: &str,
    from_file: &str,
    read_file: ReadFile<'_>,
) -> Result<Option<(String, String, ValueSource)>, ConfigError> {
    match (env.get(direct), env.get(from_file)) {
        (Some(_), Some(_)) => Err(ConfigError::ConflictingEnv {
            first: direct.into(),
            second: from_file.into(),
        }),
        (Some(value), None) => Ok(Some((
            direct.into(),
            value.trim().to_owned(),
            ValueSource::Env(direct.into()),
        ))),
        (None, Some(path)) => {
            let value = read(from_file, path, read_file)?.trim().to_owned();
            let origin = ValueSource::EnvFile {
                var: from_file.into(),
                path: PathBuf::from(path),
            };
            Ok(Some((from_file.into(), value, origin)))
        }
        (None, None) => Ok(None),
    }
}

fn read(var: &str, path: &str, read_file: ReadFile<'_>) -> Result<String, ConfigError> {
    read_file(Path::new(path)).map_err(|source| ConfigError::ReadEnvFile {
        var: var.into(),
        path: PathBuf::from(path),
        source,
    })
}

/// Suggests the intended variable for an unknown `SWITCHBOARD_*` name.
fn unknown_var_hint(name: &str) -> String {
    // Same letters, different case or single instead of double underscore.
    let squash = |s: &str| s.to_ascii_uppercase().replace("__", "_");
    if let Some(field) = Field::ALL
        .into_iter()
        .find(|f| squash(&f.env_var()) == squash(name))
    {
        return format!("did you mean {}?", field.env_var());
    }
    let rest = &name[PREFIX.len()..];
    if let Some((section, _)) = rest.split_once("__") {
        let lower = section.to_ascii_lowercase();
        if SECTIONS.contains(&lower.as_str()) && lower != "keys" {
            let known: Vec<String> = Field::ALL
                .into_iter()
                .filter(|f| f.path().0 == lower)
                .map(Field::env_var)
                .collect();
            return format!("known in this section: {}", known.join(", "));
        }
    }
    "expected SWITCHBOARD_<SECTION>__<KEY> with SECTION one of HTTP, RTC, KEYS, ROOMS, \
     MATRIXRTC, LOG, or SWITCHBOARD_KEYS__<APIKEY>"
        .into()
}
