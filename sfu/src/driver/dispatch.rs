//! The single-port dispatcher: with several media threads, one thread reads the media UDP
//! port (`recvmmsg`) and hands each datagram to the thread whose core owns its session, in
//! batches (one channel message per thread per receive batch, never one per datagram). Routing
//! is the cores' own rule one level up: STUN by the local ufrag, the rest by source address.
//! The cores tell it which ufrags and addresses they serve ([`RouteChange`]s).
//!
//! Why a dispatcher and not `SO_REUSEPORT`: the kernel spreads a reuseport group by a hash of
//! the 4-tuple, which knows nothing of rooms, so most datagrams would land on a thread that
//! does not own their session and need a hop anyway; steering with a BPF program needs a map
//! the cores keep up to date. The dispatcher costs one copy of each datagram and one thread;
//! `docs/architecture.md` has the measurement.

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::sync::mpsc;

use crate::core::{Demux, RouteChange};
use crate::metrics::SfuMetrics;

/// Datagrams read per `recvmmsg` call.
const RECV_BATCH: usize = 16;
/// Bytes per receive buffer (room for a GRO-coalesced batch).
const RECV_BUF: usize = 64 * 1024;
/// Batches a media thread may have queued before the dispatcher drops datagrams for it.
pub(crate) const QUEUE_BATCHES: usize = 256;
/// How long a wait for datagrams lasts before the dispatcher checks whether to stop.
const READ_TIMEOUT: Duration = Duration::from_millis(200);

/// One received datagram inside a [`Batch`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub source: SocketAddr,
    pub destination: SocketAddr,
    start: usize,
    len: usize,
}

/// Datagrams for one media thread from one receive batch, in one buffer.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    data: Vec<u8>,
    items: Vec<Item>,
    /// When the datagrams were read.
    pub received: Option<Instant>,
}

impl Batch {
    fn push(&mut self, source: SocketAddr, destination: SocketAddr, bytes: &[u8]) {
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.items.push(Item {
            source,
            destination,
            start,
            len: bytes.len(),
        });
    }

    /// The datagrams: (source, destination, bytes).
    pub fn iter(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr, &[u8])> {
        self.items.iter().map(|i| {
            (
                i.source,
                i.destination,
                &self.data[i.start..i.start + i.len],
            )
        })
    }

    /// Empties it for reuse (keeps the allocations).
    pub fn clear(&mut self) {
        self.data.clear();
        self.items.clear();
        self.received = None;
    }
}

/// A media thread as the dispatcher sees it.
pub(crate) struct Worker {
    pub batches: mpsc::Sender<Batch>,
}

/// Everything the dispatcher thread needs.
pub(crate) struct Dispatcher {
    pub socket: std::net::UdpSocket,
    pub workers: Vec<Worker>,
    /// (worker index, change) from the media threads.
    pub routes: std_mpsc::Receiver<(usize, RouteChange)>,
    /// Emptied batches coming back from the media threads.
    pub recycle: std_mpsc::Receiver<Batch>,
    pub metrics: Arc<SfuMetrics>,
}

impl Dispatcher {
    /// Runs until every media thread is gone. Blocking; run it on its own thread.
    pub fn run(self) {
        let Dispatcher {
            socket,
            workers,
            routes,
            recycle,
            metrics,
        } = self;
        let udp = match UdpSocketState::new((&socket).into()) {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(error = %e, "media dispatcher cannot use its socket");
                return;
            }
        };
        // The socket stays non-blocking (`UdpSocketState::new` makes it so): a blocking
        // `recvmmsg` waits to fill every buffer of the batch, holding sparse traffic (an ICE
        // handshake) for up to a read timeout per buffer. Waits are `poll(2)` instead.
        let local = match socket.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "media dispatcher has no local address");
                return;
            }
        };
        let mut demux: Demux<usize> = Demux::default();
        let mut bufs = vec![vec![0u8; RECV_BUF]; RECV_BATCH];
        let mut meta = [RecvMeta::default(); RECV_BATCH];
        let mut pending: Vec<Batch> = (0..workers.len()).map(|_| Batch::default()).collect();
        let mut dropped = 0u64;
        let mut dispatched = 0u64;
        let mut busy = Duration::ZERO;
        tracing::info!(addr = %local, threads = workers.len(), "media dispatcher running");
        loop {
            apply_routes(&mut demux, &routes);
            let n = {
                let mut slices: [IoSliceMut<'_>; RECV_BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(&mut []));
                for (slice, buf) in slices.iter_mut().zip(bufs.iter_mut()) {
                    *slice = IoSliceMut::new(buf.as_mut_slice());
                }
                match udp.recv((&socket).into(), &mut slices, &mut meta) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        if workers.iter().all(|w| w.batches.is_closed()) {
                            break;
                        }
                        wait_readable(&socket, READ_TIMEOUT);
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "udp receive failed");
                        continue;
                    }
                }
            };
            let started = Instant::now();
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                let stride = m.stride.max(1);
                let destination = SocketAddr::new(m.dst_ip.unwrap_or(local.ip()), local.port());
                let source = crate::core::normalise(m.addr);
                for chunk in buf[..m.len.min(buf.len())].chunks(stride) {
                    let mut target = demux.route(source, chunk);
                    if target.is_none() {
                        // A session announced an instant ago: its route may still be queued.
                        apply_routes(&mut demux, &routes);
                        target = demux.route(source, chunk);
                    }
                    match target {
                        Some((w, _)) => {
                            if let Some(b) = pending.get_mut(w) {
                                b.push(source, destination, chunk);
                                dispatched += 1;
                            }
                        }
                        None => dropped += 1,
                    }
                }
            }
            for (w, batch) in pending.iter_mut().enumerate() {
                if batch.items.is_empty() {
                    continue;
                }
                let mut fresh = recycle.try_recv().unwrap_or_default();
                fresh.clear();
                let mut full = std::mem::replace(batch, fresh);
                full.received = Some(started);
                let count = full.items.len() as u64;
                if workers[w].batches.try_send(full).is_err() {
                    // That thread is behind (or gone): drop rather than stall every room.
                    dropped += count;
                }
            }
            busy += started.elapsed();
            // Published per receive batch: a few relaxed stores, not per datagram.
            metrics
                .dispatcher
                .datagrams
                .store(dispatched, Ordering::Relaxed);
            let before = metrics.dispatcher.dropped.swap(dropped, Ordering::Relaxed);
            if dropped > before {
                metrics
                    .dropped_datagrams
                    .fetch_add(dropped - before, Ordering::Relaxed);
            }
            metrics
                .dispatcher
                .busy_us
                .store(busy.as_micros() as u64, Ordering::Relaxed);
        }
        tracing::info!("media dispatcher stopped");
    }
}

/// Waits until the socket is readable or `timeout` passes (interrupted waits just return).
fn wait_readable(socket: &std::net::UdpSocket, timeout: Duration) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    let ms = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
    let _ = poll(&mut fds, ms);
}

fn apply_routes(demux: &mut Demux<usize>, routes: &std_mpsc::Receiver<(usize, RouteChange)>) {
    while let Ok((w, change)) = routes.try_recv() {
        match change {
            RouteChange::AddUfrag(u) => demux.add_ufrag(&u, w),
            RouteChange::RemoveUfrag(u) => demux.remove_ufrag(&u, w),
            RouteChange::RemoveAddr(a) => demux.remove_addr(a, w),
        }
    }
}
