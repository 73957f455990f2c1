//! `switchboard-loadtest`: load generator and benchmark runner for Switchboard.
//!
//! `floor` measures the machine's forwarding floor (`performance-anchors.md` §8); `run` drives
//! the LiveKit-protocol scenarios B1–B5 against a server and, with `--server-pid`, reports its
//! CPU per forwarded packet as a ratio to that floor (`R_floor`). Figures go to
//! `docs/benchmarks.md`.

mod cpu;
mod floor;
mod procfs;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "switchboard-loadtest", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
// Parsed once at start-up: the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Cmd {
    /// The physical floor: a plain UDP relay doing one AES-256-GCM decrypt per packet in and
    /// one encrypt + sendto per packet out, fanning out over loopback. Prints the relay's CPU
    /// µs per forwarded packet.
    Floor {
        /// Packets per second into the relay.
        #[arg(long, default_value_t = 180)]
        packets_per_second: u32,
        /// Receivers per packet.
        #[arg(long, default_value_t = 50)]
        fanout: u32,
        /// Payload bytes per packet (VP8 ~1000, Opus ~120).
        #[arg(long, default_value_t = 1000)]
        payload_bytes: usize,
        /// Seconds to send.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Pin the relay thread to this CPU core.
        #[arg(long)]
        relay_cpu: Option<usize>,
        /// Also write the report as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Run a scenario against a server: simulated LiveKit participants (`/rtc`, webrtc or str0m
    /// peer connections) send synthetic Opus/VP8 and measure loss, latency and join times; with
    /// `--server-pid` also the server's CPU per forwarded packet, memory and `R_floor`.
    Run {
        /// Signalling URL of the server.
        #[arg(long, default_value = "ws://127.0.0.1:7880")]
        url: url::Url,
        /// API key the tokens name.
        #[arg(long, env = "LIVEKIT_API_KEY")]
        api_key: String,
        /// API secret that signs them.
        #[arg(long, env = "LIVEKIT_API_SECRET")]
        api_secret: String,
        /// B1 voice call, B2 grid, B3 webinar, B4 latency at 10/50/80 % of --subscribers,
        /// B5 joins.
        #[arg(long, value_enum, ignore_case = true)]
        scenario: run::Scenario,
        /// B1/B4: audio publishers.
        #[arg(long, default_value_t = 10)]
        publishers: u32,
        /// B1/B3: subscribers; a comma list sweeps (10,25,50). B4: the capacity.
        #[arg(long, value_delimiter = ',', default_value = "10")]
        subscribers: Vec<u32>,
        /// B2: participants (comma list sweeps); B5: sequential joiners.
        #[arg(long, value_delimiter = ',', default_value = "4")]
        participants: Vec<u32>,
        /// B5: joiners in the storm (10/s).
        #[arg(long, default_value_t = 50)]
        storm: u32,
        /// Measurement window per point, seconds.
        #[arg(long, default_value_t = 30.0)]
        duration: f64,
        /// Warm-up per point after everyone joined, seconds.
        #[arg(long, default_value_t = 10.0)]
        warmup: f64,
        /// Joins per second while a point fills up.
        #[arg(long, default_value_t = 25.0)]
        join_rate: f64,
        /// The server's pid: read its CPU and memory from /proc and measure the floor.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Pin every server thread (and the floor's relay) to this core.
        #[arg(long)]
        server_cpu: Option<usize>,
        /// Pin this tool to this core.
        #[arg(long)]
        cpu: Option<usize>,
        /// Skip the floor measurement.
        #[arg(long)]
        no_floor: bool,
        /// The participants' WebRTC implementation: `str0m` (the server's own library) or
        /// `webrtc` (the webrtc crate 0.21, a stranger to the server, but ~1.7x the CPU per
        /// received packet: one core saturates near 75k packets/s).
        #[arg(long, value_enum, default_value = "str0m")]
        stack: run::peer::Stack,
        /// Address the simulated participants' media sockets bind to (default: the one that
        /// routes to the --url host).
        #[arg(long)]
        local_ip: Option<std::net::IpAddr>,
        /// Signal on `/rtc/v1` with one peer connection per participant (livekit-client's
        /// default) instead of `/rtc` with two; str0m stack only.
        #[arg(long)]
        single_pc: bool,
        /// Write the JSON report here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Draw cost per packet, loss and latency against load as SVG here.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    // Logs of the WebRTC stacks, off unless asked for (SB_LOADTEST_LOG=str0m=debug, …).
    if let Ok(filter) = std::env::var("SB_LOADTEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .try_init();
    }
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard-loadtest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn secs(name: &str, v: f64) -> anyhow::Result<Duration> {
    if !(v.is_finite() && (0.0..=3600.0).contains(&v)) {
        anyhow::bail!("--{name} must be between 0 and 3600 seconds");
    }
    Ok(Duration::from_secs_f64(v))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run {
            url,
            api_key,
            api_secret,
            scenario,
            publishers,
            subscribers,
            participants,
            storm,
            duration,
            warmup,
            join_rate,
            server_pid,
            server_cpu,
            cpu,
            no_floor,
            stack,
            local_ip,
            single_pc,
            json,
            plot,
        } => {
            let duration = secs("duration", duration)?;
            if duration.is_zero() {
                anyhow::bail!("--duration must be more than 0 seconds");
            }
            if !(join_rate.is_finite() && join_rate > 0.0) {
                anyhow::bail!("--join-rate must be more than 0");
            }
            if subscribers.is_empty() || participants.is_empty() {
                anyhow::bail!("--subscribers and --participants need at least one number");
            }
            if let Some(core) = cpu {
                cpu::pin_current_thread(core).map_err(|e| anyhow::anyhow!("--cpu {core}: {e}"))?;
            }
            let params = run::RunParams {
                url,
                api_key,
                api_secret,
                scenario,
                publishers,
                subscribers,
                participants,
                storm,
                duration,
                warmup: secs("warmup", warmup)?,
                join_rate,
                server_pid,
                server_cpu,
                no_floor,
                stack,
                local_ip,
                single_pc,
            };
            let points = run::run(&params)?;
            println!("{}", run::report::table(&points));
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&run::report::json(&points))?;
                std::fs::write(&path, text + "\n")
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            }
            if let Some(path) = plot {
                run::report::plot(&points, &path)?;
            }
            Ok(())
        }
        Cmd::Floor {
            packets_per_second,
            fanout,
            payload_bytes,
            duration,
            relay_cpu,
            json,
        } => {
            if !(duration.is_finite() && duration > 0.0 && duration <= 3600.0) {
                anyhow::bail!("--duration must be between 0 and 3600 seconds");
            }
            if payload_bytes == 0 || payload_bytes > 1400 {
                anyhow::bail!("--payload-bytes must be 1..=1400");
            }
            let r = floor::measure(&floor::FloorParams {
                packets_per_second,
                fanout,
                payload_bytes,
                duration: Duration::from_secs_f64(duration),
                relay_core: relay_cpu,
            })?;
            println!(
                "floor ({}): {} packets/s × fanout {} ({} B payload): received {}, forwarded {}, \
                 delivered {}, relay CPU {:.3} s over {:.2} s → {:.2} µs per forwarded packet",
                r.cipher,
                r.packets_per_second,
                r.fanout,
                r.payload_bytes,
                r.received,
                r.forwarded,
                r.delivered,
                r.relay_cpu_s,
                r.wall_s,
                r.us_per_forwarded_packet
            );
            if r.decrypt_failures > 0 {
                anyhow::bail!("{} packets failed to decrypt", r.decrypt_failures);
            }
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&r)?;
                std::fs::write(&path, text + "\n")
                    .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
            }
            Ok(())
        }
    }
}
