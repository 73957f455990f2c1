//! A session's signalling link: the client's WebSocket, which can drop and be replaced by the
//! one a resuming client opens (`reconnect=1`, `livekit-protocol.md` §7.3). While no socket is
//! attached, what the session sends is queued (bounded) and goes out in order on resume, so
//! a resumed client misses no `ParticipantUpdate`, offer or answer.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};

/// Messages kept for a detached client; past this the session cannot be resumed (a client
/// gone that long has missed too much and rejoins anyway).
pub const MAX_QUEUED: usize = 1024;

/// The current WebSocket (if any) and what waits for the next one.
pub struct SignalLink {
    tx: Option<SplitSink<WebSocket, Message>>,
    rx: Option<SplitStream<WebSocket>>,
    queue: VecDeque<Message>,
    detached_at: Option<Instant>,
    overflowed: bool,
    /// Counts links without a socket (`switchboard_signal_detached`); `None` for throwaway
    /// links that only send a refusal.
    detached_gauge: Option<Arc<AtomicI64>>,
}

impl SignalLink {
    /// A link on a freshly upgraded socket; while it has no socket it counts one in
    /// `detached_gauge`.
    pub fn new(socket: WebSocket, detached_gauge: Option<Arc<AtomicI64>>) -> Self {
        let (tx, rx) = socket.split();
        SignalLink {
            tx: Some(tx),
            rx: Some(rx),
            queue: VecDeque::new(),
            detached_at: None,
            overflowed: false,
            detached_gauge,
        }
    }

    /// Sends `msg`, or queues it while detached. A failed send detaches the link (the socket
    /// is gone) and queues the message for the resumed client.
    pub async fn send(&mut self, msg: Message) {
        if let Some(tx) = self.tx.as_mut() {
            let copy = msg.clone(); // cheap: payloads are reference-counted `Bytes`
            if tx.send(msg).await.is_ok() {
                return;
            }
            self.detach();
            self.push(copy);
        } else {
            self.push(msg);
        }
    }

    fn push(&mut self, msg: Message) {
        if self.overflowed {
            return;
        }
        if self.queue.len() >= MAX_QUEUED {
            self.overflowed = true;
            self.queue.clear();
            return;
        }
        self.queue.push_back(msg);
    }

    /// The next client message; never resolves while detached.
    pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        match self.rx.as_mut() {
            Some(rx) => rx.next().await,
            None => std::future::pending().await,
        }
    }

    /// Drops the socket (the TCP connection closes); the session stays for a resume.
    pub fn detach(&mut self) {
        self.tx = None;
        self.rx = None;
        if self.detached_at.is_none() {
            self.detached_at = Some(Instant::now());
            if let Some(g) = &self.detached_gauge {
                g.fetch_add(1, Relaxed);
            }
        }
    }

    /// How long the link has been without a socket.
    pub fn detached_for(&self) -> Option<Duration> {
        self.detached_at.map(|t| t.elapsed())
    }

    /// More than [`MAX_QUEUED`] messages waited for a resume: the session must end.
    pub fn overflowed(&self) -> bool {
        self.overflowed
    }

    /// Takes a resuming client's socket: an older socket still attached is closed first.
    /// Queued messages wait for [`SignalLink::flush`], so the caller can send the
    /// `ReconnectResponse` ahead of them.
    pub async fn attach(&mut self, socket: WebSocket) {
        if let Some(mut old) = self.tx.take() {
            let _ = old.send(Message::Close(None)).await;
        }
        let (tx, rx) = socket.split();
        self.tx = Some(tx);
        self.rx = Some(rx);
        if self.detached_at.take().is_some() {
            if let Some(g) = &self.detached_gauge {
                g.fetch_sub(1, Relaxed);
            }
        }
    }

    /// Sends what was queued while detached, oldest first.
    pub async fn flush(&mut self) {
        while let Some(msg) = self.queue.pop_front() {
            let Some(tx) = self.tx.as_mut() else {
                self.queue.push_front(msg);
                return;
            };
            if tx.send(msg.clone()).await.is_err() {
                self.detach();
                self.queue.push_front(msg);
                return;
            }
        }
    }

    /// Sends a close frame, if a socket is attached.
    pub async fn close(&mut self, frame: Option<CloseFrame>) {
        if let Some(tx) = self.tx.as_mut() {
            let _ = tx.send(Message::Close(frame)).await;
        }
    }
}

impl Drop for SignalLink {
    fn drop(&mut self) {
        if self.detached_at.is_some() {
            if let Some(g) = &self.detached_gauge {
                g.fetch_sub(1, Relaxed);
            }
        }
    }
}

/// Whether a WebSocket read error means the connection itself broke (reset, aborted, closed
/// without a close frame), as opposed to the client sending something invalid (bad framing,
/// an oversized message).
pub fn is_transport_error(e: &axum::Error) -> bool {
    use tungstenite::error::{Error as WsError, ProtocolError};
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<std::io::Error>() {
            return true;
        }
        if let Some(ws) = err.downcast_ref::<WsError>() {
            return matches!(
                ws,
                WsError::Io(_)
                    | WsError::ConnectionClosed
                    | WsError::AlreadyClosed
                    | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
            );
        }
        cur = err.source();
    }
    false
}
