//! One level of configuration (flags, environment, file, `--dev` defaults):
//! every setting is optional, `None` meaning "not given at this level".

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr};

use crate::error::{ConfigError, ValueSource};
use crate::LogFormat;

/// Smallest accepted `rtc.max_signal_message_bytes` (1 KiB).
pub(crate) const MIN_SIGNAL_MESSAGE_BYTES: usize = 1024;
/// Largest accepted `rtc.max_signal_message_bytes` (64 MiB).
pub(crate) const MAX_SIGNAL_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// Largest accepted `rtc.media_threads`.
pub(crate) const MAX_MEDIA_THREADS: usize = 256;

/// API keys with the origin of each secret.
pub(crate) type KeySet = BTreeMap<String, (String, ValueSource)>;

/// Settings given at one level.
#[derive(Debug, Default)]
pub(crate) struct Layer {
    pub http_bind: Option<IpAddr>,
    pub http_port: Option<u16>,
    pub rtc_udp_port: Option<u16>,
    pub rtc_bind: Option<IpAddr>,
    pub rtc_node_ips: Option<Vec<IpAddr>>,
    pub rtc_include_loopback: Option<bool>,
    pub rtc_v1_enabled: Option<bool>,
    pub rtc_bandwidth_estimation: Option<bool>,
    pub rtc_max_signal_message_bytes: Option<usize>,
    /// 0 means one per core; resolved when the levels are merged.
    pub rtc_media_threads: Option<usize>,
    pub keys: Option<KeySet>,
    pub rooms_auto_create: Option<bool>,
    pub matrixrtc_enabled: Option<bool>,
    /// A default for `matrixrtc.enabled` implied by another setting (set by
    /// `LIVEKIT_FULL_ACCESS_HOMESERVERS`); it ranks below every level's
    /// explicit `matrixrtc_enabled`, including the `--dev` defaults.
    pub matrixrtc_enabled_implied: Option<bool>,
    pub matrixrtc_full_access_homeservers: Option<Vec<String>>,
    pub matrixrtc_public_url: Option<String>,
    pub matrixrtc_homeserver_urls: Option<BTreeMap<String, String>>,
    pub log_format: Option<LogFormat>,
}

/// The scalar settings (everything except `keys`), with their file and
/// environment names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    HttpBind,
    HttpPort,
    RtcUdpPort,
    RtcBind,
    RtcNodeIps,
    RtcIncludeLoopback,
    RtcV1Enabled,
    RtcBandwidthEstimation,
    RtcMaxSignalMessageBytes,
    RtcMediaThreads,
    RoomsAutoCreate,
    MatrixRtcEnabled,
    MatrixRtcFullAccessHomeservers,
    MatrixRtcPublicUrl,
    MatrixRtcHomeserverUrls,
    LogFormat,
}

/// How a field's value is written and checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Ip,
    Port,
    IpList,
    Bool,
    Bytes,
    Threads,
    Format,
    ServerNames,
    PublicUrl,
    UrlMap,
}

/// The sections of the config file, in documentation order.
pub(crate) const SECTIONS: [&str; 6] = ["http", "rtc", "keys", "rooms", "matrixrtc", "log"];

impl Field {
    pub(crate) const ALL: [Field; 16] = [
        Field::HttpBind,
        Field::HttpPort,
        Field::RtcUdpPort,
        Field::RtcBind,
        Field::RtcNodeIps,
        Field::RtcIncludeLoopback,
        Field::RtcV1Enabled,
        Field::RtcBandwidthEstimation,
        Field::RtcMaxSignalMessageBytes,
        Field::RtcMediaThreads,
        Field::RoomsAutoCreate,
        Field::MatrixRtcEnabled,
        Field::MatrixRtcFullAccessHomeservers,
        Field::MatrixRtcPublicUrl,
        Field::MatrixRtcHomeserverUrls,
        Field::LogFormat,
    ];

    /// (section, key) in the TOML file.
    pub(crate) fn path(self) -> (&'static str, &'static str) {
        match self {
            Field::HttpBind => ("http", "bind"),
            Field::HttpPort => ("http", "port"),
            Field::RtcUdpPort => ("rtc", "udp_port"),
            Field::RtcBind => ("rtc", "bind"),
            Field::RtcNodeIps => ("rtc", "node_ips"),
            Field::RtcIncludeLoopback => ("rtc", "include_loopback"),
            Field::RtcV1Enabled => ("rtc", "v1_enabled"),
            Field::RtcBandwidthEstimation => ("rtc", "bandwidth_estimation"),
            Field::RtcMaxSignalMessageBytes => ("rtc", "max_signal_message_bytes"),
            Field::RtcMediaThreads => ("rtc", "media_threads"),
            Field::RoomsAutoCreate => ("rooms", "auto_create"),
            Field::MatrixRtcEnabled => ("matrixrtc", "enabled"),
            Field::MatrixRtcFullAccessHomeservers => ("matrixrtc", "full_access_homeservers"),
            Field::MatrixRtcPublicUrl => ("matrixrtc", "public_url"),
            Field::MatrixRtcHomeserverUrls => ("matrixrtc", "homeserver_urls"),
            Field::LogFormat => ("log", "format"),
        }
    }

    pub(crate) fn kind(self) -> Kind {
        match self {
            Field::HttpBind | Field::RtcBind => Kind::Ip,
            Field::HttpPort | Field::RtcUdpPort => Kind::Port,
            Field::RtcNodeIps => Kind::IpList,
            Field::RtcIncludeLoopback
            | Field::RtcV1Enabled
            | Field::RtcBandwidthEstimation
            | Field::RoomsAutoCreate
            | Field::MatrixRtcEnabled => Kind::Bool,
            Field::RtcMaxSignalMessageBytes => Kind::Bytes,
            Field::RtcMediaThreads => Kind::Threads,
            Field::LogFormat => Kind::Format,
            Field::MatrixRtcFullAccessHomeservers => Kind::ServerNames,
            Field::MatrixRtcPublicUrl => Kind::PublicUrl,
            Field::MatrixRtcHomeserverUrls => Kind::UrlMap,
        }
    }

    /// Dotted name, e.g. `rtc.udp_port`.
    pub(crate) fn name(self) -> String {
        let (section, key) = self.path();
        format!("{section}.{key}")
    }

    /// Environment variable, e.g. `SWITCHBOARD_RTC__UDP_PORT`.
    pub(crate) fn env_var(self) -> String {
        let (section, key) = self.path();
        format!(
            "SWITCHBOARD_{}__{}",
            section.to_ascii_uppercase(),
            key.to_ascii_uppercase()
        )
    }

    /// The field at `section.key` in the file, if any.
    pub(crate) fn lookup(section: &str, key: &str) -> Option<Field> {
        Field::ALL.into_iter().find(|f| f.path() == (section, key))
    }

    /// The keys of a file section, comma separated (for error messages).
    pub(crate) fn keys_of(section: &str) -> String {
        Field::ALL
            .into_iter()
            .filter(|f| f.path().0 == section)
            .map(|f| f.path().1)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Description of an acceptable value, for error messages.
    pub(crate) fn expected(self) -> String {
        match self.kind() {
            Kind::Ip => "an IP address such as 0.0.0.0 or ::".into(),
            Kind::Port => "a port number 1-65535".into(),
            Kind::IpList => "a list of IP addresses to advertise (comma separated in the \
                             environment); 0.0.0.0 and :: cannot be advertised"
                .into(),
            Kind::Bool => "true or false (1 or 0 in the environment)".into(),
            Kind::Bytes => format!(
                "a size in bytes from {MIN_SIGNAL_MESSAGE_BYTES} to {MAX_SIGNAL_MESSAGE_BYTES} (64 MiB)"
            ),
            Kind::Threads => {
                format!("a number of threads from 1 to {MAX_MEDIA_THREADS}, or 0 for one per core")
            }
            Kind::Format => "\"text\" or \"json\"".into(),
            Kind::ServerNames => "a list of Matrix server names without spaces, or [\"*\"] \
                                  alone for every server (comma separated in the environment)"
                .into(),
            Kind::PublicUrl => "a ws://, wss://, http:// or https:// URL with a host (and \
                                optionally a port and a path)"
                .into(),
            Kind::UrlMap => "server names mapped to http:// or https:// URLs with a host (and \
                             optionally a port and a path); comma separated name=url pairs in \
                             the environment"
                .into(),
        }
    }

    /// An [`ConfigError::InvalidValue`] for this field.
    pub(crate) fn invalid(self, value: String, origin: &ValueSource) -> ConfigError {
        ConfigError::InvalidValue {
            setting: self.name(),
            value,
            origin: origin.clone(),
            expected: self.expected(),
        }
    }
}

/// A value parsed for one field.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Ip(IpAddr),
    Port(u16),
    IpList(Vec<IpAddr>),
    Bool(bool),
    Bytes(usize),
    /// A media thread count; 0 means one per core.
    Threads(usize),
    Format(LogFormat),
    ServerNames(Vec<String>),
    Url(String),
    UrlMap(BTreeMap<String, String>),
}

impl Layer {
    /// Stores a value already checked by the `check_*` / `parse_*` helpers.
    pub(crate) fn set(&mut self, field: Field, value: Value) {
        match (field, value) {
            (Field::HttpBind, Value::Ip(v)) => self.http_bind = Some(v),
            (Field::RtcBind, Value::Ip(v)) => self.rtc_bind = Some(v),
            (Field::HttpPort, Value::Port(v)) => self.http_port = Some(v),
            (Field::RtcUdpPort, Value::Port(v)) => self.rtc_udp_port = Some(v),
            (Field::RtcNodeIps, Value::IpList(v)) => self.rtc_node_ips = Some(v),
            (Field::RtcIncludeLoopback, Value::Bool(v)) => self.rtc_include_loopback = Some(v),
            (Field::RtcV1Enabled, Value::Bool(v)) => self.rtc_v1_enabled = Some(v),
            (Field::RtcBandwidthEstimation, Value::Bool(v)) => {
                self.rtc_bandwidth_estimation = Some(v)
            }
            (Field::RoomsAutoCreate, Value::Bool(v)) => self.rooms_auto_create = Some(v),
            (Field::RtcMaxSignalMessageBytes, Value::Bytes(v)) => {
                self.rtc_max_signal_message_bytes = Some(v)
            }
            (Field::RtcMediaThreads, Value::Threads(v)) => self.rtc_media_threads = Some(v),
            (Field::LogFormat, Value::Format(v)) => self.log_format = Some(v),
            (Field::MatrixRtcEnabled, Value::Bool(v)) => self.matrixrtc_enabled = Some(v),
            (Field::MatrixRtcFullAccessHomeservers, Value::ServerNames(v)) => {
                self.matrixrtc_full_access_homeservers = Some(v)
            }
            (Field::MatrixRtcPublicUrl, Value::Url(v)) => self.matrixrtc_public_url = Some(v),
            (Field::MatrixRtcHomeserverUrls, Value::UrlMap(v)) => {
                self.matrixrtc_homeserver_urls = Some(v)
            }
            (field, value) => unreachable!("value {value:?} does not fit field {field:?}"),
        }
    }

    /// The value of `field` at this level, for the fields that can be given by
    /// two environment variables (`SWITCHBOARD_*` and an lk-jwt-service name).
    pub(crate) fn aliased(&self, field: Field) -> Option<Value> {
        match field {
            Field::MatrixRtcFullAccessHomeservers => self
                .matrixrtc_full_access_homeservers
                .clone()
                .map(Value::ServerNames),
            Field::MatrixRtcPublicUrl => self.matrixrtc_public_url.clone().map(Value::Url),
            other => unreachable!("{other:?} has no alias variable"),
        }
    }
}

/// Parses an IP address; IPv6 may be written in brackets.
pub(crate) fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text.trim();
    let text = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    text.parse().ok()
}

/// Checks a port number (0 is rejected).
pub(crate) fn check_port(port: i64) -> Option<u16> {
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// Checks a signalling message size limit.
pub(crate) fn check_bytes(bytes: i64) -> Option<usize> {
    usize::try_from(bytes)
        .ok()
        .filter(|b| (MIN_SIGNAL_MESSAGE_BYTES..=MAX_SIGNAL_MESSAGE_BYTES).contains(b))
}

/// Checks a media thread count: 1 to [`MAX_MEDIA_THREADS`], or 0 (one per
/// core).
pub(crate) fn check_threads(threads: i64) -> Option<usize> {
    usize::try_from(threads)
        .ok()
        .filter(|t| *t <= MAX_MEDIA_THREADS)
}

/// Checks a list of addresses to advertise; removes duplicates, keeping order.
pub(crate) fn check_ip_list(ips: Vec<IpAddr>) -> Option<Vec<IpAddr>> {
    if ips.iter().any(IpAddr::is_unspecified) {
        return None;
    }
    let mut out: Vec<IpAddr> = Vec::with_capacity(ips.len());
    for ip in ips {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Some(out)
}

/// Schemes accepted in `matrixrtc.public_url`.
pub(crate) const PUBLIC_URL_SCHEMES: [&str; 4] = ["ws://", "wss://", "http://", "https://"];
/// Schemes accepted in the values of `matrixrtc.homeserver_urls`.
pub(crate) const HOMESERVER_URL_SCHEMES: [&str; 2] = ["http://", "https://"];

/// Checks a server name of `matrixrtc.full_access_homeservers` or a key of
/// `matrixrtc.homeserver_urls`: surrounding whitespace is removed, the rest
/// must be non-empty and free of whitespace.
fn check_server_name(name: &str) -> Option<String> {
    let name = name.trim();
    (!name.is_empty() && !name.contains(char::is_whitespace)).then(|| name.to_owned())
}

/// Checks a list of server names (see [`check_server_name`]); `*` is only
/// accepted alone. Removes duplicates, keeping order.
pub(crate) fn check_server_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let name = check_server_name(name)?;
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.len() > 1 && out.iter().any(|n| n == "*") {
        return None;
    }
    Some(out)
}

/// Checks a URL: one of `schemes` (case-insensitive), then a host (a name,
/// an IPv4 address or a bracketed IPv6 address), an optional port 1-65535
/// and an optional path. User info, query and fragment are rejected, as is
/// whitespace. Returns the URL with surrounding whitespace removed.
pub(crate) fn check_url(text: &str, schemes: &[&str]) -> Option<String> {
    let text = text.trim();
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return None;
    }
    let scheme = schemes.iter().find(|scheme| {
        text.get(..scheme.len())
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(scheme))
    })?;
    let rest = &text[scheme.len()..];
    if rest.contains(['?', '#']) {
        return None;
    }
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(bracketed) => {
            let (inner, tail) = bracketed.split_once(']')?;
            inner.parse::<Ipv6Addr>().ok()?;
            match tail {
                "" => (inner, None),
                _ => (inner, Some(tail.strip_prefix(':')?)),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    if host.is_empty() || host.contains(['@', '[', ']']) {
        return None;
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        check_port(port.parse().ok()?)?;
    }
    Some(text.to_owned())
}

/// Checks `matrixrtc.homeserver_urls` entries (server name, URL): names as
/// in [`check_server_name`], URLs as in [`check_url`] with
/// [`HOMESERVER_URL_SCHEMES`], trailing slashes removed. The same name twice
/// with different URLs is rejected.
pub(crate) fn check_url_map<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (name, url) in entries {
        let name = check_server_name(name)?;
        let url = check_url(url, &HOMESERVER_URL_SCHEMES)?;
        let url = url.trim_end_matches('/').to_owned();
        match out.get(&name) {
            Some(existing) if *existing != url => return None,
            _ => {
                out.insert(name, url);
            }
        }
    }
    Some(out)
}

/// Parses a log format name (case-insensitive).
pub(crate) fn parse_format(text: &str) -> Option<LogFormat> {
    match text.trim().to_ascii_lowercase().as_str() {
        "text" => Some(LogFormat::Text),
        "json" => Some(LogFormat::Json),
        _ => None,
    }
}

/// Parses a field's value from environment-variable text.
pub(crate) fn parse_env_value(field: Field, text: &str) -> Option<Value> {
    let trimmed = text.trim();
    match field.kind() {
        Kind::Ip => parse_ip(trimmed).map(Value::Ip),
        Kind::Port => trimmed
            .parse::<i64>()
            .ok()
            .and_then(check_port)
            .map(Value::Port),
        Kind::IpList => {
            let ips = trimmed
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(parse_ip)
                .collect::<Option<Vec<_>>>()?;
            check_ip_list(ips).map(Value::IpList)
        }
        Kind::Bool => match trimmed.to_ascii_lowercase().as_str() {
            "true" | "1" => Some(Value::Bool(true)),
            "false" | "0" => Some(Value::Bool(false)),
            _ => None,
        },
        Kind::Bytes => trimmed
            .parse::<i64>()
            .ok()
            .and_then(check_bytes)
            .map(Value::Bytes),
        Kind::Threads => trimmed
            .parse::<i64>()
            .ok()
            .and_then(check_threads)
            .map(Value::Threads),
        Kind::Format => parse_format(trimmed).map(Value::Format),
        Kind::ServerNames => check_server_names(
            trimmed
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty()),
        )
        .map(Value::ServerNames),
        Kind::PublicUrl => check_url(trimmed, &PUBLIC_URL_SCHEMES).map(Value::Url),
        Kind::UrlMap => {
            let entries = trimmed
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| item.split_once('='))
                .collect::<Option<Vec<_>>>()?;
            check_url_map(entries).map(Value::UrlMap)
        }
    }
}

/// Whether two values of one field mean the same; lists of server names are
/// compared as sets.
pub(crate) fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::ServerNames(a), Value::ServerNames(b)) => {
            let mut a = a.clone();
            let mut b = b.clone();
            a.sort();
            b.sort();
            a == b
        }
        (a, b) => a == b,
    }
}
