//! The physical floor of forwarding on this machine (`performance-anchors.md` §8): a plain UDP
//! relay that, per packet in, does one AES-256-GCM decrypt, and per packet out one
//! AES-256-GCM encrypt and one `sendto`, fanning each packet out to `fanout` receivers over
//! loopback. No SFU logic at all: what any SFU must at least spend per forwarded packet.
//! `R_floor` = server CPU µs per forwarded packet ÷ [`FloorReport::us_per_forwarded_packet`].
//!
//! Packets look like SRTP with AEAD (RFC 7714): a 12-byte RTP header as associated data, the
//! payload encrypted, a 16-byte tag; a fresh key per receiver, as an SFU has per subscriber.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use serde::Serialize;

use crate::cpu;

/// RTP header bytes (authenticated, not encrypted).
const HEADER: usize = 12;
/// AES-GCM tag bytes.
const TAG: usize = 16;

/// What to measure.
#[derive(Debug, Clone)]
pub struct FloorParams {
    /// Packets per second the source sends into the relay.
    pub packets_per_second: u32,
    /// Receivers each packet is forwarded to.
    pub fanout: u32,
    /// Payload bytes per packet (before the header and tag).
    pub payload_bytes: usize,
    /// How long the source sends.
    pub duration: Duration,
    /// Pin the relay thread to this core.
    pub relay_core: Option<usize>,
}

/// The floor's figures.
#[derive(Debug, Clone, Serialize)]
pub struct FloorReport {
    /// The cipher (the one the server negotiates for SRTP).
    pub cipher: &'static str,
    /// Packets per second the source sent (target).
    pub packets_per_second: u32,
    /// Fan-out per packet.
    pub fanout: u32,
    /// Payload bytes per packet.
    pub payload_bytes: usize,
    /// Packets the relay received and decrypted.
    pub received: u64,
    /// Packets the relay encrypted and sent (received × fanout when nothing failed).
    pub forwarded: u64,
    /// Packets the receivers read (forwarded minus what loopback dropped).
    pub delivered: u64,
    /// Packets that failed to decrypt (must be 0).
    pub decrypt_failures: u64,
    /// CPU seconds the relay thread used.
    pub relay_cpu_s: f64,
    /// Wall seconds the relay ran.
    pub wall_s: f64,
    /// Relay CPU µs per forwarded packet: the floor.
    pub us_per_forwarded_packet: f64,
}

/// Errors setting the floor up.
#[derive(Debug, thiserror::Error)]
pub enum FloorError {
    /// A socket could not be bound or configured.
    #[error("floor: socket: {0}")]
    Socket(#[from] std::io::Error),
    /// `fanout` or `packets_per_second` is zero.
    #[error("floor: --fanout and --packets-per-second must be at least 1")]
    Zero,
    /// The relay thread could not be pinned.
    #[error("floor: cannot pin the relay to core {core}: {source}")]
    Pin {
        /// The core asked for.
        core: usize,
        /// The OS error.
        source: std::io::Error,
    },
}

fn key(byte: u8) -> LessSafeKey {
    // 32 bytes: AES-256. Constant keys are fine: this measures cost, not secrecy.
    let bytes = [byte; 32];
    // UnboundKey::new fails only for a wrong key length, which 32 is not.
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("32-byte AES-256 key"))
}

fn nonce(seq: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&seq.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Runs the floor: a source thread, the relay thread (measured), and a drain thread reading
/// the `fanout` receiving sockets (their reads are not charged to the relay; the loopback
/// delivery into them is, as it is for a server sending to local clients).
///
/// # Errors
/// [`FloorError`] when a socket cannot be set up, a parameter is zero, or pinning fails.
pub fn measure(p: &FloorParams) -> Result<FloorReport, FloorError> {
    if p.fanout == 0 || p.packets_per_second == 0 {
        return Err(FloorError::Zero);
    }
    let relay = UdpSocket::bind("127.0.0.1:0")?;
    relay.set_read_timeout(Some(Duration::from_millis(100)))?;
    let relay_addr = relay.local_addr()?;
    let sinks: Vec<UdpSocket> = (0..p.fanout)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    let sink_addrs: Vec<SocketAddr> = sinks
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<Result<_, _>>()?;
    let source = UdpSocket::bind("127.0.0.1:0")?;
    source.connect(relay_addr)?;
    for s in &sinks {
        s.set_nonblocking(true)?;
    }

    let done = Arc::new(AtomicBool::new(false));
    let drained = Arc::new(AtomicBool::new(false));
    let drain_thread = {
        let drained = drained.clone();
        std::thread::Builder::new()
            .name("floor-drain".into())
            .spawn(move || drain_loop(&sinks, &drained))?
    };
    let relay_thread = {
        let done = done.clone();
        let p = p.clone();
        std::thread::Builder::new()
            .name("floor-relay".into())
            .spawn(move || relay_loop(&relay, &sink_addrs, &p, &done))?
    };
    send_loop(&source, p);
    // let the last packets drain through the relay
    std::thread::sleep(Duration::from_millis(200));
    done.store(true, Ordering::Relaxed);
    let report = relay_thread
        .join()
        .unwrap_or_else(|_| Err(FloorError::Socket(std::io::Error::other("relay panicked"))));
    std::thread::sleep(Duration::from_millis(100));
    drained.store(true, Ordering::Relaxed);
    let delivered = drain_thread.join().unwrap_or(0);
    let mut report = report?;
    report.delivered = delivered;
    Ok(report)
}

/// Reads every receiving socket until `stop`; returns how many packets it read.
fn drain_loop(sinks: &[UdpSocket], stop: &AtomicBool) -> u64 {
    let mut buf = [0u8; 2048];
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut got = false;
        for s in sinks {
            while s.recv(&mut buf).is_ok() {
                n += 1;
                got = true;
            }
        }
        if !got {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    n
}

/// Sends `packets_per_second` encrypted packets for `duration`, paced in 1 ms steps.
fn send_loop(source: &UdpSocket, p: &FloorParams) {
    let k = key(1);
    let mut buf = vec![0u8; HEADER + p.payload_bytes + TAG];
    let start = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / f64::from(p.packets_per_second));
    let total = (p.duration.as_secs_f64() * f64::from(p.packets_per_second)) as u64;
    for seq in 0..total {
        let due = start + interval.mul_f64(seq as f64);
        let now = Instant::now();
        if due > now + Duration::from_millis(1) {
            std::thread::sleep(due - now);
        }
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        buf[HEADER..HEADER + p.payload_bytes].fill(seq as u8);
        let (head, rest) = buf.split_at_mut(HEADER);
        let (body, tag_space) = rest.split_at_mut(p.payload_bytes);
        let Ok(tag) = k.seal_in_place_separate_tag(nonce(seq), Aad::from(&*head), body) else {
            continue;
        };
        tag_space.copy_from_slice(tag.as_ref());
        let _ = source.send(&buf);
    }
}

fn relay_loop(
    relay: &UdpSocket,
    sinks: &[SocketAddr],
    p: &FloorParams,
    done: &AtomicBool,
) -> Result<FloorReport, FloorError> {
    if let Some(core) = p.relay_core {
        cpu::pin_current_thread(core).map_err(|source| FloorError::Pin { core, source })?;
    }
    let k_in = key(1);
    let k_out: Vec<LessSafeKey> = (0..sinks.len()).map(|i| key(2 + i as u8)).collect();
    let mut inb = vec![0u8; 2048];
    let mut out = vec![0u8; 2048];
    let (mut received, mut forwarded, mut failures) = (0u64, 0u64, 0u64);
    let mut started: Option<(Instant, Duration)> = None;
    while !done.load(Ordering::Relaxed) {
        let n = match relay.recv(&mut inb) {
            Ok(n) => n,
            Err(_) => continue, // read timeout: check `done`
        };
        if started.is_none() {
            started = Some((Instant::now(), cpu::thread_cpu_time()));
        }
        if n < HEADER + TAG {
            failures += 1;
            continue;
        }
        let seq = u64::from_be_bytes(inb[..8].try_into().unwrap_or_default());
        let (head, body) = inb[..n].split_at_mut(HEADER);
        let Ok(plain) = k_in.open_in_place(nonce(seq), Aad::from(&*head), body) else {
            failures += 1;
            continue;
        };
        let plain_len = plain.len();
        received += 1;
        for (i, sink) in sinks.iter().enumerate() {
            out[..HEADER].copy_from_slice(&inb[..HEADER]);
            out[HEADER..HEADER + plain_len].copy_from_slice(&inb[HEADER..HEADER + plain_len]);
            let (h, rest) = out.split_at_mut(HEADER);
            let (b, tag_space) = rest.split_at_mut(plain_len);
            let Ok(tag) = k_out[i].seal_in_place_separate_tag(nonce(seq), Aad::from(&*h), b) else {
                continue;
            };
            tag_space[..TAG].copy_from_slice(tag.as_ref());
            if relay
                .send_to(&out[..HEADER + plain_len + TAG], sink)
                .is_ok()
            {
                forwarded += 1;
            }
        }
    }
    let (wall, cpu_used) = match started {
        Some((t0, c0)) => (t0.elapsed(), cpu::thread_cpu_time().saturating_sub(c0)),
        None => (Duration::ZERO, Duration::ZERO),
    };
    Ok(FloorReport {
        cipher: "AES-256-GCM",
        packets_per_second: p.packets_per_second,
        fanout: p.fanout,
        payload_bytes: p.payload_bytes,
        received,
        forwarded,
        delivered: 0, // filled in by `measure` once the drain thread is done
        decrypt_failures: failures,
        relay_cpu_s: cpu_used.as_secs_f64(),
        wall_s: wall.as_secs_f64(),
        us_per_forwarded_packet: if forwarded == 0 {
            0.0
        } else {
            cpu_used.as_secs_f64() * 1e6 / forwarded as f64
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_packet_is_decrypted_once_and_forwarded_to_each_receiver() {
        let r = measure(&FloorParams {
            packets_per_second: 200,
            fanout: 3,
            payload_bytes: 160,
            duration: Duration::from_millis(500),
            relay_core: None,
        })
        .expect("floor runs");
        assert_eq!(r.decrypt_failures, 0);
        assert_eq!(r.received, 100, "{r:?}");
        assert_eq!(r.forwarded, 300, "{r:?}");
        assert_eq!(r.delivered, 300, "{r:?}");
        assert!(r.relay_cpu_s > 0.0, "{r:?}");
    }

    #[test]
    fn zero_fanout_is_refused() {
        let p = FloorParams {
            packets_per_second: 10,
            fanout: 0,
            payload_bytes: 10,
            duration: Duration::from_millis(10),
            relay_core: None,
        };
        assert!(matches!(measure(&p), Err(FloorError::Zero)));
    }
}
