//! The TOML config file.
//!
//! The file is parsed into a generic TOML table and then walked section by
//! section, so that unknown sections and keys are rejected with their full
//! dotted name (`http.prot`), and wrongly typed values are reported with the
//! same message shape as environment variables.

use std::path::Path;

use toml::Value as Toml;

use crate::error::{ConfigError, ValueSource};
use crate::keys::insert_key;
use crate::layer::{
    check_bytes, check_ip_list, check_port, check_server_names, check_threads, check_url,
    check_url_map, parse_format, parse_ip, Field, KeySet, Kind, Layer, Value, PUBLIC_URL_SCHEMES,
    SECTIONS,
};

/// Parses the config file text. `path` only serves error messages.
pub(crate) fn parse(text: &str, path: Option<&Path>) -> Result<Layer, ConfigError> {
    let origin = ValueSource::File(path.map(Path::to_path_buf));
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| syntax_error(text, &e, &origin))?;

    let mut layer = Layer::default();
    for (section, content) in &table {
        if !SECTIONS.contains(&section.as_str()) {
            return Err(ConfigError::UnknownFileKey {
                key: section.clone(),
                kind: "section",
                origin,
                expected: SECTIONS.join(", "),
            });
        }
        let Toml::Table(entries) = content else {
            return Err(ConfigError::InvalidValue {
                setting: section.clone(),
                value: render(content),
                origin,
                expected: format!("a table ([{section}])"),
            });
        };
        if section == "keys" {
            let mut keys = KeySet::new();
            for (key, secret) in entries {
                let Toml::String(secret) = secret else {
                    // The value is not echoed: it is meant to be a secret.
                    return Err(ConfigError::InvalidKey {
                        key: Some(key.clone()),
                        problem: format!("secret must be a string, not {}", type_name(secret)),
                        origin,
                    });
                };
                insert_key(&mut keys, key, secret, &origin)?;
            }
            if !keys.is_empty() {
                layer.keys = Some(keys);
            }
            continue;
        }
        for (key, value) in entries {
            let Some(field) = Field::lookup(section, key) else {
                return Err(ConfigError::UnknownFileKey {
                    key: format!("{section}.{key}"),
                    kind: "key",
                    origin,
                    expected: Field::keys_of(section),
                });
            };
            let parsed =
                convert(field, value).ok_or_else(|| field.invalid(render(value), &origin))?;
            layer.set(field, parsed);
        }
    }
    Ok(layer)
}

/// Converts a TOML value for `field`; `None` if it has the wrong type or is
/// out of range.
fn convert(field: Field, value: &Toml) -> Option<Value> {
    match (field.kind(), value) {
        (Kind::Ip, Toml::String(s)) => parse_ip(s).map(Value::Ip),
        (Kind::Port, Toml::Integer(n)) => check_port(*n).map(Value::Port),
        (Kind::IpList, Toml::Array(items)) => {
            let ips = items
                .iter()
                .map(|item| match item {
                    Toml::String(s) => parse_ip(s),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()?;
            check_ip_list(ips).map(Value::IpList)
        }
        (Kind::Bool, Toml::Boolean(b)) => Some(Value::Bool(*b)),
        (Kind::Bytes, Toml::Integer(n)) => check_bytes(*n).map(Value::Bytes),
        (Kind::Threads, Toml::Integer(n)) => check_threads(*n).map(Value::Threads),
        (Kind::Format, Toml::String(s)) => parse_format(s).map(Value::Format),
        (Kind::ServerNames, Toml::Array(items)) => {
            let names = items.iter().map(Toml::as_str).collect::<Option<Vec<_>>>()?;
            check_server_names(names).map(Value::ServerNames)
        }
        (Kind::PublicUrl, Toml::String(s)) => check_url(s, &PUBLIC_URL_SCHEMES).map(Value::Url),
        (Kind::UrlMap, Toml::Table(entries)) => {
            let entries = entries
                .iter()
                .map(|(name, url)| url.as_str().map(|url| (name.as_str(), url)))
                .collect::<Option<Vec<_>>>()?;
            check_url_map(entries).map(Value::UrlMap)
        }
        _ => None,
    }
}

/// Renders a TOML value for an error message (strings quoted).
fn render(value: &Toml) -> String {
    match value {
        Toml::String(s) => format!("{s:?}"),
        Toml::Integer(n) => n.to_string(),
        Toml::Float(x) => x.to_string(),
        Toml::Boolean(b) => b.to_string(),
        Toml::Datetime(d) => d.to_string(),
        Toml::Array(items) => {
            let inner: Vec<String> = items.iter().map(render).collect();
            format!("[{}]", inner.join(", "))
        }
        Toml::Table(entries) => {
            let inner: Vec<String> = entries
                .iter()
                .map(|(key, value)| format!("{key:?} = {}", render(value)))
                .collect();
            if inner.is_empty() {
                "{}".into()
            } else {
                format!("{{ {} }}", inner.join(", "))
            }
        }
    }
}

fn type_name(value: &Toml) -> &'static str {
    match value {
        Toml::String(_) => "a string",
        Toml::Integer(_) => "an integer",
        Toml::Float(_) => "a float",
        Toml::Boolean(_) => "a boolean",
        Toml::Datetime(_) => "a date-time",
        Toml::Array(_) => "an array",
        Toml::Table(_) => "a table",
    }
}

/// Turns a TOML parse error into a one-line error with line and column.
fn syntax_error(text: &str, error: &toml::de::Error, origin: &ValueSource) -> ConfigError {
    let offset = error
        .span()
        .map(|span| span.start.min(text.len()))
        .unwrap_or(0);
    // Step back to a character boundary so slicing cannot panic.
    let offset = (0..=offset)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    let message = error
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    ConfigError::TomlSyntax {
        origin: origin.clone(),
        line,
        column,
        message,
    }
}
