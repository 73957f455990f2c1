//! Switchboard settings: command line, environment, TOML file, `--dev`
//! defaults and built-in defaults, merged and validated into [`Settings`].
//!
//! Precedence, highest first: flags > environment > config file > `--dev`
//! defaults > built-in defaults. Each setting is taken from the highest level
//! that gives it. API keys are taken as a whole from the highest level that
//! gives any key; keys of lower levels are then ignored (the `--dev` key is
//! never merged into production keys). See `docs/configuration.md`.

#![warn(missing_docs)]

mod cli;
mod env;
mod error;
mod file;
mod keys;
mod layer;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroUsize;
use std::path::Path;

pub use cli::Cli;
pub use error::{ConfigError, ValueSource};

use layer::{check_ip_list, check_threads, KeySet, Layer, MAX_MEDIA_THREADS};

/// Default HTTP/WebSocket port (`http.port`).
pub const DEFAULT_HTTP_PORT: u16 = 7880;
/// Default media UDP port (`rtc.udp_port`).
pub const DEFAULT_UDP_PORT: u16 = 7882;
/// Default limit on one signalling message, in bytes (1 MiB).
pub const DEFAULT_MAX_SIGNAL_MESSAGE_BYTES: usize = 1024 * 1024;
/// API key accepted in `--dev` mode when no key is configured.
pub const DEV_API_KEY: &str = "devkey";
/// Secret of [`DEV_API_KEY`] (LiveKit's development secret).
pub const DEV_API_SECRET: &str = "secret";

/// Resolved settings of the server.
///
/// `Debug` prints API keys but hides their secrets.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    /// `--dev` was given. Default: false.
    pub dev: bool,
    /// HTTP/WebSocket listener (signalling and API).
    pub http: HttpSettings,
    /// WebRTC media transport.
    pub rtc: RtcSettings,
    /// API key -> secret, used to verify access tokens. Never empty after
    /// [`Settings::load`] / [`Settings::from_sources`]. Default: none (an
    /// error); with `--dev`: `devkey` -> `secret`.
    pub keys: BTreeMap<String, String>,
    /// Room behaviour.
    pub rooms: RoomSettings,
    /// MatrixRTC authorisation (lk-jwt-service compatible endpoints).
    pub matrixrtc: MatrixRtcSettings,
    /// Logging.
    pub log: LogSettings,
}

/// HTTP/WebSocket listener settings (`[http]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// Listen address. Default: 0.0.0.0; with `--dev`: 127.0.0.1.
    pub bind: IpAddr,
    /// Listen TCP port, 1-65535. Default: 7880.
    pub port: u16,
}

/// WebRTC media settings (`[rtc]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtcSettings {
    /// UDP port carrying all media, 1-65535. Default: 7882.
    pub udp_port: u16,
    /// Media UDP listen address. Default: 0.0.0.0 (all interfaces).
    pub bind: IpAddr,
    /// Addresses put in ICE candidates, without duplicates; empty means every
    /// address of every up interface. Never contains 0.0.0.0 or ::.
    /// Default: empty.
    pub node_ips: Vec<IpAddr>,
    /// Also advertise loopback addresses in ICE candidates.
    /// Default: false; with `--dev`: true.
    pub include_loopback: bool,
    /// Serve the single-peer-connection `/rtc/v1` path; when false it answers
    /// 404 and SDKs fall back to `/rtc`. Default: true.
    pub v1_enabled: bool,
    /// Estimate each subscriber's downlink (send-side, from its congestion feedback) and
    /// choose its simulcast layers by it (`docs/media.md`, layer allocation). When false,
    /// every subscriber gets the layer it asks for whatever its link. Default: true.
    pub bandwidth_estimation: bool,
    /// Largest accepted signalling message, in bytes, 1024 to 67108864
    /// (64 MiB). Default: 1048576 (1 MiB).
    pub max_signal_message_bytes: usize,
    /// Number of media threads, 1 to 256; each runs its own media core over
    /// its own rooms (a room is placed on the least-loaded thread), and all
    /// share the one UDP port. Configured as 0 (automatic), or not at all, it
    /// is resolved at loading. Default: the number of cores available to the
    /// process (`std::thread::available_parallelism()`, at most 256; 1 if
    /// unknown).
    pub media_threads: usize,
}

/// Room settings (`[rooms]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomSettings {
    /// Create a room when the first participant joins it. Default: true,
    /// but false when MatrixRTC authorisation is enabled outside `--dev`
    /// (rooms are then created for users of full-access homeservers only);
    /// with `--dev`: true.
    pub auto_create: bool,
}

/// MatrixRTC authorisation settings (`[matrixrtc]`): the lk-jwt-service
/// compatible endpoints that exchange a Matrix OpenID token for an access
/// token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatrixRtcSettings {
    /// Serve the MatrixRTC authorisation endpoints (`/sfu/get`,
    /// `/get_token`). Default: false, but true when
    /// `LIVEKIT_FULL_ACCESS_HOMESERVERS` is set and `matrixrtc.enabled` is
    /// not given; with `--dev`: true.
    pub enabled: bool,
    /// Server names whose users may create rooms; `["*"]` = everyone
    /// (`*` only appears alone). Entries are non-empty, without whitespace or
    /// duplicates. Never empty when `enabled`. Default: empty; with `--dev`:
    /// `["*"]`.
    pub full_access_homeservers: Vec<String>,
    /// WebSocket URL handed to clients as `url` (ws://, wss://, http:// or
    /// https://). Always set after loading: when not given, it is
    /// [`Settings::ws_url`].
    pub public_url: String,
    /// Server name -> base URL (http:// or https://, without trailing `/`) of
    /// its federation/openid listener, e.g. `http://127.0.0.1:8008`,
    /// overriding Matrix server discovery. Default: empty.
    pub homeserver_urls: BTreeMap<String, String>,
}

impl MatrixRtcSettings {
    /// Whether users of `server_name` have full access (may cause rooms to be
    /// created): the name is in `full_access_homeservers` (exact match), or
    /// the list is `["*"]`.
    pub fn is_full_access(&self, server_name: &str) -> bool {
        self.full_access_homeservers
            .iter()
            .any(|name| name == "*" || name == server_name)
    }
}

/// Logging settings (`[log]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogSettings {
    /// Output format. Default: text.
    pub format: LogFormat,
}

/// Log output format (`log.format`, `--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines (`text`). The default.
    #[default]
    Text,
    /// One JSON object per line (`json`).
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: BTreeMap<&str, &str> = self
            .keys
            .keys()
            .map(|k| (k.as_str(), "<redacted>"))
            .collect();
        f.debug_struct("Settings")
            .field("dev", &self.dev)
            .field("http", &self.http)
            .field("rtc", &self.rtc)
            .field("keys", &keys)
            .field("rooms", &self.rooms)
            .field("matrixrtc", &self.matrixrtc)
            .field("log", &self.log)
            .finish()
    }
}

impl Settings {
    /// Reads the file named by `--config` (if any) and the process environment,
    /// and applies precedence (see [`Settings::from_sources`]).
    ///
    /// Only `SWITCHBOARD_*` variables, the LiveKit key variables and
    /// lk-jwt-service's `LIVEKIT_FULL_ACCESS_HOMESERVERS` and `LIVEKIT_URL` are
    /// looked at; files named by `LIVEKIT_*_FILE` variables are read from
    /// disk.
    pub fn load(cli: &Cli) -> Result<Settings, ConfigError> {
        let text = match &cli.config {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|source| {
                ConfigError::ReadConfigFile {
                    path: path.clone(),
                    source,
                }
            })?),
            None => None,
        };
        let env = process_env()?;
        let file = text.as_deref().map(|t| (t, cli.config.as_deref()));
        resolve(cli, &env, file, &|path: &Path| {
            std::fs::read_to_string(path)
        })
    }

    /// Pure version of [`Settings::load`] for tests: `env` is the environment
    /// as a map, `file` the TOML text (`None` = no file). `read_file` resolves
    /// the files named by `LIVEKIT_KEY_FILE`, `LIVEKIT_KEY_FROM_FILE` and
    /// `LIVEKIT_SECRET_FROM_FILE`. `cli.config` is not read here.
    ///
    /// Precedence: flags > environment > file > `--dev` defaults > built-in
    /// defaults; keys come as a whole from the highest level that has any.
    pub fn from_sources(
        cli: &Cli,
        env: &BTreeMap<String, String>,
        file: Option<&str>,
        read_file: &dyn Fn(&Path) -> std::io::Result<String>,
    ) -> Result<Settings, ConfigError> {
        resolve(cli, env, file.map(|t| (t, None)), read_file)
    }

    /// The WebSocket URL clients should use, e.g. `ws://127.0.0.1:7880`:
    /// the HTTP bind address and port, with 0.0.0.0 shown as 127.0.0.1, :: as
    /// ::1, and IPv6 addresses in brackets.
    pub fn ws_url(&self) -> String {
        let host = match self.http.bind {
            IpAddr::V4(ip) if ip.is_unspecified() => Ipv4Addr::LOCALHOST.to_string(),
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) if ip.is_unspecified() => format!("[{}]", Ipv6Addr::LOCALHOST),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        format!("ws://{host}:{}", self.http.port)
    }
}

/// The relevant part of the process environment.
fn process_env() -> Result<BTreeMap<String, String>, ConfigError> {
    let mut env = BTreeMap::new();
    for (name, value) in std::env::vars_os() {
        let lossy = name.to_string_lossy();
        if !env::is_relevant(&lossy) {
            continue;
        }
        match (name.to_str(), value.into_string()) {
            (Some(name), Ok(value)) => {
                env.insert(name.to_owned(), value);
            }
            _ => {
                return Err(ConfigError::NonUnicodeEnv {
                    var: lossy.into_owned(),
                })
            }
        }
    }
    Ok(env)
}

/// The flags as a level.
fn flag_layer(cli: &Cli) -> Result<Layer, ConfigError> {
    use layer::Field;
    let port = |field: Field, flag: &'static str, value: Option<u16>| match value {
        Some(0) => Err(field.invalid("0".into(), &ValueSource::Flag(flag))),
        other => Ok(other),
    };
    let node_ips = if cli.node_ips.is_empty() {
        None
    } else {
        let rendered = || {
            let list: Vec<String> = cli.node_ips.iter().map(IpAddr::to_string).collect();
            list.join(",")
        };
        Some(check_ip_list(cli.node_ips.clone()).ok_or_else(|| {
            Field::RtcNodeIps.invalid(rendered(), &ValueSource::Flag("--node-ip"))
        })?)
    };
    let media_threads = cli
        .media_threads
        .map(|n| {
            i64::try_from(n)
                .ok()
                .and_then(check_threads)
                .ok_or_else(|| {
                    Field::RtcMediaThreads
                        .invalid(n.to_string(), &ValueSource::Flag("--media-threads"))
                })
        })
        .transpose()?;
    Ok(Layer {
        http_bind: cli.bind,
        http_port: port(Field::HttpPort, "--port", cli.port)?,
        rtc_udp_port: port(Field::RtcUdpPort, "--udp-port", cli.udp_port)?,
        rtc_bind: cli.rtc_bind,
        rtc_node_ips: node_ips,
        rtc_v1_enabled: cli.disable_rtc_v1.then_some(false),
        rtc_media_threads: media_threads,
        log_format: cli.log_format,
        ..Layer::default()
    })
}

/// The `--dev` defaults as a level.
fn dev_layer() -> Layer {
    let mut keys = KeySet::new();
    keys.insert(
        DEV_API_KEY.to_owned(),
        (DEV_API_SECRET.to_owned(), ValueSource::Flag("--dev")),
    );
    Layer {
        http_bind: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        keys: Some(keys),
        rooms_auto_create: Some(true),
        rtc_include_loopback: Some(true),
        matrixrtc_enabled: Some(true),
        matrixrtc_full_access_homeservers: Some(vec!["*".to_owned()]),
        ..Layer::default()
    }
}

/// Loads every level and merges them.
fn resolve(
    cli: &Cli,
    env: &BTreeMap<String, String>,
    file: Option<(&str, Option<&Path>)>,
    read_file: &dyn Fn(&Path) -> std::io::Result<String>,
) -> Result<Settings, ConfigError> {
    let flags = flag_layer(cli)?;
    let file = match file {
        Some((text, path)) => file::parse(text, path)?,
        None => Layer::default(),
    };
    let env = env::parse(env, read_file)?;
    let dev = if cli.dev {
        dev_layer()
    } else {
        Layer::default()
    };
    // Highest precedence first.
    let levels = [flags, env, file, dev];
    macro_rules! pick {
        ($field:ident, $default:expr) => {
            levels
                .iter()
                .find_map(|level| level.$field.clone())
                .unwrap_or($default)
        };
    }

    let keys: BTreeMap<String, String> = pick!(keys, KeySet::new())
        .into_iter()
        .map(|(key, (secret, _))| (key, secret))
        .collect();
    if keys.is_empty() {
        return Err(ConfigError::NoKeys);
    }

    let matrixrtc_enabled = pick!(matrixrtc_enabled, pick!(matrixrtc_enabled_implied, false));
    let full_access_homeservers = pick!(matrixrtc_full_access_homeservers, Vec::new());
    if matrixrtc_enabled && full_access_homeservers.is_empty() {
        let setting = layer::Field::MatrixRtcFullAccessHomeservers;
        return Err(ConfigError::Required {
            setting: setting.name(),
            condition: "MatrixRTC authorisation is enabled".into(),
            expected: "server names, or [\"*\"]".into(),
            hint: format!(
                "set it in the config file, {} or {}",
                setting.env_var(),
                env::LIVEKIT_FULL_ACCESS_HOMESERVERS
            ),
        });
    }

    let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    let mut settings = Settings {
        dev: cli.dev,
        http: HttpSettings {
            bind: pick!(http_bind, any),
            port: pick!(http_port, DEFAULT_HTTP_PORT),
        },
        rtc: RtcSettings {
            udp_port: pick!(rtc_udp_port, DEFAULT_UDP_PORT),
            bind: pick!(rtc_bind, any),
            node_ips: pick!(rtc_node_ips, Vec::new()),
            include_loopback: pick!(rtc_include_loopback, false),
            v1_enabled: pick!(rtc_v1_enabled, true),
            bandwidth_estimation: pick!(rtc_bandwidth_estimation, true),
            max_signal_message_bytes: pick!(
                rtc_max_signal_message_bytes,
                DEFAULT_MAX_SIGNAL_MESSAGE_BYTES
            ),
            media_threads: match pick!(rtc_media_threads, 0) {
                0 => one_per_core(std::thread::available_parallelism()),
                n => n,
            },
        },
        keys,
        rooms: RoomSettings {
            // With --dev the dev level gives true; outside it, MatrixRTC
            // authorisation decides who may create rooms.
            auto_create: pick!(rooms_auto_create, !matrixrtc_enabled),
        },
        matrixrtc: MatrixRtcSettings {
            enabled: matrixrtc_enabled,
            full_access_homeservers,
            public_url: String::new(),
            homeserver_urls: pick!(matrixrtc_homeserver_urls, BTreeMap::new()),
        },
        log: LogSettings {
            format: pick!(log_format, LogFormat::Text),
        },
    };
    settings.matrixrtc.public_url = pick!(matrixrtc_public_url, settings.ws_url());
    Ok(settings)
}

/// The automatic `rtc.media_threads`: the number of cores available to the
/// process (`cores`, from `available_parallelism`), at most
/// [`MAX_MEDIA_THREADS`]; 1 when it cannot be known.
fn one_per_core(cores: std::io::Result<NonZeroUsize>) -> usize {
    cores.map_or(1, NonZeroUsize::get).min(MAX_MEDIA_THREADS)
}
