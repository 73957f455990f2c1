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
    Run(run::RunArgs),
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

/// Writes `value` as pretty JSON to `path`.
fn write_json(path: &std::path::Path, value: &impl serde::Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n")
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Run(args) => {
            args.validate()?;
            if let Some(core) = args.cpu {
                cpu::pin_current_thread(core).map_err(|e| anyhow::anyhow!("--cpu {core}: {e}"))?;
            }
            let points = run::run(&args)?;
            println!("{}", run::report::table(&points));
            if let Some(path) = &args.json {
                write_json(path, &run::report::json(&points))?;
            }
            if let Some(path) = &args.plot {
                run::report::plot(&points, path)?;
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
                write_json(&path, &r)?;
            }
            Ok(())
        }
    }
}
