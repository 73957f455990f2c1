//! Command line of the `switchboard` binary.

use std::net::IpAddr;
use std::path::PathBuf;

use crate::LogFormat;

/// Command line of the `switchboard` binary (clap derive).
///
/// Flags have the highest precedence: they override the environment, the
/// config file, the `--dev` defaults and the built-in defaults. A flag that is
/// not given leaves the setting to the lower levels. Flags are parsed by clap
/// only; clap does not read the environment itself (environment variables are
/// handled by [`Settings::load`](crate::Settings::load)).
#[derive(clap::Parser, Debug, Clone, Default)]
#[command(
    name = "switchboard",
    version,
    about = "Self-hosted LiveKit-compatible media server (SFU) for Matrix calls",
    long_about = None
)]
pub struct Cli {
    /// Development mode: HTTP on 127.0.0.1, API key `devkey` with secret
    /// `secret` (unless keys are configured elsewhere), loopback addresses
    /// advertised in ICE candidates, MatrixRTC authorisation on with full
    /// access for every homeserver. Default: off.
    #[arg(long)]
    pub dev: bool,

    /// TOML config file to read. Default: none (no file is read).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// HTTP/WebSocket listen address (`http.bind`). Default: 0.0.0.0;
    /// 127.0.0.1 with --dev.
    #[arg(long, value_name = "ADDR")]
    pub bind: Option<IpAddr>,

    /// HTTP/WebSocket listen port, 1-65535 (`http.port`). Default: 7880.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,

    /// Media UDP listen address (`rtc.bind`); narrows where media is received.
    /// Default: 0.0.0.0 (all interfaces).
    #[arg(long = "rtc-bind", value_name = "ADDR")]
    pub rtc_bind: Option<IpAddr>,

    /// UDP port for all media traffic, 1-65535 (`rtc.udp_port`).
    /// Default: 7882.
    #[arg(long = "udp-port", value_name = "PORT")]
    pub udp_port: Option<u16>,

    /// IP address to put in ICE candidates; repeat the flag for several
    /// (`rtc.node_ips`). Default: every address of every up interface.
    #[arg(long = "node-ip", value_name = "IP")]
    pub node_ips: Vec<IpAddr>,

    /// Number of media threads, each running its own media core over its own
    /// rooms, 1-256, or 0 for one per core (`rtc.media_threads`). Media still
    /// uses the one UDP port. Default: one per core available to the process.
    #[arg(long = "media-threads", value_name = "N")]
    pub media_threads: Option<usize>,

    /// Log output format (`log.format`). Default: text.
    #[arg(long = "log-format", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Disable the single-peer-connection /rtc/v1 signalling path: it answers
    /// 404 and SDKs fall back to /rtc (sets `rtc.v1_enabled = false`).
    #[arg(long = "disable-rtc-v1")]
    pub disable_rtc_v1: bool,
}
