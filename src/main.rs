//! The `switchboard` binary: reads settings, starts the media plane and the HTTP/WebSocket
//! server, and runs until SIGINT/SIGTERM.

use std::net::{IpAddr, SocketAddr};

use anyhow::Context;
use clap::Parser;
use switchboard_config::{Cli, LogFormat, Settings};
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = Cli::parse();
    let settings = match Settings::load(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("switchboard: {e}");
            std::process::exit(2);
        }
    };
    init_logging(settings.log.format);
    if let Err(e) = run(settings) {
        eprintln!("switchboard: {e:#}");
        std::process::exit(1);
    }
}

fn init_logging(format: LogFormat) {
    // str0m warns about peer quirks it handles (e.g. RED payload-type changes); keep those out
    // of the default log. RUST_LOG overrides this.
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,str0m=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Addresses for ICE host candidates: `--node-ip`/`rtc.node_ips`, else every up interface
/// address except link-local (and loopback unless `include_loopback`).
fn candidate_ips(settings: &Settings) -> anyhow::Result<Vec<IpAddr>> {
    if !settings.rtc.node_ips.is_empty() {
        return Ok(settings.rtc.node_ips.clone());
    }
    let mut ips: Vec<IpAddr> = if_addrs::get_if_addrs()
        .context("listing network interfaces for ICE candidates")?
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local() && !v6.is_unspecified(),
        })
        .filter(|ip| settings.rtc.include_loopback || !ip.is_loopback())
        .filter(|ip| settings.rtc.bind.is_unspecified() || *ip == settings.rtc.bind)
        .collect();
    // The media socket is IPv4 unless bound to an IPv6 address.
    ips.retain(|ip| ip.is_ipv4() == settings.rtc.bind.is_ipv4());
    ips.sort();
    ips.dedup();
    anyhow::ensure!(
        !ips.is_empty(),
        "rtc.node_ips: no usable interface address found; set --node-ip"
    );
    Ok(ips)
}

fn run(settings: Settings) -> anyhow::Result<()> {
    let ips = candidate_ips(&settings)?;
    let rtc_addr = SocketAddr::new(settings.rtc.bind, settings.rtc.udp_port);
    let sfu = switchboard_sfu::start(switchboard_sfu::SfuConfig {
        bind: rtc_addr,
        candidate_ips: ips.clone(),
        media_threads: settings.rtc.media_threads,
        bandwidth_estimation: settings.rtc.bandwidth_estimation,
    })?;
    let http_addr = SocketAddr::new(settings.http.bind, settings.http.port);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(http_addr)
            .await
            .with_context(|| format!("http.bind: cannot listen on {http_addr}"))?;
        let ws_url = settings.ws_url();
        let ips_text: Vec<String> = ips.iter().map(ToString::to_string).collect();
        println!("switchboard {} listening", env!("CARGO_PKG_VERSION"));
        println!("  signalling  {ws_url}  (HTTP/WebSocket on {http_addr})");
        println!(
            "  media       UDP {rtc_addr}, ICE candidates {}, {} media thread(s)",
            ips_text.join(", "),
            settings.rtc.media_threads
        );
        let m = &settings.matrixrtc;
        if m.enabled {
            println!(
                "  matrixrtc   POST /sfu/get, /get_token; full access: {}; url given to clients: {}",
                m.full_access_homeservers.join(", "),
                m.public_url
            );
            if !settings.dev && m.public_url.contains("://127.0.0.1") {
                tracing::warn!(
                    url = %m.public_url,
                    "matrixrtc.public_url is a loopback address; remote clients cannot reach it"
                );
            }
        }
        if settings.dev {
            for (key, secret) in &settings.keys {
                println!("  dev API key {key}  secret {secret}");
            }
        }
        let state = switchboard_signalling::AppState::new(settings, sfu);
        let app = switchboard_signalling::router(state);
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
            .with_graceful_shutdown(shutdown())
            .await
            .context("http server")
    })
}

async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}
