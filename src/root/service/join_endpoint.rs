//! The root's join endpoint (`docs/root.md` §2.2–2.3): one request per
//! connection — a join token redeemed, or a presented certificate renewed —
//! answered with a node certificate or a typed refusal.
//!
//! Owns the join exchange and its time limits; the admission state it
//! reads and writes is the root's.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use tokio::sync::watch;

use super::{Inner, bump};
use crate::root::admission::{AdmissionError, JoinToken, unix_ms};
use crate::sync::lock;
use crate::trust;
use crate::wire::{
    Frame, FrameDecoder, JoinGranted, JoinRefused, JoinRequest, read_frame, write_frame,
};

/// Accepts join connections until shutdown.
pub(super) async fn join_loop(
    inner: Arc<Inner>,
    ep: quinn::Endpoint,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let incoming = tokio::select! {
            _ = stop.changed() => return,
            i = ep.accept() => i,
        };
        let Some(incoming) = incoming else { return };
        tokio::spawn(handle_join(inner.clone(), incoming));
    }
}

/// Whether a renewal may be granted: the join connection presented a
/// certificate of the CA (chained and within its validity: the handshake
/// checked both) naming the requested node and role, which is not revoked.
fn renewable(
    inner: &Inner,
    req: &JoinRequest,
    presented: Option<&rustls::pki_types::CertificateDer<'static>>,
) -> Result<(), AdmissionError> {
    let cert = presented.ok_or_else(|| {
        AdmissionError::NotRenewable("no node certificate presented with an empty token".into())
    })?;
    let node = trust::node_from_certificate(cert)
        .map_err(|e| AdmissionError::NotRenewable(e.to_string()))?;
    let role = trust::role_from_certificate(cert)
        .map_err(|e| AdmissionError::NotRenewable(e.to_string()))?;
    if node != req.node || role != req.role {
        return Err(AdmissionError::NotRenewable(format!(
            "the certificate is {node} ({role}), the request {} ({})",
            req.node, req.role
        )));
    }
    if inner.state.is_revoked(&node) {
        return Err(AdmissionError::Revoked(node));
    }
    Ok(())
}

/// Serves one join connection: one request, one answer.
async fn handle_join(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let limit = inner.config.join_timeout;
    let Ok(Ok(conn)) = tokio::time::timeout(limit, async { incoming.accept()?.await }).await else {
        return;
    };
    let Ok(Ok((mut send, mut recv))) = tokio::time::timeout(limit, conn.accept_bi()).await else {
        return;
    };
    let mut buf = BytesMut::new();
    let mut decoder = FrameDecoder::new(inner.config.codec);
    let request = tokio::time::timeout(limit, read_frame(&mut recv, &mut buf, &mut decoder)).await;
    let answer = match request {
        Ok(Ok(Some(Frame::JoinRequest(req)))) => {
            let presented = conn
                .peer_identity()
                .and_then(|p| {
                    p.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                        .ok()
                })
                .and_then(|chain| chain.first().cloned());
            admit(&inner, req, presented).await
        }
        Ok(Ok(Some(other))) => Err(AdmissionError::BadRequest(format!(
            "expected a JoinRequest, got {:?}",
            other.kind()
        ))),
        Ok(Ok(None)) => Err(AdmissionError::BadRequest(
            "stream finished before a JoinRequest".into(),
        )),
        Ok(Err(e)) => Err(AdmissionError::BadRequest(format!("join stream: {e}"))),
        Err(_) => Err(AdmissionError::BadRequest(format!(
            "no JoinRequest within {limit:?}"
        ))),
    };
    let frame = match answer {
        Ok(granted) => {
            bump(&inner.counters.joins_granted);
            Frame::JoinGranted(granted)
        }
        Err(e) => {
            bump(&inner.counters.joins_refused);
            tracing::warn!(code = e.code(), refused = %e, remote = %conn.remote_address(), "root: join refused");
            // For typed refusals the reason carries the value the joiner
            // cannot know (`docs/root.md` §2).
            let reason = match &e {
                AdmissionError::Revoked(n) => n.to_string(),
                AdmissionError::NodeMismatch { expected, .. } => expected.to_string(),
                AdmissionError::RoleMismatch { expected, .. } => expected.to_string(),
                other => other.to_string(),
            };
            Frame::JoinRefused(JoinRefused {
                code: e.code(),
                reason,
            })
        }
    };
    if write_frame(&mut send, &frame, &inner.config.codec)
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
    // The joiner closes once it has read the answer.
    let _ = tokio::time::timeout(limit, conn.closed()).await;
}

/// Checks a join request and issues the node's certificate.
async fn admit(
    inner: &Inner,
    req: JoinRequest,
    presented: Option<rustls::pki_types::CertificateDer<'static>>,
) -> Result<JoinGranted, AdmissionError> {
    if req.token.is_empty() {
        renewable(inner, &req, presented.as_ref())?;
    } else {
        let token: JoinToken = req.token.parse()?;
        if token.ca_fingerprint != inner.ca.fingerprint() {
            return Err(AdmissionError::Unknown);
        }
        inner
            .state
            .redeem(&token, &req.node, req.role, SystemTime::now())
            .await?;
    }
    let (cert, not_after) = inner
        .ca
        .issue_for_key(
            &req.node,
            req.role,
            &req.public_key,
            inner.config.cert_lifetime,
        )
        .map_err(|e| AdmissionError::BadRequest(e.to_string()))?;
    lock(&inner.known).insert(req.node.clone());
    if req.token.is_empty() {
        bump(&inner.counters.renewals);
        tracing::info!(node = %req.node, role = %req.role, "root: certificate renewed");
    } else {
        tracing::info!(node = %req.node, role = %req.role, "root: node admitted");
    }
    Ok(JoinGranted {
        cert: Bytes::from(cert.to_vec()),
        ca: Bytes::from(inner.ca.certificate().to_vec()),
        expires_at_ms: unix_ms(not_after),
    })
}
