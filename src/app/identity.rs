//! A hub's or member's credentials: joined once with a token, kept in the
//! state directory afterwards.
//!
//! Owns the file `identity.bin` in the state directory (the node's key, its
//! certificate and the root CA, written 0600 through a temporary file and a
//! rename) and the decision to join: a stored, unexpired identity for the
//! same node id is used as it is, so a restart needs no token; otherwise the
//! join token (config or `run --token`) is redeemed at the root's join
//! endpoint, retrying while the root is unreachable (bounded).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{Config, RootTarget};
use crate::root::{JoinError, JoinToken, join};
use crate::trust::{NodeIdentity, TrustRoots, fingerprint};
use crate::vocab::{NodeId, Role};

/// A node's credentials for mutual TLS.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// Key, certificate chain (certificate, CA).
    pub identity: NodeIdentity,
    /// The CA to trust.
    pub roots: TrustRoots,
    /// When the certificate expires.
    pub expires_at: SystemTime,
    /// Whether this start joined (false: loaded from the state directory).
    pub joined: bool,
}

/// The identity file inside a state directory.
pub fn identity_path(state_dir: &Path) -> PathBuf {
    state_dir.join("identity.bin")
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn not_after(identity: &NodeIdentity) -> Result<SystemTime, String> {
    Ok(validity(identity)?.1)
}

/// The certificate's `notBefore` and `notAfter`.
pub(crate) fn validity(identity: &NodeIdentity) -> Result<(SystemTime, SystemTime), String> {
    let cert = identity.cert_chain.first().ok_or("no certificate")?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|e| e.to_string())?;
    let at = |t: i64| UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Ok((
        at(parsed.validity().not_before.timestamp()),
        at(parsed.validity().not_after.timestamp()),
    ))
}

fn ca_of(identity: &NodeIdentity) -> Result<TrustRoots, String> {
    let ca = identity
        .cert_chain
        .get(1)
        .ok_or("the stored identity holds no CA certificate")?;
    Ok(TrustRoots::new(vec![ca.clone()]))
}

fn load(path: &Path, id: &NodeId, role: Role, root: &RootTarget) -> Result<Credentials, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let identity = NodeIdentity::from_bytes(&bytes)
        .map_err(|e| format!("{} is not an identity: {e}", path.display()))?;
    if &identity.node != id || identity.role != role {
        return Err(format!(
            "{} holds the identity of {} ({}), not {id} ({role}); use another state_dir",
            path.display(),
            identity.node,
            identity.role
        ));
    }
    if let (Some(pin), Some(ca)) = (root.ca_fingerprint, identity.cert_chain.get(1)) {
        if fingerprint(ca) != pin {
            return Err(format!(
                "the stored identity's CA {} is not root.ca_fingerprint {}",
                hex(&fingerprint(ca)),
                hex(&pin)
            ));
        }
    }
    let expires_at = not_after(&identity)?;
    Ok(Credentials {
        roots: ca_of(&identity)?,
        identity,
        expires_at,
        joined: false,
    })
}

pub(crate) fn store(path: &Path, identity: &NodeIdentity) -> Result<(), String> {
    use std::io::Write;
    let tmp = path.with_extension("bin.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let write = || -> std::io::Result<()> {
        let mut f = opts.open(&tmp)?;
        f.write_all(&identity.to_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot store {}: {e}", path.display()))
}

/// Loads the node's stored identity, or joins with the token and stores
/// it. `token` overrides `root.join_token`. Joining retries an unreachable
/// root for up to `patience`.
pub async fn credentials(
    config: &Config,
    token: Option<&str>,
    patience: Duration,
) -> Result<Credentials, String> {
    let root = config
        .root
        .as_ref()
        .ok_or("a hub or member needs a [root] table")?;
    let path = identity_path(&config.state_dir);
    if path.exists() {
        let creds = load(&path, &config.id, config.role, root)?;
        // Still valid, however soon it expires: the renewer counts from
        // now and renews before it does (a short lifetime is legitimate).
        if creds.expires_at > SystemTime::now() {
            return Ok(creds);
        }
        tracing::warn!(path = %path.display(), "stored certificate expired; joining again");
    }
    let token = token
        .map(str::to_string)
        .or_else(|| root.join_token.clone())
        .ok_or_else(|| {
            format!(
                "no identity in {} and no join token: issue one on the root with \
                 `interlocking token --state-dir ROOT_STATE --node {} --role {}` and pass \
                 it with --token (or root.join_token)",
                config.state_dir.display(),
                config.id,
                config.role
            )
        })?;
    let parsed: JoinToken = token
        .trim()
        .parse()
        .map_err(|e| format!("bad join token: {e}"))?;
    if let Some(pin) = root.ca_fingerprint {
        if parsed.ca_fingerprint != pin {
            return Err("the join token names another CA than root.ca_fingerprint".into());
        }
    }
    let deadline = tokio::time::Instant::now() + patience;
    let mut wait = Duration::from_millis(100);
    let joined = loop {
        match join(
            root.join,
            &root.id,
            &token,
            &config.id,
            config.role,
            Duration::from_secs(5),
        )
        .await
        {
            Ok(j) => break j,
            Err(JoinError::Unreachable(e)) if tokio::time::Instant::now() + wait < deadline => {
                tracing::info!(root = %root.join, error = %e, "root not reachable yet; retrying the join");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(format!("join through {} failed: {e}", root.join)),
        }
    };
    store(&path, &joined.identity)?;
    tracing::info!(node = %config.id, path = %path.display(), "joined; identity stored");
    Ok(Credentials {
        identity: joined.identity,
        roots: joined.roots,
        expires_at: joined.expires_at,
        joined: true,
    })
}
