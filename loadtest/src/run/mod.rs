//! `switchboard-loadtest run`: the benchmark scenarios of `performance-anchors.md` §8.2
//! against a running server, with simulated LiveKit participants ([`participant`]).
//!
//! A run is one or more *points* (e.g. B1 at S = 10, 25, 50). Each point: participants join
//! (publishers first), a warm-up, a measurement window in which subscribers count packets,
//! loss and latency and the server's `/proc` CPU and memory are read, then everyone leaves.
//! With `--server-pid` the floor ([`crate::floor`]) is measured after each point with the
//! same fan-out and packet size, pinned like the server, giving `R_floor`.

pub mod participant;
pub mod peer;
mod peer_str0m;
mod peer_webrtc;
pub mod report;
pub mod stats;
pub mod synth;
pub mod tx;

use std::io::Write as _;
use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use livekit_protocol as proto;
use prost::Message as _;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::floor::{self, FloorParams};
use crate::procfs;
use participant::{ParticipantError, Spec, Target};
use report::{Percentiles, PointReport};
use stats::{percentile_ms, ParticipantReport, RxStats, Shared};

/// The scenarios (`performance-anchors.md` §8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Scenario {
    /// Voice call: P audio publishers × S subscribers taking all of them.
    B1,
    /// Grid: N participants, each publishing audio + simulcast video and seeing everyone
    /// (asking for `h` up to 9 participants, `q` above).
    B2,
    /// Webinar: 1 audio + video publisher, S viewers on the full layer.
    B3,
    /// Forwarding latency: B1 at 10, 50 and 80 % of the capacity given as `--subscribers`.
    B4,
    /// Joins: N sequential joins into a room with one audio + video publisher, then a storm of
    /// `--storm` joiners at 10/s, then idle participants for resident memory.
    B5,
}

/// What `run` was asked to do: the `run` subcommand's options (clap).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Signalling URL of the server.
    #[arg(long, default_value = "ws://127.0.0.1:7880")]
    pub url: url::Url,
    /// API key the tokens name.
    #[arg(long, env = "LIVEKIT_API_KEY")]
    pub api_key: String,
    /// API secret that signs them.
    #[arg(long, env = "LIVEKIT_API_SECRET")]
    pub api_secret: String,
    /// B1 voice call, B2 grid, B3 webinar, B4 latency at 10/50/80 % of --subscribers,
    /// B5 joins.
    #[arg(long, value_enum, ignore_case = true)]
    pub scenario: Scenario,
    /// B1/B4: audio publishers.
    #[arg(long, default_value_t = 10)]
    pub publishers: u32,
    /// B1/B3: subscribers; a comma list sweeps (10,25,50). B4: the capacity.
    #[arg(long, value_delimiter = ',', default_value = "10")]
    pub subscribers: Vec<u32>,
    /// B2: participants (comma list sweeps); B5: sequential joiners.
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub participants: Vec<u32>,
    /// B5: joiners in the storm (10/s).
    #[arg(long, default_value_t = 50)]
    pub storm: u32,
    /// Measurement window per point, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,
    /// Warm-up per point after everyone joined, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub warmup: f64,
    /// Joins per second while a point fills up.
    #[arg(long, default_value_t = 25.0)]
    pub join_rate: f64,
    /// The server's pid: read its CPU and memory from /proc and measure the floor.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Pin every server thread (and the floor's relay) to this core.
    #[arg(long)]
    pub server_cpu: Option<usize>,
    /// Pin this tool to this core.
    #[arg(long)]
    pub cpu: Option<usize>,
    /// Skip the floor measurement.
    #[arg(long)]
    pub no_floor: bool,
    /// The participants' WebRTC implementation: `str0m` (the server's own library) or
    /// `webrtc` (the webrtc crate 0.21, a stranger to the server, but ~1.7x the CPU per
    /// received packet: one core saturates near 75k packets/s).
    #[arg(long, value_enum, default_value = "str0m")]
    pub stack: peer::Stack,
    /// Address the simulated participants' media sockets bind to (default: the one that
    /// routes to the --url host).
    #[arg(long)]
    pub local_ip: Option<IpAddr>,
    /// Signal on `/rtc/v1` with one peer connection per participant (livekit-client's
    /// default) instead of `/rtc` with two; str0m stack only.
    #[arg(long)]
    pub single_pc: bool,
    /// Write the JSON report here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Draw cost per packet, loss and latency against load as SVG here.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

impl RunArgs {
    /// Checks the numbers clap cannot.
    ///
    /// # Errors
    /// One line naming the option at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, v) in [("duration", self.duration), ("warmup", self.warmup)] {
            if !(v.is_finite() && (0.0..=3600.0).contains(&v)) {
                anyhow::bail!("--{name} must be between 0 and 3600 seconds");
            }
        }
        if self.duration == 0.0 {
            anyhow::bail!("--duration must be more than 0 seconds");
        }
        if !(self.join_rate.is_finite() && self.join_rate > 0.0) {
            anyhow::bail!("--join-rate must be more than 0");
        }
        if self.subscribers.is_empty() || self.participants.is_empty() {
            anyhow::bail!("--subscribers and --participants need at least one number");
        }
        if self.single_pc && self.stack == peer::Stack::Webrtc {
            anyhow::bail!("--single-pc (/rtc/v1) is built for --stack str0m only");
        }
        Ok(())
    }

    fn window(&self) -> Duration {
        Duration::from_secs_f64(self.duration)
    }

    fn warm(&self) -> Duration {
        Duration::from_secs_f64(self.warmup)
    }
}

/// One group of joiners inside a point.
struct Phase {
    /// Name in the report (`subscribers`, `sequential`, `storm`, `idle`…).
    group: &'static str,
    specs: Vec<Spec>,
    /// Pause between two joins (`None`: wait until each is ready before the next).
    pace: Option<Duration>,
    /// Joins of this group count in the report's `join_ms`.
    counts_for_join: bool,
}

fn phase(
    group: &'static str,
    specs: Vec<Spec>,
    pace: Option<Duration>,
    counts_for_join: bool,
) -> Phase {
    Phase {
        group,
        specs,
        pace,
        counts_for_join,
    }
}

/// A point to run.
struct Plan {
    label: String,
    phases: Vec<Phase>,
    publishers: u32,
    subscribers: u32,
    /// Floor shape: packets/s into the relay, fan-out, payload bytes.
    floor: (u32, u32, usize),
}

/// Runs the scenario's points and returns their reports.
///
/// # Errors
/// A clear one-line error when the server is unreachable, the key is refused, or every
/// participant of a point failed.
pub fn run(p: &RunArgs) -> anyhow::Result<Vec<PointReport>> {
    let rt = match p.stack {
        peer::Stack::Str0m => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        // webrtc's connection drivers are tasks of their own; one worker beside this thread.
        peer::Stack::Webrtc => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?,
    };
    rt.block_on(run_async(p))
}

async fn run_async(p: &RunArgs) -> anyhow::Result<Vec<PointReport>> {
    match p.url.scheme() {
        "ws" => {}
        "wss" => {
            anyhow::bail!("--url: wss:// is not supported; point it at the plain ws:// listener")
        }
        other => anyhow::bail!("--url: scheme {other}:// is not ws://"),
    }
    p.validate()?;
    let local_ip = match p.local_ip {
        Some(ip) => ip,
        None => local_ip_towards(&p.url)?,
    };
    let target = Arc::new(Target {
        url: p.url.clone(),
        api_key: p.api_key.clone(),
        api_secret: p.api_secret.clone(),
        local_ip,
        stack: p.stack,
        single_pc: p.single_pc,
    });
    preflight(&target).await?;
    if let (Some(pid), Some(core)) = (p.server_pid, p.server_cpu) {
        procfs::pin_process(pid, core)?;
    }
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() % 1_000_000)
        .unwrap_or(0);
    let mut reports = Vec::new();
    for (i, plan) in plans(p, run_id).into_iter().enumerate() {
        let mut r = run_point(p, &target, plan, i).await?;
        if let (Some(_), false) = (p.server_pid, p.no_floor) {
            let (pps, fanout, payload) = r.floor_shape;
            let f = floor::measure(&FloorParams {
                packets_per_second: pps,
                fanout,
                payload_bytes: payload,
                duration: Duration::from_secs(5),
                relay_core: p.server_cpu,
            })?;
            r.floor_us_per_forwarded_packet = Some(f.us_per_forwarded_packet);
            r.r_floor = r
                .server_cpu_us_per_forwarded_packet
                .map(|s| s / f.us_per_forwarded_packet);
        }
        eprintln!("{}", r.summary_line());
        reports.push(r);
    }
    Ok(reports)
}

/// The local address our UDP sockets use: the one the kernel routes towards the server.
fn local_ip_towards(url: &url::Url) -> anyhow::Result<IpAddr> {
    let host = url
        .host_str()
        .ok_or_else(|| anyhow::anyhow!("--url has no host"))?;
    let port = url.port_or_known_default().unwrap_or(7880);
    let addr = (host.trim_matches(|c| c == '[' || c == ']'), port)
        .to_socket_addrs()
        .map_err(|e| anyhow::anyhow!("--url: cannot resolve {host}: {e}"))?
        .next()
        .ok_or_else(|| anyhow::anyhow!("--url: {host} has no address"))?;
    let probe = UdpSocket::bind(if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    probe.connect(addr)?;
    Ok(probe.local_addr()?.ip())
}

/// Joins and leaves once, so a wrong URL or key ends the run with one clear line.
async fn preflight(target: &Target) -> anyhow::Result<()> {
    let spec = Spec {
        identity: "loadtest-preflight".into(),
        room: "loadtest-preflight".into(),
        audio: false,
        video: false,
        subscribe: false,
        expect_media: false,
        quality: proto::VideoQuality::High,
        stream_base: 0,
    };
    let token = participant::mint_token(target, &spec)?;
    let mut url = target.url.clone();
    url.set_path("/rtc");
    url.query_pairs_mut()
        .append_pair("access_token", &token)
        .append_pair("auto_subscribe", "0")
        .append_pair("protocol", "16");
    let shown = format!("{}/rtc", target.url.as_str().trim_end_matches('/'));
    let connect = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(url.as_str()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("cannot join {shown}: no answer within 10 s"))?;
    let (mut ws, _) = connect.map_err(|e| {
        let hint = match &e {
            tokio_tungstenite::tungstenite::Error::Http(r) if r.status().as_u16() == 401 => {
                " (the server refused the token: check --api-key and --api-secret)"
            }
            tokio_tungstenite::tungstenite::Error::Io(_) => " (is the server running there?)",
            _ => "",
        };
        anyhow::anyhow!("cannot join {shown}: {e}{hint}")
    })?;
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .map_err(|_| anyhow::anyhow!("{shown}: no JoinResponse within 10 s"))?;
    let joined = match first {
        Some(Ok(WsMessage::Binary(b))) => matches!(
            proto::SignalResponse::decode(&b[..])
                .ok()
                .and_then(|r| r.message),
            Some(proto::signal_response::Message::Join(_))
        ),
        _ => false,
    };
    if !joined {
        anyhow::bail!("{shown}: the first message was not a LiveKit JoinResponse");
    }
    let leave = proto::SignalRequest {
        message: Some(proto::signal_request::Message::Leave(proto::LeaveRequest {
            reason: proto::DisconnectReason::ClientInitiated as i32,
            ..Default::default()
        })),
    };
    let _ = ws
        .send(WsMessage::Binary(leave.encode_to_vec().into()))
        .await;
    let _ = ws.close(None).await;
    Ok(())
}

fn spec(identity: String, room: &str, audio: bool, video: bool, subscribe: bool) -> Spec {
    Spec {
        identity,
        room: room.to_string(),
        audio,
        video,
        subscribe,
        expect_media: subscribe,
        quality: proto::VideoQuality::High,
        stream_base: 0,
    }
}

/// Publishers get stream ids 4·i … 4·i+3 (audio, q, h, f).
fn publishers(n: u32, room: &str, audio: bool, video: bool, subscribe: bool) -> Vec<Spec> {
    (0..n)
        .map(|i| Spec {
            stream_base: 4 * i,
            ..spec(format!("pub-{i}"), room, audio, video, subscribe)
        })
        .collect()
}

fn viewers(n: u32, prefix: &str, room: &str) -> Vec<Spec> {
    (0..n)
        .map(|i| spec(format!("{prefix}-{i}"), room, false, false, true))
        .collect()
}

/// Mean payload of the audio + full-layer mix one A+V publisher's subscriber receives.
fn av_payload() -> usize {
    let f = synth::VIDEO_LAYERS[2];
    let v = synth::layer_pps(&f);
    ((v * f.payload_bytes as f64 + synth::AUDIO_PPS * synth::AUDIO_PAYLOAD_BYTES as f64)
        / (v + synth::AUDIO_PPS)) as usize
}

fn plans(p: &RunArgs, run_id: u128) -> Vec<Plan> {
    let pace = Some(Duration::from_secs_f64(1.0 / p.join_rate.max(0.1)));
    let room = |label: &str| format!("lt-{run_id}-{label}");
    let b1 = |s: u32, label: String| {
        let r = room(&label);
        Plan {
            phases: vec![
                phase(
                    "publishers",
                    publishers(p.publishers, &r, true, false, false),
                    pace,
                    false,
                ),
                phase("subscribers", viewers(s, "sub", &r), pace, true),
            ],
            label,
            publishers: p.publishers,
            subscribers: s,
            floor: (
                (p.publishers * 50).max(1),
                s.max(1),
                synth::AUDIO_PAYLOAD_BYTES,
            ),
        }
    };
    match p.scenario {
        Scenario::B1 => p
            .subscribers
            .iter()
            .map(|&s| b1(s, format!("B1 P={} S={s}", p.publishers)))
            .collect(),
        Scenario::B4 => {
            let cap = p.subscribers.last().copied().unwrap_or(100);
            [10u32, 50, 80]
                .iter()
                .map(|pct| {
                    let s = (cap * pct / 100).max(1);
                    b1(s, format!("B4 {pct}% P={} S={s}", p.publishers))
                })
                .collect()
        }
        Scenario::B3 => p
            .subscribers
            .iter()
            .map(|&s| {
                let label = format!("B3 S={s}");
                let r = room(&label);
                Plan {
                    phases: vec![
                        phase(
                            "publishers",
                            publishers(1, &r, true, true, false),
                            pace,
                            false,
                        ),
                        phase("subscribers", viewers(s, "viewer", &r), pace, true),
                    ],
                    label,
                    publishers: 1,
                    subscribers: s,
                    floor: (230, s.max(1), av_payload()),
                }
            })
            .collect(),
        Scenario::B2 => p
            .participants
            .iter()
            .map(|&n| {
                let label = format!("B2 N={n}");
                let r = room(&label);
                let quality = if n <= 9 {
                    proto::VideoQuality::Medium
                } else {
                    proto::VideoQuality::Low
                };
                let specs = publishers(n, &r, true, true, true)
                    .into_iter()
                    .map(|s| Spec { quality, ..s })
                    .collect();
                let layer = if n <= 9 { 1 } else { 0 };
                let l = synth::VIDEO_LAYERS[layer];
                let v = synth::layer_pps(&l);
                let payload = ((v * l.payload_bytes as f64
                    + synth::AUDIO_PPS * synth::AUDIO_PAYLOAD_BYTES as f64)
                    / (v + synth::AUDIO_PPS)) as usize;
                Plan {
                    phases: vec![Phase {
                        group: "participants",
                        specs,
                        pace,
                        counts_for_join: true,
                    }],
                    label,
                    publishers: n,
                    subscribers: n,
                    floor: (
                        (n * (50 + v as u32)).max(1),
                        n.saturating_sub(1).max(1),
                        payload,
                    ),
                }
            })
            .collect(),
        Scenario::B5 => {
            let n = p.participants.last().copied().unwrap_or(20);
            let label = format!("B5 sequential={n} storm={}", p.storm);
            let r = room(&label);
            let idle_room = room("idle");
            vec![Plan {
                phases: vec![
                    phase(
                        "publishers",
                        publishers(1, &r, true, true, false),
                        pace,
                        false,
                    ),
                    phase("sequential", viewers(n, "seq", &r), None, true),
                    phase(
                        "storm",
                        viewers(p.storm, "storm", &r),
                        Some(Duration::from_millis(100)),
                        false,
                    ),
                    phase(
                        "idle",
                        (0..n.max(p.storm))
                            .map(|i| Spec {
                                expect_media: false,
                                ..spec(format!("idle-{i}"), &idle_room, false, false, true)
                            })
                            .collect(),
                        pace,
                        false,
                    ),
                ],
                label,
                publishers: 1,
                subscribers: n + p.storm,
                floor: (230, (n + p.storm).max(1), av_payload()),
            }]
        }
    }
}

struct Running {
    group: &'static str,
    counts_for_join: bool,
    handle: JoinHandle<ParticipantReport>,
}

/// The live progress line (stderr), redrawn at most once a second.
struct Progress {
    label: String,
    /// When it was last drawn, and the receive counter then.
    last: (Instant, u64),
}

impl Progress {
    fn new(label: &str) -> Self {
        Self {
            label: label.to_string(),
            last: (Instant::now(), 0),
        }
    }

    /// Redraws the line if a second has passed: participants ready/failed of `joined`,
    /// packets/s received since the last draw, loss since the start.
    fn tick(&mut self, phase: &str, shared: &Shared, joined: usize) {
        let now = Instant::now();
        let dt = now.duration_since(self.last.0).as_secs_f64();
        if dt < 1.0 {
            return;
        }
        let rx = shared.rx_packets.load(Ordering::Relaxed);
        let exp = shared.rx_expected.load(Ordering::Relaxed);
        let pps = rx.saturating_sub(self.last.1) as f64 / dt;
        let loss = if exp > 0 {
            100.0 * (1.0 - (rx.min(exp) as f64 / exp as f64))
        } else {
            0.0
        };
        self.last = (now, rx);
        eprint!(
            "\r[{}] {phase:<10} ready {}/{} failed {} | {:>8.0} pkt/s in | loss {:.2} %   ",
            self.label,
            shared.ready.load(Ordering::Relaxed),
            joined,
            shared.failed.load(Ordering::Relaxed),
            pps,
            loss
        );
        let _ = std::io::stderr().flush();
    }
}

async fn run_point(
    p: &RunArgs,
    target: &Arc<Target>,
    plan: Plan,
    index: usize,
) -> anyhow::Result<PointReport> {
    let shared = Arc::new(Shared::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let base_rss = p.server_pid.map(procfs::rss_bytes).transpose()?;
    let mut running: Vec<Running> = Vec::new();
    let mut idle_rss: Option<(u64, u32)> = None;
    let label = plan.label.clone();
    let mut progress = Progress::new(&label);
    for phase in plan.phases {
        let first = running.len();
        let rss_before = p.server_pid.map(procfs::rss_bytes).transpose()?;
        for spec in phase.specs {
            let handle = tokio::task::spawn(participant::run(
                spec,
                target.clone(),
                shared.clone(),
                stop_rx.clone(),
            ));
            running.push(Running {
                group: phase.group,
                counts_for_join: phase.counts_for_join,
                handle,
            });
            match phase.pace {
                Some(d) => tokio::time::sleep(d).await,
                None => {
                    // Sequential: wait until this one is ready (or gave up).
                    let want = running.len() as u32;
                    let until = Instant::now() + Duration::from_secs(25);
                    while settled(&shared) < want && Instant::now() < until {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            progress.tick(phase.group, &shared, running.len());
        }
        // Everyone of this phase ready (or failed), bounded.
        let want = running.len() as u32;
        let until = Instant::now() + Duration::from_secs(30);
        while settled(&shared) < want && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            progress.tick(phase.group, &shared, running.len());
        }
        if phase.group == "idle" {
            if let (Some(pid), Some(before)) = (p.server_pid, rss_before) {
                // Let the allocator settle before reading.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let after = procfs::rss_bytes(pid)?;
                idle_rss = Some((after.saturating_sub(before), (running.len() - first) as u32));
            }
        }
    }
    if shared.ready.load(Ordering::Relaxed) == 0 {
        let _ = stop_tx.send(true);
        let errors = collect(running).await;
        let why = errors
            .iter()
            .find_map(|(_, _, r)| r.error.clone())
            .unwrap_or_else(|| "no participant got media".into());
        anyhow::bail!("{label}: every participant failed: {why}");
    }
    let warm_end = Instant::now() + p.warm();
    while Instant::now() < warm_end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        progress.tick("warm-up", &shared, running.len());
    }
    let cpu0 = p.server_pid.map(procfs::cpu_time).transpose()?;
    let tool0 = procfs::cpu_time(std::process::id()).ok();
    let t0 = Instant::now();
    shared.measuring.store(true, Ordering::Relaxed);
    let end = t0 + p.window();
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(250)).await;
        progress.tick("measuring", &shared, running.len());
    }
    shared.measuring.store(false, Ordering::Relaxed);
    let window = t0.elapsed();
    let cpu1 = p.server_pid.map(procfs::cpu_time).transpose()?;
    let tool1 = procfs::cpu_time(std::process::id()).ok();
    let rss1 = p.server_pid.map(procfs::rss_bytes).transpose()?;
    eprintln!();
    let _ = stop_tx.send(true);
    let reports = collect(running).await;

    let mut rx = RxStats::new();
    let mut joins = Vec::new();
    let mut storm = Vec::new();
    let mut split = (Vec::new(), Vec::new(), Vec::new());
    let mut failed = Vec::new();
    for (group, counts, r) in &reports {
        rx.merge(&r.rx);
        if let Some(e) = &r.error {
            failed.push(format!("{}: {e}", r.identity));
        }
        let total = r.join.first_media.or(r.join.connected);
        if *counts {
            if let Some(t) = total {
                joins.push(t);
            }
            if let Some(t) = r.join.signal {
                split.0.push(t);
            }
            if let Some(t) = r.join.connected {
                split.1.push(t);
            }
            if let Some(t) = r.join.first_media {
                split.2.push(t);
            }
        }
        if *group == "storm" {
            if let Some(t) = total {
                storm.push(t);
            }
        }
    }
    for v in [
        &mut joins,
        &mut storm,
        &mut split.0,
        &mut split.1,
        &mut split.2,
    ] {
        v.sort();
    }
    let pct = |v: &[Duration]| Percentiles {
        p50: percentile_ms(v, 0.50),
        p95: percentile_ms(v, 0.95),
    };
    let secs = window.as_secs_f64();
    let forwarded_pps = rx.packets as f64 / secs;
    let cpu = match (cpu0, cpu1) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let participants = reports.len() as u32;
    let per_participant = match (base_rss, rss1, idle_rss) {
        (Some(a), Some(b), Some((idle_bytes, idle_n))) => {
            // Media participants only: the idle ones were measured separately.
            let media_n = participants.saturating_sub(idle_n).max(1);
            Some(b.saturating_sub(a).saturating_sub(idle_bytes) as f64 / f64::from(media_n))
        }
        (Some(a), Some(b), None) => {
            Some(b.saturating_sub(a) as f64 / f64::from(participants.max(1)))
        }
        _ => None,
    };
    let q = |h: &hdrhistogram::Histogram<u64>, q: f64| {
        if h.is_empty() {
            None
        } else {
            Some(h.value_at_quantile(q) as f64 / 1000.0)
        }
    };
    Ok(PointReport {
        scenario: p.scenario,
        point: index,
        label: label.clone(),
        publishers: plan.publishers,
        subscribers: plan.subscribers,
        participants,
        failed: failed.len() as u32,
        failures: failed.into_iter().take(5).collect(),
        window_s: secs,
        forwarded_packets_per_second: forwarded_pps,
        received_packets: rx.packets,
        received_video_packets: rx.video_packets,
        expected_packets: rx.expected,
        loss_ratio: if rx.expected > 0 {
            1.0 - (rx.packets.min(rx.expected) as f64 / rx.expected as f64)
        } else {
            0.0
        },
        latency_ms: report::Latency {
            p50: q(&rx.latency_us, 0.50),
            p99: q(&rx.latency_us, 0.99),
            p999: q(&rx.latency_us, 0.999),
        },
        join_ms: pct(&joins),
        join_signal_ms: pct(&split.0),
        join_connected_ms: pct(&split.1),
        join_first_media_ms: pct(&split.2),
        storm_join_ms: (!storm.is_empty()).then(|| pct(&storm)),
        server_cpu_percent: cpu.map(|c| 100.0 * c.as_secs_f64() / secs),
        tool_cpu_percent: match (tool0, tool1) {
            (Some(a), Some(b)) => Some(100.0 * b.saturating_sub(a).as_secs_f64() / secs),
            _ => None,
        },
        server_cpu_us_per_forwarded_packet: cpu
            .filter(|_| rx.packets > 0)
            .map(|c| c.as_secs_f64() * 1e6 / rx.packets as f64),
        floor_us_per_forwarded_packet: None,
        r_floor: None,
        server_rss_bytes_per_participant: per_participant,
        server_rss_bytes_per_idle_participant: idle_rss
            .map(|(b, n)| b as f64 / f64::from(n.max(1))),
        floor_shape: plan.floor,
    })
}

fn settled(shared: &Shared) -> u32 {
    shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
}

/// Waits (bounded) for every participant task to leave; aborts stragglers.
async fn collect(running: Vec<Running>) -> Vec<(&'static str, bool, ParticipantReport)> {
    let mut out = Vec::with_capacity(running.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    for r in running {
        let abort = r.handle.abort_handle();
        match tokio::time::timeout_at(deadline, r.handle).await {
            Ok(Ok(rep)) => out.push((r.group, r.counts_for_join, rep)),
            Ok(Err(e)) => out.push((
                r.group,
                r.counts_for_join,
                ParticipantReport {
                    error: Some(format!("task ended: {e}")),
                    ..Default::default()
                },
            )),
            Err(_) => {
                abort.abort();
                out.push((
                    r.group,
                    r.counts_for_join,
                    ParticipantReport {
                        error: Some(
                            ParticipantError::SignalEnded("did not leave in time".into())
                                .to_string(),
                        ),
                        ..Default::default()
                    },
                ));
            }
        }
    }
    out
}
