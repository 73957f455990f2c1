//! The thin driver around the sans-IO cores: one OS thread per media thread, each a tokio
//! current-thread runtime that owns one [`MediaCore`] and feeds it commands, datagrams and the
//! clock, and sends what it outputs with `sendmmsg`. With one media thread it reads the UDP
//! socket itself; with several, a dispatcher thread reads the port and hands each thread its
//! datagrams (`dispatch.rs`). Counters are published once per wake-up.

pub(crate) mod dispatch;
mod outbox;

use std::io::IoSliceMut;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc as std_mpsc, Arc};
use std::time::{Duration, Instant};

use quinn_udp::{RecvMeta, UdpSocketState};
use tokio::io::Interest;
use tokio::sync::mpsc;

use crate::core::{CoreStats, MediaCore, Output, RouteChange};
use crate::metrics::{SfuMetrics, ThreadLoad};
use crate::{Command, SfuError};
use dispatch::Batch;

/// Datagrams read per `recvmmsg` batch (single-thread mode).
const BATCH: usize = 16;
/// Bytes per receive buffer (room for a GRO-coalesced batch).
const RECV_BUF: usize = 64 * 1024;
/// Receive batches handled before commands and timers get a turn.
const MAX_BATCHES_PER_WAKE: usize = 64;
/// How long `start` waits for a media thread to report it is running.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a media thread's datagrams come from.
enum Source {
    /// It reads the media socket itself (one media thread).
    Socket(std::net::UdpSocket),
    /// The dispatcher hands it batches, and takes the emptied ones back.
    Dispatched {
        batches: mpsc::Receiver<Batch>,
        recycle: std_mpsc::Sender<Batch>,
        routes: std_mpsc::Sender<(usize, RouteChange)>,
        /// A clone of the media socket, used for sending only.
        send: std::net::UdpSocket,
    },
}

/// Starts `threads` media threads (and the dispatcher when more than one) on `socket`, and
/// returns each thread's command sender. Waits until every thread runs.
///
/// Errors: [`SfuError::Start`] when a thread, its runtime or its socket cannot start.
/// What every media thread's core is made with.
#[derive(Debug, Clone)]
pub(crate) struct CoreSetup {
    /// The shared media port on each advertised address (ICE host candidates).
    pub candidates: Vec<SocketAddr>,
    /// Subscribers' bandwidth is estimated and layers chosen by it.
    pub bandwidth_estimation: bool,
}

pub(crate) fn start(
    socket: std::net::UdpSocket,
    setup: CoreSetup,
    threads: usize,
    metrics: Arc<SfuMetrics>,
) -> Result<Vec<mpsc::UnboundedSender<Command>>, SfuError> {
    let threads = threads.max(1);
    let (ready_tx, ready_rx) = std_mpsc::channel::<Result<(), String>>();
    let mut senders = Vec::with_capacity(threads);
    let mut workers = Vec::new();
    let (routes_tx, routes_rx) = std_mpsc::channel();
    let (recycle_tx, recycle_rx) = std_mpsc::channel();
    let mut socket = Some(socket);
    let dispatcher_socket = if threads > 1 {
        socket
            .as_ref()
            .map(|s| s.try_clone())
            .transpose()
            .map_err(|e| start_error(format!("cannot share the media socket: {e}")))?
    } else {
        None
    };
    for index in 0..threads {
        let (tx, rx) = mpsc::unbounded_channel();
        senders.push(tx);
        let source = if threads == 1 {
            match socket.take() {
                Some(s) => Source::Socket(s),
                None => return Err(start_error("media socket missing".into())),
            }
        } else {
            let (btx, brx) = mpsc::channel(dispatch::QUEUE_BATCHES);
            workers.push(dispatch::Worker { batches: btx });
            let send = socket
                .as_ref()
                .map(|s| s.try_clone())
                .transpose()
                .map_err(|e| start_error(format!("cannot share the media socket: {e}")))?
                .ok_or_else(|| start_error("media socket missing".into()))?;
            Source::Dispatched {
                batches: brx,
                recycle: recycle_tx.clone(),
                routes: routes_tx.clone(),
                send,
            }
        };
        let setup = setup.clone();
        let metrics = metrics.clone();
        let ready = ready_tx.clone();
        std::thread::Builder::new()
            .name(format!("switchboard-media-{index}"))
            .spawn(move || thread_main(index, source, setup, rx, metrics, ready))
            .map_err(|e| start_error(format!("cannot spawn media thread {index}: {e}")))?;
    }
    drop(ready_tx);
    for _ in 0..threads {
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return Err(start_error(reason)),
            Err(_) => return Err(start_error("a media thread did not start in time".into())),
        }
    }
    if let Some(socket) = dispatcher_socket {
        let d = dispatch::Dispatcher {
            socket,
            workers,
            routes: routes_rx,
            recycle: recycle_rx,
            metrics,
        };
        std::thread::Builder::new()
            .name("switchboard-dispatch".into())
            .spawn(move || d.run())
            .map_err(|e| start_error(format!("cannot spawn the media dispatcher: {e}")))?;
    }
    Ok(senders)
}

fn start_error(reason: String) -> SfuError {
    SfuError::Start { reason }
}

fn thread_main(
    index: usize,
    source: Source,
    setup: CoreSetup,
    commands: mpsc::UnboundedReceiver<Command>,
    metrics: Arc<SfuMetrics>,
    ready: std_mpsc::Sender<Result<(), String>>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot start media runtime {index}: {e}")));
            return;
        }
    };
    rt.block_on(async move {
        let worker = match Worker::new(index, source, setup, metrics) {
            Ok(w) => w,
            Err(e) => {
                let _ = ready.send(Err(format!("cannot start media thread {index}: {e}")));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        drop(ready);
        worker.run(commands).await;
    });
}

/// The receiving side of a media thread.
enum Input {
    Socket {
        socket: tokio::net::UdpSocket,
        udp: UdpSocketState,
        bufs: Vec<Vec<u8>>,
    },
    Dispatched {
        batches: mpsc::Receiver<Batch>,
        recycle: std_mpsc::Sender<Batch>,
        routes: std_mpsc::Sender<(usize, RouteChange)>,
    },
}

/// One media thread: its core, input, egress and published counters.
struct Worker {
    index: usize,
    core: MediaCore,
    input: Input,
    /// The socket datagrams leave from (the media socket, or a clone of it).
    send: std::net::UdpSocket,
    local: SocketAddr,
    outbox: outbox::Outbox,
    metrics: Arc<SfuMetrics>,
    /// The stats last published, so the shared totals get deltas.
    published: CoreStats,
    busy: Duration,
}

impl Worker {
    fn new(
        index: usize,
        source: Source,
        setup: CoreSetup,
        metrics: Arc<SfuMetrics>,
    ) -> std::io::Result<Self> {
        let (input, send) = match source {
            Source::Socket(s) => {
                s.set_nonblocking(true)?;
                let send = s.try_clone()?;
                let socket = tokio::net::UdpSocket::from_std(s)?;
                let udp = UdpSocketState::new((&socket).into())?;
                (
                    Input::Socket {
                        socket,
                        udp,
                        bufs: vec![vec![0u8; RECV_BUF]; BATCH],
                    },
                    send,
                )
            }
            Source::Dispatched {
                batches,
                recycle,
                routes,
                send,
            } => (
                Input::Dispatched {
                    batches,
                    recycle,
                    routes,
                },
                send,
            ),
        };
        // Sends never block: `sendmmsg` is called with MSG_DONTWAIT (with several threads the
        // socket itself is blocking, for the dispatcher's reads).
        let local = send.local_addr()?;
        Ok(Self {
            index,
            core: MediaCore::new(setup.candidates, Instant::now())
                .with_bandwidth_estimation(setup.bandwidth_estimation),
            input,
            outbox: outbox::Outbox::new(local),
            send,
            local,
            metrics,
            published: CoreStats::default(),
            busy: Duration::ZERO,
        })
    }

    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        tracing::info!(thread = self.index, addr = %self.local, "media thread running");
        loop {
            let deadline = self.core.next_deadline();
            enum Wake {
                Command(Option<Command>),
                Readable,
                Batch(Option<Batch>),
                Timer,
            }
            let wake = match &mut self.input {
                Input::Socket { socket, .. } => tokio::select! {
                    biased;
                    cmd = commands.recv() => Wake::Command(cmd),
                    r = socket.readable() => if r.is_ok() { Wake::Readable } else { Wake::Timer },
                    _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
                },
                Input::Dispatched { batches, .. } => tokio::select! {
                    biased;
                    cmd = commands.recv() => Wake::Command(cmd),
                    b = batches.recv() => Wake::Batch(b),
                    _ = tokio::time::sleep_until(deadline.into()) => Wake::Timer,
                },
            };
            let started = Instant::now();
            match wake {
                Wake::Command(None) => break,
                Wake::Command(Some(cmd)) => {
                    self.core.handle_command(started, cmd);
                    // Take what else is queued in the same wake-up.
                    while let Ok(cmd) = commands.try_recv() {
                        self.core.handle_command(started, cmd);
                    }
                }
                Wake::Readable => self.read_socket(),
                Wake::Batch(None) => break,
                Wake::Batch(Some(batch)) => {
                    self.handle_batch(batch);
                    // Take the other queued batches too, sending after each.
                    while let Input::Dispatched { batches, .. } = &mut self.input {
                        let Ok(batch) = batches.try_recv() else { break };
                        flush_core(&mut self.core, &mut self.outbox, &self.send, &self.metrics);
                        self.handle_batch(batch);
                    }
                }
                Wake::Timer => {}
            }
            self.core.handle_timeout(Instant::now());
            self.flush();
            self.busy += started.elapsed();
            self.publish();
        }
        tracing::info!(thread = self.index, "media thread stopped");
    }

    /// Reads the socket until it is empty (bounded), sending each batch's output before the
    /// next read: that bounds the packets queued in subscriber sessions, and their delay. Each
    /// datagram is stamped when it is handled (a wake-up can last milliseconds under load, and
    /// str0m's timing, e.g. its pacer and RTCP, needs the real time of each input).
    fn read_socket(&mut self) {
        let Input::Socket { socket, udp, bufs } = &mut self.input else {
            return;
        };
        let mut meta = [RecvMeta::default(); BATCH];
        for _ in 0..MAX_BATCHES_PER_WAKE {
            let n = {
                let mut slices: [IoSliceMut<'_>; BATCH] =
                    std::array::from_fn(|_| IoSliceMut::new(&mut []));
                for (slice, buf) in slices.iter_mut().zip(bufs.iter_mut()) {
                    *slice = IoSliceMut::new(buf.as_mut_slice());
                }
                let sock: &tokio::net::UdpSocket = socket;
                match sock.try_io(Interest::READABLE, || {
                    udp.recv(sock.into(), &mut slices, &mut meta)
                }) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "udp receive failed");
                        break;
                    }
                }
            };
            let local = self.local;
            for (m, buf) in meta.iter().zip(bufs.iter()).take(n) {
                let stride = m.stride.max(1);
                let destination = SocketAddr::new(m.dst_ip.unwrap_or(local.ip()), local.port());
                for chunk in buf[..m.len.min(buf.len())].chunks(stride) {
                    self.core
                        .handle_datagram(Instant::now(), m.addr, destination, chunk);
                }
            }
            flush_core(&mut self.core, &mut self.outbox, &self.send, &self.metrics);
        }
    }

    /// A batch from the dispatcher, stamped with the time the dispatcher read it: the arrival
    /// time that transport-wide congestion feedback (TWCC) reports to the sender, without the
    /// hop's queueing delay (its variation would read as network jitter to the sender's
    /// bandwidth estimator). The core's own clock never goes back (`MediaCore` keeps the
    /// latest time it saw).
    fn handle_batch(&mut self, mut batch: Batch) {
        let arrived = batch.received.unwrap_or_else(Instant::now);
        for (source, destination, data) in batch.iter() {
            self.core
                .handle_datagram(arrived, source, destination, data);
        }
        if let Input::Dispatched { recycle, .. } = &self.input {
            batch.clear();
            let _ = recycle.send(batch);
        }
    }

    fn flush(&mut self) {
        flush_core(&mut self.core, &mut self.outbox, &self.send, &self.metrics);
        if let Input::Dispatched { routes, .. } = &self.input {
            while let Some(change) = self.core.poll_route_change() {
                let _ = routes.send((self.index, change));
            }
        } else {
            // One thread: nobody routes in front of it.
            while self.core.poll_route_change().is_some() {}
        }
    }

    /// Adds what changed since the last wake-up to the shared totals, and sets this thread's
    /// load: a few relaxed atomic operations per wake-up.
    fn publish(&mut self) {
        let s = self.core.stats().clone();
        let p = &self.published;
        let m = &self.metrics;
        let add = |a: &std::sync::atomic::AtomicU64, now: u64, before: u64| {
            if now != before {
                a.fetch_add(now.wrapping_sub(before), Ordering::Relaxed);
            }
        };
        let gauge = |a: &std::sync::atomic::AtomicI64, now: i64, before: i64| {
            if now != before {
                a.fetch_add(now - before, Ordering::Relaxed);
            }
        };
        add(
            &m.dropped_datagrams,
            s.dropped_datagrams,
            p.dropped_datagrams,
        );
        add(&m.rtp_in, s.rtp_in, p.rtp_in);
        add(&m.rtp_forwarded, s.rtp_forwarded, p.rtp_forwarded);
        add(
            &m.rtp_forwarded_video,
            s.rtp_forwarded_video,
            p.rtp_forwarded_video,
        );
        add(&m.data_dropped, s.data_dropped, p.data_dropped);
        add(&m.session_panics, s.session_panics, p.session_panics);
        add(
            &m.subscriptions_refused,
            s.subscriptions_refused,
            p.subscriptions_refused,
        );
        add(
            &m.keyframe_requests,
            s.keyframe_requests,
            p.keyframe_requests,
        );
        add(
            &m.bandwidth_downgrades,
            s.bandwidth_downgrades,
            p.bandwidth_downgrades,
        );
        add(
            &m.bandwidth_upgrades,
            s.bandwidth_upgrades,
            p.bandwidth_upgrades,
        );
        gauge(&m.sessions, s.sessions, p.sessions);
        gauge(&m.published_tracks, s.published_tracks, p.published_tracks);
        gauge(&m.subscriptions, s.subscriptions, p.subscriptions);
        gauge(&m.participants, s.participants, p.participants);
        if let Some(t) = m.threads.get(self.index) {
            publish_thread(t, &s, self.busy);
        }
        self.published = s;
    }
}

fn publish_thread(t: &ThreadLoad, s: &CoreStats, busy: Duration) {
    t.rooms.store(s.rooms, Ordering::Relaxed);
    t.participants.store(s.participants, Ordering::Relaxed);
    t.datagrams.store(s.datagrams_in, Ordering::Relaxed);
    t.rtp_forwarded.store(s.rtp_forwarded, Ordering::Relaxed);
    t.busy_us.store(busy.as_micros() as u64, Ordering::Relaxed);
}

/// Sends everything the core has to send, [`outbox::BATCH`] datagrams per `sendmmsg`.
fn flush_core(
    core: &mut MediaCore,
    outbox: &mut outbox::Outbox,
    socket: &std::net::UdpSocket,
    metrics: &SfuMetrics,
) {
    while let Output::Transmit(d) = core.poll_output() {
        outbox.push(d.destination, d.source.ip(), d.contents);
        if outbox.len() >= outbox::BATCH {
            count_drops(outbox.flush(socket), metrics);
        }
    }
    if outbox.len() > 0 {
        count_drops(outbox.flush(socket), metrics);
    }
}

fn count_drops(f: outbox::Flushed, metrics: &SfuMetrics) {
    if f.dropped > 0 {
        metrics
            .dropped_datagrams
            .fetch_add(f.dropped, Ordering::Relaxed);
    }
}
