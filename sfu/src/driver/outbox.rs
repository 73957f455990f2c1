//! Batched egress: datagrams the sessions transmit are collected while the engine drains them
//! and leave in one `sendmmsg(2)` per [`BATCH`] instead of one `sendmsg` each
//! (`performance-anchors.md` §8.3: the syscall is the largest single cost per forwarded packet).
//!
//! When the socket is bound to a wildcard address the source address of each datagram is set
//! with `IP_PKTINFO` / `IPV6_PKTINFO` (the candidate the client talks to), as the per-packet
//! path did; one `sendmmsg` then carries datagrams of one source address.

use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::socket::{sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};

/// Datagrams per `sendmmsg` call.
pub(crate) const BATCH: usize = 64;

struct Pending {
    destination: SocketAddr,
    source: IpAddr,
    contents: Vec<u8>,
}

/// Datagrams waiting to be sent, and the preallocated headers `sendmmsg` fills.
pub(crate) struct Outbox {
    pending: Vec<Pending>,
    headers: MultiHeaders<SockaddrStorage>,
    /// Set the source address per datagram (the socket is bound to `0.0.0.0` / `::`).
    with_source: bool,
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Flushed {
    /// Datagrams the kernel took.
    pub sent: u64,
    /// Datagrams dropped (send buffer full, unreachable destination…).
    pub dropped: u64,
}

impl Outbox {
    /// An empty outbox for a socket bound to `local`.
    pub fn new(local: SocketAddr) -> Self {
        let with_source = local.ip().is_unspecified();
        let cmsg = with_source.then(|| {
            if local.is_ipv4() {
                nix::cmsg_space!(libc::in_pktinfo)
            } else {
                nix::cmsg_space!(libc::in6_pktinfo)
            }
        });
        Self {
            pending: Vec::with_capacity(BATCH),
            headers: MultiHeaders::preallocate(BATCH, cmsg),
            with_source,
        }
    }

    /// Datagrams waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Queues one datagram (moves its buffer, no copy).
    pub fn push(&mut self, destination: SocketAddr, source: IpAddr, contents: Vec<u8>) {
        self.pending.push(Pending {
            destination,
            source,
            contents,
        });
    }

    /// Sends everything queued, [`BATCH`] datagrams per system call, never blocking: what the
    /// kernel does not take (full send buffer) is dropped and counted.
    pub fn flush(&mut self, socket: &impl AsRawFd) -> Flushed {
        let mut done = Flushed::default();
        let fd = socket.as_raw_fd();
        let mut start = 0;
        while start < self.pending.len() {
            // One call: up to BATCH datagrams that share a source address.
            let source = self.pending[start].source;
            let mut end = start + 1;
            while end < self.pending.len()
                && end - start < BATCH
                && (!self.with_source || self.pending[end].source == source)
            {
                end += 1;
            }
            match send_batch(
                fd,
                &mut self.headers,
                &self.pending[start..end],
                source,
                self.with_source,
            ) {
                Ok(n) if n > 0 => {
                    done.sent += n as u64;
                    start += n;
                }
                // The send buffer is full: so it stays for the rest of this round.
                Err(Errno::EAGAIN) => {
                    done.dropped += (self.pending.len() - start) as u64;
                    break;
                }
                // The datagram at `start` was refused (EAGAIN: buffer full; or an error for
                // this destination): drop it and go on with the rest.
                Ok(_) | Err(_) => {
                    done.dropped += 1;
                    start += 1;
                }
            }
        }
        // Keep the buffers' capacity for the next round; drop the datagrams.
        self.pending.clear();
        done
    }
}

fn send_batch(
    fd: i32,
    headers: &mut MultiHeaders<SockaddrStorage>,
    batch: &[Pending],
    source: IpAddr,
    with_source: bool,
) -> Result<usize, Errno> {
    let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
        [IoSlice::new(
            batch.get(i).map_or(&[][..], |p| p.contents.as_slice()),
        )]
    });
    let addrs: [Option<SockaddrStorage>; BATCH] =
        std::array::from_fn(|i| batch.get(i).map(|p| SockaddrStorage::from(p.destination)));
    let info4 = match source {
        IpAddr::V4(ip) => libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from_ne_bytes(ip.octets()),
            },
            ipi_addr: libc::in_addr { s_addr: 0 },
        },
        IpAddr::V6(_) => libc::in_pktinfo {
            ipi_ifindex: 0,
            ipi_spec_dst: libc::in_addr { s_addr: 0 },
            ipi_addr: libc::in_addr { s_addr: 0 },
        },
    };
    let info6 = libc::in6_pktinfo {
        ipi6_addr: libc::in6_addr {
            s6_addr: match source {
                IpAddr::V6(ip) => ip.octets(),
                IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
            },
        },
        ipi6_ifindex: 0,
    };
    let with4 = [ControlMessage::Ipv4PacketInfo(&info4)];
    let with6 = [ControlMessage::Ipv6PacketInfo(&info6)];
    let cmsg: &[ControlMessage<'_>] = match (with_source, source) {
        (false, _) => &[],
        (true, IpAddr::V4(_)) => &with4,
        (true, IpAddr::V6(_)) => &with6,
    };
    let n = batch.len();
    let results = sendmmsg(
        fd,
        headers,
        iovs[..n].iter(),
        &addrs[..n],
        cmsg,
        MsgFlags::MSG_DONTWAIT,
    )?;
    Ok(results.count())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::time::Duration;

    #[test]
    fn sends_a_batch_to_several_destinations_in_order() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rx: Vec<UdpSocket> = (0..3)
            .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let mut out = Outbox::new(tx.local_addr().expect("addr"));
        for i in 0..150u32 {
            let to = rx[(i % 3) as usize].local_addr().expect("addr");
            out.push(to, to.ip(), i.to_be_bytes().to_vec());
        }
        let f = out.flush(&tx);
        assert_eq!(
            f,
            Flushed {
                sent: 150,
                dropped: 0
            }
        );
        assert_eq!(out.len(), 0);
        for (k, r) in rx.iter().enumerate() {
            r.set_read_timeout(Some(Duration::from_secs(2)))
                .expect("timeout");
            let mut buf = [0u8; 8];
            for j in 0..50u32 {
                let n = r.recv(&mut buf).expect("datagram");
                assert_eq!(&buf[..n], &(j * 3 + k as u32).to_be_bytes());
            }
        }
    }

    #[test]
    fn sets_the_source_address_on_a_wildcard_socket() {
        let tx = UdpSocket::bind("0.0.0.0:0").expect("bind");
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut out = Outbox::new(tx.local_addr().expect("addr"));
        out.push(
            rx.local_addr().expect("addr"),
            "127.0.0.1".parse().expect("ip"),
            b"hi".to_vec(),
        );
        assert_eq!(out.flush(&tx).sent, 1);
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 8];
        let (n, from) = rx.recv_from(&mut buf).expect("datagram");
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(from.ip().to_string(), "127.0.0.1");
    }

    #[test]
    fn an_unreachable_destination_is_dropped_and_the_rest_still_go() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut out = Outbox::new(tx.local_addr().expect("addr"));
        let to = rx.local_addr().expect("addr");
        out.push(to, to.ip(), b"a".to_vec());
        // Port 0 is not a valid destination: EINVAL for this datagram.
        out.push("127.0.0.1:0".parse().expect("addr"), to.ip(), b"x".to_vec());
        out.push(to, to.ip(), b"b".to_vec());
        let f = out.flush(&tx);
        assert_eq!(
            f,
            Flushed {
                sent: 2,
                dropped: 1
            }
        );
    }
}
