//! Which session a datagram is for: STUN by the local ufrag in its USERNAME (so a client that
//! restarts from the same address and port reaches its new session), everything else by the
//! source address learnt from STUN (RFC 8445 §7.3: a checked pair). Used by a media core over
//! its own sessions and by the single-port dispatcher over media threads, with a different
//! target type.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddr;

use rustc_hash::FxHashMap;

use crate::session::with_stun_ufrag;

/// Routes datagrams to targets of type `T`.
#[derive(Debug)]
pub struct Demux<T> {
    by_ufrag: HashMap<String, T>,
    by_addr: FxHashMap<SocketAddr, T>,
}

impl<T> Default for Demux<T> {
    fn default() -> Self {
        Self {
            by_ufrag: HashMap::new(),
            by_addr: FxHashMap::default(),
        }
    }
}

impl<T: Copy + Eq + Hash> Demux<T> {
    /// Routes STUN to `ufrag`'s owner from now on.
    pub fn add_ufrag(&mut self, ufrag: &str, target: T) {
        self.by_ufrag.insert(ufrag.to_string(), target);
    }

    /// Stops routing `ufrag` (only if it still belongs to `target`).
    pub fn remove_ufrag(&mut self, ufrag: &str, target: T) {
        if self.by_ufrag.get(ufrag) == Some(&target) {
            self.by_ufrag.remove(ufrag);
        }
    }

    /// Stops routing from `addr` (only if it still belongs to `target`).
    pub fn remove_addr(&mut self, addr: SocketAddr, target: T) {
        if self.by_addr.get(&addr) == Some(&target) {
            self.by_addr.remove(&addr);
        }
    }

    /// The target of a datagram from `source`. A STUN message with a known ufrag also binds
    /// `source` to its target; the second value tells whether that binding is new.
    pub fn route(&mut self, source: SocketAddr, data: &[u8]) -> Option<(T, bool)> {
        let by_ufrag = &self.by_ufrag;
        if let Some(Some(target)) = with_stun_ufrag(data, |ufrag| by_ufrag.get(ufrag).copied()) {
            let new = self.by_addr.insert(source, target) != Some(target);
            return Some((target, new));
        }
        self.by_addr.get(&source).map(|t| (*t, false))
    }

    /// (ufrags, addresses) known.
    pub fn len(&self) -> (usize, usize) {
        (self.by_ufrag.len(), self.by_addr.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A STUN binding request with USERNAME `user`, built by the ICE library (the integrity
    /// is a dummy: routing does not check it, the session does).
    fn stun(user: &str) -> Vec<u8> {
        use str0m::ice::{StunMessage, TransId};
        let msg = StunMessage::binding_request(user, TransId::new(), true, 1, 1, false);
        let mut buf = vec![0u8; 512];
        let n = msg
            .to_bytes(Some(b"password"), &mut buf, |_, _| [0u8; 20])
            .expect("serialises");
        buf.truncate(n);
        buf
    }

    #[test]
    fn stun_binds_the_source_and_later_datagrams_follow_it() {
        let mut d = Demux::default();
        d.add_ufrag("abcd", 7u32);
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        assert_eq!(d.route(a, &[0x80, 0, 0, 0]), None);
        assert_eq!(d.route(a, &stun("abcd:remote")), Some((7, true)));
        assert_eq!(d.route(a, &stun("abcd:remote")), Some((7, false)));
        assert_eq!(d.route(a, &[0x80; 40]), Some((7, false)));
        d.remove_addr(a, 7);
        assert_eq!(d.route(a, &[0x80; 40]), None);
    }

    #[test]
    fn a_new_ufrag_from_the_same_address_moves_it() {
        let mut d = Demux::default();
        d.add_ufrag("old", 1u32);
        d.add_ufrag("new", 2u32);
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        d.route(a, &stun("old:x"));
        assert_eq!(d.route(a, &stun("new:x")), Some((2, true)));
        assert_eq!(d.route(a, &[0x80; 40]), Some((2, false)));
    }

    #[test]
    fn truncated_stun_routes_nowhere() {
        let mut d = Demux::default();
        d.add_ufrag("abcd", 7u32);
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let m = stun("abcd:remote");
        for n in 0..m.len() {
            assert_eq!(d.route(a, &m[..n]), None);
        }
    }
}
