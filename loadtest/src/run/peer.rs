//! The seam between a simulated participant's signalling ([`super::participant`]) and the
//! WebRTC library that carries its media: one peer connection (publisher or subscriber) of
//! either stack, behind the few operations LiveKit's `/rtc` flow needs. It owns SDP, ICE, DTLS,
//! SRTP and the UDP socket; it must not know LiveKit messages, the send schedule
//! ([`super::tx`]) or the statistics.
//!
//! `webrtc` (the `webrtc` crate 0.21) measures the server against a stranger to its str0m, but
//! costs ~1.7x str0m's CPU per received packet and saturates one core near 75k packets/s, short
//! of B1's 100-150k; so `str0m` (the server's own library) is the default.

use std::net::IpAddr;
use std::time::Instant;

use super::participant::ParticipantError;
use super::peer_str0m::Str0mPeer;
use super::peer_webrtc::WebrtcPeer;
use super::synth::LayerShape;
use super::tx::OutPacket;

/// Which WebRTC implementation the simulated participants use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Stack {
    /// The `webrtc` crate 0.21 (webrtc-rs): not the library the server uses.
    Webrtc,
    /// str0m, the library the server is built on.
    Str0m,
}

/// What a publisher sends: its tracks, each with its stream indexes in the
/// [`super::tx::Schedule`].
#[derive(Debug, Clone)]
pub struct PublishSpec {
    /// The `msid` stream id of every track.
    pub stream_id: String,
    /// One Opus track: its cid (the `msid` track id, as in `AddTrackRequest.cid`) and stream.
    pub audio: Option<(String, usize)>,
    /// One VP8 simulcast track: its cid and its layers (`rid` shape, stream), low to high.
    pub video: Option<(String, Vec<(LayerShape, usize)>)>,
}

/// Something a peer connection reports.
#[derive(Debug)]
pub enum PeerEvent<'a> {
    /// ICE and DTLS are up: media can flow.
    Connected,
    /// An RTP packet arrived: its payload and when it was read.
    Rtp {
        /// The decrypted payload.
        payload: &'a [u8],
        /// When the stack handed it over.
        at: Instant,
    },
    /// The server asked for a keyframe (PLI/FIR) on this outgoing stream.
    KeyframeRequest {
        /// The stream index of the [`PublishSpec`].
        stream: usize,
    },
}

/// One peer connection of either stack.
pub enum Peer {
    /// str0m: sans-IO, driven from the participant task.
    Str0m(Box<Str0mPeer>),
    /// webrtc 0.21: its own driver task per connection; events come over a channel.
    Webrtc(Box<WebrtcPeer>),
}

impl Peer {
    /// A publisher offering `spec`'s tracks; returns it and the offer SDP.
    ///
    /// # Errors
    /// [`ParticipantError::Rtc`] or [`ParticipantError::Io`] when the connection cannot be
    /// built or offers nothing.
    pub async fn publisher(
        stack: Stack,
        local_ip: IpAddr,
        spec: &PublishSpec,
    ) -> Result<(Self, String), ParticipantError> {
        Ok(match stack {
            Stack::Str0m => {
                let (p, sdp) = Str0mPeer::publisher(local_ip, spec)?;
                (Self::Str0m(Box::new(p)), sdp)
            }
            Stack::Webrtc => {
                let (p, sdp) = WebrtcPeer::publisher(local_ip, spec).await?;
                (Self::Webrtc(Box::new(p)), sdp)
            }
        })
    }

    /// A subscriber, waiting for the server's offer.
    ///
    /// # Errors
    /// As [`Peer::publisher`].
    pub async fn subscriber(stack: Stack, local_ip: IpAddr) -> Result<Self, ParticipantError> {
        Ok(match stack {
            Stack::Str0m => Self::Str0m(Box::new(Str0mPeer::subscriber(local_ip)?)),
            Stack::Webrtc => Self::Webrtc(Box::new(WebrtcPeer::subscriber(local_ip).await?)),
        })
    }

    /// Applies the server's answer to our offer.
    ///
    /// # Errors
    /// [`ParticipantError::Rtc`] on an SDP the stack rejects.
    pub async fn accept_answer(&mut self, sdp: &str) -> Result<(), ParticipantError> {
        match self {
            Self::Str0m(p) => p.accept_answer(sdp),
            Self::Webrtc(p) => p.accept_answer(sdp).await,
        }
    }

    /// Applies the server's offer; returns our answer SDP.
    ///
    /// # Errors
    /// [`ParticipantError::Rtc`] on an SDP the stack rejects.
    pub async fn accept_offer(&mut self, sdp: &str) -> Result<String, ParticipantError> {
        match self {
            Self::Str0m(p) => p.accept_offer(sdp),
            Self::Webrtc(p) => p.accept_offer(sdp).await,
        }
    }

    /// True while an offer of ours waits for its answer.
    pub fn offer_pending(&self) -> bool {
        match self {
            Self::Str0m(p) => p.offer_pending(),
            Self::Webrtc(_) => false,
        }
    }

    /// `/rtc/v1`: adds `audio` + `video` receive-only sections (LiveKit
    /// `MediaSectionsRequirement`) and returns the offer that carries them (`None` when there
    /// is nothing to add).
    ///
    /// # Errors
    /// [`ParticipantError::Rtc`] for the webrtc stack (not built for `/rtc/v1` here).
    pub fn add_recv_sections(
        &mut self,
        audio: u32,
        video: u32,
    ) -> Result<Option<String>, ParticipantError> {
        match self {
            Self::Str0m(p) => Ok(p.add_recv_sections(audio, video)),
            Self::Webrtc(_) => Err(ParticipantError::Rtc(
                "/rtc/v1 (--single-pc) is built for --stack str0m only".into(),
            )),
        }
    }

    /// Adds a trickled remote candidate (`candidate:…` line); a malformed one is ignored.
    pub async fn add_remote_candidate(&mut self, candidate: &str) {
        match self {
            Self::Str0m(p) => p.add_remote_candidate(candidate),
            Self::Webrtc(p) => p.add_remote_candidate(candidate).await,
        }
    }

    /// Waits until [`Peer::poll`] has work (a datagram or an event). Cancel-safe.
    ///
    /// # Errors
    /// [`ParticipantError::Io`] when the socket fails.
    pub async fn ready(&mut self) -> Result<(), ParticipantError> {
        match self {
            Self::Str0m(p) => p.ready().await,
            Self::Webrtc(p) => {
                p.ready().await;
                Ok(())
            }
        }
    }

    /// Handles everything waiting (reads, timers) and hands each event to `sink`; returns when
    /// it next needs to run without input.
    ///
    /// # Errors
    /// [`ParticipantError::Rtc`] when the connection failed (ICE disconnected, DTLS).
    pub fn poll(
        &mut self,
        sink: &mut dyn FnMut(PeerEvent<'_>),
    ) -> Result<Option<Instant>, ParticipantError> {
        match self {
            Self::Str0m(p) => p.poll(sink),
            Self::Webrtc(p) => p.poll(sink),
        }
    }

    /// Writes packets of the [`PublishSpec`]'s streams (drained from `packets`). A stream the
    /// answer did not negotiate drops its packets.
    ///
    /// # Errors
    /// [`ParticipantError::Rtc`] when the stack refuses to send.
    pub async fn send(
        &mut self,
        packets: &mut Vec<OutPacket>,
        now: Instant,
    ) -> Result<(), ParticipantError> {
        match self {
            Self::Str0m(p) => {
                p.send(packets, now);
                Ok(())
            }
            Self::Webrtc(p) => p.send(packets).await,
        }
    }

    /// Closes the connection (stops a webrtc driver task).
    pub async fn close(self) {
        match self {
            Self::Str0m(_) => {}
            Self::Webrtc(p) => p.close().await,
        }
    }
}
