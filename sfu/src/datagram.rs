//! A datagram to send: what a session transmits and the core hands to its driver. Its own
//! module so the session seam and the core both use it without depending on each other.

use std::net::SocketAddr;

/// A UDP datagram to send.
#[derive(Debug)]
pub struct Datagram {
    /// The local address it leaves from (the ICE candidate the client talks to).
    pub source: SocketAddr,
    /// Where it goes.
    pub destination: SocketAddr,
    /// The bytes.
    pub contents: Vec<u8>,
}
