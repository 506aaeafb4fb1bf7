//! WebRTC signalling: the messages two nodes exchange through the root's
//! rendezvous (`Signal` frames), their encoding, the refusal codes, and the
//! pure rules that decide what to do with each message (generations,
//! glare). See `docs/webrtc.md`.
//!
//! Owns the [`SignalLink`] seam (how the transport sends and receives
//! `Signal` frames; the relay transport implements it), the payload types
//! and [`codes`]. It performs no I/O itself and knows nothing of channels.

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::vocab::NodeId;
use crate::wire::Signal;

/// `Signal.kind` of an offer ([`Description`]).
pub const KIND_OFFER: &str = "webrtc/offer";
/// `Signal.kind` of an answer ([`Description`]).
pub const KIND_ANSWER: &str = "webrtc/answer";
/// `Signal.kind` of a trickled ICE candidate ([`Candidate`]).
pub const KIND_CANDIDATE: &str = "webrtc/candidate";
/// `Signal.kind` of a typed refusal of an earlier message ([`Refusal`]).
pub const KIND_REFUSED: &str = "webrtc/refused";

/// The largest signalling payload accepted (bytes).
pub const MAX_SIGNAL_LEN: usize = 64 * 1024;

/// Refusal codes of the WebRTC transport and its signalling: the range
/// `0x0220..=0x022f` of `docs/wire.md` §7 (defined in [`crate::wire::codes`]).
pub use crate::wire::codes::webrtc as codes;

/// How the WebRTC transport sends and receives `Signal` frames. The relay
/// transport implements it over its link to the root; the root forwards
/// signals between admitted nodes and sets `from` itself.
#[async_trait]
pub trait SignalLink: Send + Sync + 'static {
    /// Sends one signalling message to `to`.
    async fn send_signal(&self, to: &NodeId, kind: &str, payload: Bytes) -> Result<(), String>;

    /// Signals received from peers, `from` as authenticated by the root.
    /// `None` when no link exists yet (the caller retries).
    fn subscribe(&self) -> Option<broadcast::Receiver<Signal>>;
}

/// A [`SignalLink`] whose target can be replaced: the node builder hands
/// one to the WebRTC transport and points it at the relay transport each
/// time that is bound (a restarted relay is a new link).
#[derive(Clone, Default)]
pub struct SignalSlot(std::sync::Arc<std::sync::Mutex<Option<std::sync::Arc<dyn SignalLink>>>>);

impl SignalSlot {
    /// An empty slot (signals fail until [`SignalSlot::set`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Points the slot at `link`.
    pub fn set(&self, link: std::sync::Arc<dyn SignalLink>) {
        *crate::sync::lock(&self.0) = Some(link);
    }

    fn get(&self) -> Option<std::sync::Arc<dyn SignalLink>> {
        crate::sync::lock(&self.0).clone()
    }
}

#[async_trait]
impl SignalLink for SignalSlot {
    async fn send_signal(&self, to: &NodeId, kind: &str, payload: Bytes) -> Result<(), String> {
        match self.get() {
            Some(l) => l.send_signal(to, kind, payload).await,
            None => Err("no signalling link bound yet".into()),
        }
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<Signal>> {
        self.get().and_then(|l| l.subscribe())
    }
}

/// An offer or an answer. `session` names one peer connection (chosen by
/// its offerer, increasing per offerer); `generation` counts negotiations
/// within it (1 for the first offer, +1 for each ICE restart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Description {
    /// The peer connection's session id.
    pub session: u64,
    /// The negotiation's generation within the session.
    pub generation: u64,
    /// The SDP text.
    pub sdp: String,
    /// Whether this offer restarts ICE (an answer copies it).
    pub ice_restart: bool,
}

/// One trickled ICE candidate (the browser's `RTCIceCandidateInit` fields).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// The session the candidate belongs to.
    pub session: u64,
    /// The generation it was gathered for.
    pub generation: u64,
    /// The `candidate:` attribute text.
    pub candidate: String,
    /// The media section id.
    pub sdp_mid: Option<String>,
    /// The media section index.
    pub sdp_mline_index: Option<u16>,
    /// The ICE username fragment.
    pub ufrag: Option<String>,
}

/// A typed refusal of an earlier message of `session`/`generation`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The refused message's session.
    pub session: u64,
    /// The refused message's generation.
    pub generation: u64,
    /// One of [`codes`].
    pub code: u16,
    /// A human-readable explanation.
    pub reason: String,
}

/// One signalling message, by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignalMsg {
    /// `webrtc/offer`.
    Offer(Description),
    /// `webrtc/answer`.
    Answer(Description),
    /// `webrtc/candidate`.
    Candidate(Candidate),
    /// `webrtc/refused`.
    Refused(Refusal),
}

/// Why a signalling message was refused: a code from [`codes`] and a reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("signal refused ({code:#06x}): {reason}")]
pub struct SignalError {
    /// One of [`codes`].
    pub code: u16,
    /// A human-readable explanation.
    pub reason: String,
}

impl SignalError {
    /// A refusal with `code` and `reason`.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

impl SignalMsg {
    /// The `Signal.kind` string of this message.
    pub fn kind(&self) -> &'static str {
        match self {
            SignalMsg::Offer(_) => KIND_OFFER,
            SignalMsg::Answer(_) => KIND_ANSWER,
            SignalMsg::Candidate(_) => KIND_CANDIDATE,
            SignalMsg::Refused(_) => KIND_REFUSED,
        }
    }

    /// The message's session and generation.
    pub fn ids(&self) -> (u64, u64) {
        match self {
            SignalMsg::Offer(d) | SignalMsg::Answer(d) => (d.session, d.generation),
            SignalMsg::Candidate(c) => (c.session, c.generation),
            SignalMsg::Refused(r) => (r.session, r.generation),
        }
    }

    /// Encodes the payload: a MessagePack map with the field names above.
    pub fn encode(&self) -> Bytes {
        let v = match self {
            SignalMsg::Offer(d) | SignalMsg::Answer(d) => rmp_serde::to_vec_named(d),
            SignalMsg::Candidate(c) => rmp_serde::to_vec_named(c),
            SignalMsg::Refused(r) => rmp_serde::to_vec_named(r),
        };
        // Serialising these plain structs cannot fail.
        Bytes::from(v.unwrap_or_default())
    }

    /// Decodes a payload of `kind`; hostile input yields a typed error.
    pub fn decode(kind: &str, payload: &[u8]) -> Result<Self, SignalError> {
        if payload.len() > MAX_SIGNAL_LEN {
            return Err(SignalError::new(
                codes::TOO_LARGE,
                format!("{} bytes > {MAX_SIGNAL_LEN}", payload.len()),
            ));
        }
        let bad = |e: rmp_serde::decode::Error| {
            SignalError::new(codes::MALFORMED, format!("undecodable {kind}: {e}"))
        };
        Ok(match kind {
            KIND_OFFER => SignalMsg::Offer(rmp_serde::from_slice(payload).map_err(bad)?),
            KIND_ANSWER => SignalMsg::Answer(rmp_serde::from_slice(payload).map_err(bad)?),
            KIND_CANDIDATE => SignalMsg::Candidate(rmp_serde::from_slice(payload).map_err(bad)?),
            KIND_REFUSED => SignalMsg::Refused(rmp_serde::from_slice(payload).map_err(bad)?),
            other => {
                return Err(SignalError::new(
                    codes::MALFORMED,
                    format!("unknown signal kind {other:?}"),
                ));
            }
        })
    }
}

/// The glare rule: when both sides offer at once, the node whose id sorts
/// first is *impolite* (its offer wins); the other is *polite* (it drops
/// its own offer and answers).
pub fn is_polite(local: &NodeId, peer: &NodeId) -> bool {
    local > peer
}

/// What this node knows of its negotiation with one peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NegotiationState {
    /// The current session.
    pub session: u64,
    /// The current generation.
    pub generation: u64,
    /// Whether this node offered the session.
    pub offerer: bool,
    /// The generation of this node's offer still waiting for an answer.
    pub pending: Option<u64>,
}

/// What to do with a received offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OfferVerdict {
    /// A new session: build a fresh peer connection (replacing any other).
    Fresh,
    /// A renegotiation (ICE restart) of the current session.
    Renegotiate,
    /// Refuse with this error (stale, or glare that this side wins).
    Refuse(SignalError),
}

/// Decides about an offer `d` from `peer`. `highest_remote` is the highest
/// session id this peer has offered before (sessions increase per offerer).
pub fn judge_offer(
    local: &NodeId,
    peer: &NodeId,
    current: Option<NegotiationState>,
    highest_remote: Option<u64>,
    d: &Description,
) -> OfferVerdict {
    if let Some(cur) = current
        && !cur.offerer
        && d.session == cur.session
    {
        return if d.generation > cur.generation {
            OfferVerdict::Renegotiate
        } else {
            OfferVerdict::Refuse(SignalError::new(
                codes::STALE_GENERATION,
                format!(
                    "generation {} of session {} is not newer than {}",
                    d.generation, d.session, cur.generation
                ),
            ))
        };
    }
    if highest_remote.is_some_and(|h| d.session <= h) {
        return OfferVerdict::Refuse(SignalError::new(
            codes::STALE_GENERATION,
            format!("session {} is not newer than {highest_remote:?}", d.session),
        ));
    }
    if let Some(cur) = current
        && cur.offerer
        && cur.pending.is_some()
        && !is_polite(local, peer)
    {
        return OfferVerdict::Refuse(SignalError::new(
            codes::GLARE,
            format!("glare: {local}'s offer of session {} wins", cur.session),
        ));
    }
    OfferVerdict::Fresh
}

/// Checks an answer `d` against the current negotiation: it must answer
/// this node's pending offer.
pub fn judge_answer(current: Option<NegotiationState>, d: &Description) -> Result<(), SignalError> {
    let Some(cur) = current.filter(|c| c.offerer && c.session == d.session) else {
        return Err(SignalError::new(
            codes::UNKNOWN_SESSION,
            format!("no offered session {}", d.session),
        ));
    };
    match cur.pending {
        Some(g) if g == d.generation => Ok(()),
        _ => Err(SignalError::new(
            codes::STALE_GENERATION,
            format!(
                "answer generation {} does not match pending {:?}",
                d.generation, cur.pending
            ),
        )),
    }
}

/// Checks a candidate `c` against the current negotiation: it must belong
/// to the current session and generation.
pub fn judge_candidate(
    current: Option<NegotiationState>,
    c: &Candidate,
) -> Result<(), SignalError> {
    let Some(cur) = current.filter(|cur| cur.session == c.session) else {
        return Err(SignalError::new(
            codes::UNKNOWN_SESSION,
            format!("candidate for unknown session {}", c.session),
        ));
    };
    let newest = cur.pending.unwrap_or(cur.generation).max(cur.generation);
    if c.generation < cur.generation || c.generation > newest {
        return Err(SignalError::new(
            codes::STALE_GENERATION,
            format!(
                "candidate generation {} outside {}..={newest}",
                c.generation, cur.generation
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(session: u64, generation: u64) -> Description {
        Description {
            session,
            generation,
            sdp: "v=0".into(),
            ice_restart: false,
        }
    }

    fn state(
        session: u64,
        generation: u64,
        offerer: bool,
        pending: Option<u64>,
    ) -> NegotiationState {
        NegotiationState {
            session,
            generation,
            offerer,
            pending,
        }
    }

    #[test]
    fn messages_round_trip_and_garbage_is_typed() {
        let m = SignalMsg::Candidate(Candidate {
            session: 9,
            generation: 2,
            candidate: "candidate:1 1 udp 1 127.0.0.1 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
            ufrag: None,
        });
        assert_eq!(SignalMsg::decode(m.kind(), &m.encode()).unwrap(), m);
        assert_eq!(
            SignalMsg::decode(KIND_OFFER, b"\xc1garbage")
                .unwrap_err()
                .code,
            codes::MALFORMED
        );
        assert_eq!(
            SignalMsg::decode("webrtc/nope", &m.encode())
                .unwrap_err()
                .code,
            codes::MALFORMED
        );
        let big = vec![0u8; MAX_SIGNAL_LEN + 1];
        assert_eq!(
            SignalMsg::decode(KIND_OFFER, &big).unwrap_err().code,
            codes::TOO_LARGE
        );
    }

    #[test]
    fn offers_of_older_generations_or_sessions_are_stale() {
        let (a, b) = (NodeId::new("a"), NodeId::new("b"));
        let cur = Some(state(5, 2, false, None));
        assert_eq!(
            judge_offer(&a, &b, cur, Some(5), &desc(5, 3)),
            OfferVerdict::Renegotiate
        );
        let v = judge_offer(&a, &b, cur, Some(5), &desc(5, 2));
        assert!(matches!(v, OfferVerdict::Refuse(e) if e.code == codes::STALE_GENERATION));
        let v = judge_offer(&a, &b, cur, Some(5), &desc(4, 9));
        assert!(matches!(v, OfferVerdict::Refuse(e) if e.code == codes::STALE_GENERATION));
        assert_eq!(
            judge_offer(&a, &b, cur, Some(5), &desc(6, 1)),
            OfferVerdict::Fresh
        );
        assert_eq!(
            judge_offer(&a, &b, None, None, &desc(1, 1)),
            OfferVerdict::Fresh
        );
    }

    #[test]
    fn glare_is_won_by_the_node_whose_id_sorts_first() {
        let (a, b) = (NodeId::new("a"), NodeId::new("b"));
        let pending = Some(state(7, 1, true, Some(1)));
        // a is impolite: it keeps its offer and refuses b's.
        let v = judge_offer(&a, &b, pending, None, &desc(3, 1));
        assert!(matches!(v, OfferVerdict::Refuse(e) if e.code == codes::GLARE));
        // b is polite: it yields and answers a's offer.
        assert_eq!(
            judge_offer(&b, &a, pending, None, &desc(3, 1)),
            OfferVerdict::Fresh
        );
        assert!(is_polite(&b, &a) && !is_polite(&a, &b));
    }

    #[test]
    fn answers_and_candidates_must_match_the_current_negotiation() {
        let cur = Some(state(5, 1, true, Some(2)));
        assert!(judge_answer(cur, &desc(5, 2)).is_ok());
        assert_eq!(
            judge_answer(cur, &desc(5, 1)).unwrap_err().code,
            codes::STALE_GENERATION
        );
        assert_eq!(
            judge_answer(cur, &desc(6, 2)).unwrap_err().code,
            codes::UNKNOWN_SESSION
        );
        assert_eq!(
            judge_answer(None, &desc(5, 2)).unwrap_err().code,
            codes::UNKNOWN_SESSION
        );
        let cand = |s, g| Candidate {
            session: s,
            generation: g,
            candidate: String::new(),
            sdp_mid: None,
            sdp_mline_index: None,
            ufrag: None,
        };
        assert!(judge_candidate(cur, &cand(5, 1)).is_ok());
        assert!(judge_candidate(cur, &cand(5, 2)).is_ok());
        assert_eq!(
            judge_candidate(cur, &cand(5, 0)).unwrap_err().code,
            codes::STALE_GENERATION
        );
        assert_eq!(
            judge_candidate(cur, &cand(5, 3)).unwrap_err().code,
            codes::STALE_GENERATION
        );
        assert_eq!(
            judge_candidate(cur, &cand(4, 1)).unwrap_err().code,
            codes::UNKNOWN_SESSION
        );
    }
}
