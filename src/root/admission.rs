//! Admission: join tokens, their single-use redemption, and the revocation
//! list.
//!
//! Owns the root's admission state and its persistence. A join token is a
//! random 256-bit secret plus claims (node, role, expiry, the capabilities
//! the node may register) kept by the root;
//! the string handed to an operator also carries the CA fingerprint so the
//! joining node can authenticate the root ([`JoinToken`]). The root keeps
//! only the SHA-256 of each secret.
//!
//! Persistence: with a state directory, tokens are files
//! `tokens/<hash>.json`; redeeming renames the file into `used/` — one
//! atomic rename, so two concurrent redemptions cannot both succeed, and an
//! operator's `interlocking token` command (another process) can add tokens
//! while the root runs. (An embedded database would hold an exclusive file
//! lock and shut the operator out.) Without a state directory the same
//! rules hold in memory. Revoked node ids are kept in `revoked.json`, and
//! the capabilities each admitted node may register in `grants.json`.
//!
//! Must not touch: sockets, frames, certificates (issuance is
//! [`crate::trust`]'s), hub semantics.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::sync::lock;
use crate::vocab::{NodeId, Role};

/// Root refusal codes (`docs/wire.md` §7, `docs/root.md` §6), sent in
/// `JoinRefused`, `RelayRefused`, `LookupReply`, `Reject` and as QUIC close
/// codes; defined in [`crate::wire::codes::root`].
pub use crate::wire::codes::root as codes;

/// Why a join (or an admitted node) is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    /// The token is unknown: never issued, forged or malformed.
    #[error("unknown join token")]
    Unknown,
    /// The token expired before it was used.
    #[error("join token expired")]
    Expired,
    /// The token was already used.
    #[error("join token already used")]
    Reused,
    /// The node is revoked.
    #[error("node {0} is revoked")]
    Revoked(NodeId),
    /// The request names another node than the token.
    #[error("token is for node {expected}, not {got}")]
    NodeMismatch {
        /// The token's node.
        expected: NodeId,
        /// The requested node.
        got: NodeId,
    },
    /// The request names another role than the token.
    #[error("token is for role {expected}, not {got}")]
    RoleMismatch {
        /// The token's role.
        expected: Role,
        /// The requested role.
        got: Role,
    },
    /// The request is unusable.
    #[error("bad join request: {0}")]
    BadRequest(String),
    /// The root failed internally (storage, issuance).
    #[error("root internal error: {0}")]
    Internal(String),
    /// A renewal without a valid certificate of the node and role it names.
    #[error("not renewable: {0}")]
    NotRenewable(String),
}

impl AdmissionError {
    /// The wire code of this refusal ([`codes`]).
    pub fn code(&self) -> u16 {
        match self {
            AdmissionError::Unknown => codes::TOKEN_UNKNOWN,
            AdmissionError::Expired => codes::TOKEN_EXPIRED,
            AdmissionError::Reused => codes::TOKEN_REUSED,
            AdmissionError::Revoked(_) => codes::REVOKED,
            AdmissionError::NodeMismatch { .. } => codes::NODE_MISMATCH,
            AdmissionError::RoleMismatch { .. } => codes::ROLE_MISMATCH,
            AdmissionError::BadRequest(_) => codes::BAD_REQUEST,
            AdmissionError::Internal(_) => codes::INTERNAL,
            AdmissionError::NotRenewable(_) => codes::NOT_RENEWABLE,
        }
    }

    /// The refusal for a `JoinRefused` code and reason, as the joining side
    /// sees it: it asked to join as `node` in `role`; for mismatches and
    /// revocation the reason carries the token's node, role or the revoked
    /// node (`docs/root.md` §2).
    pub fn from_refusal(code: u16, reason: &str, node: &NodeId, role: Role) -> Self {
        match code {
            codes::TOKEN_UNKNOWN => AdmissionError::Unknown,
            codes::TOKEN_EXPIRED => AdmissionError::Expired,
            codes::TOKEN_REUSED => AdmissionError::Reused,
            codes::REVOKED => AdmissionError::Revoked(NodeId::new(reason)),
            codes::NODE_MISMATCH => AdmissionError::NodeMismatch {
                expected: NodeId::new(reason),
                got: node.clone(),
            },
            codes::ROLE_MISMATCH => match serde_json::from_value::<Role>(reason.into()) {
                Ok(expected) => AdmissionError::RoleMismatch {
                    expected,
                    got: role,
                },
                Err(_) => AdmissionError::BadRequest(format!("{code:#x}: {reason}")),
            },
            codes::BAD_REQUEST => AdmissionError::BadRequest(reason.to_string()),
            codes::NOT_RENEWABLE => AdmissionError::NotRenewable(reason.to_string()),
            _ => AdmissionError::Internal(format!("{code:#x}: {reason}")),
        }
    }
}

/// The prefix of a join token's string form (format version 1).
pub const TOKEN_PREFIX: &str = "ilj1";

/// A join token as handed to an operator: `ilj1.<secret>.<ca>` with the
/// 256-bit secret and the root CA's SHA-256 fingerprint in lower-case hex.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The secret (the root stores only its SHA-256).
    pub secret: [u8; 32],
    /// The SHA-256 of the root CA certificate, to authenticate the root.
    pub ca_fingerprint: [u8; 32],
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("secret", &"<redacted>")
            .field("ca_fingerprint", &hex(&self.ca_fingerprint))
            .finish()
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{TOKEN_PREFIX}.{}.{}",
            hex(&self.secret),
            hex(&self.ca_fingerprint)
        )
    }
}

impl std::str::FromStr for JoinToken {
    type Err = AdmissionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.trim().split('.');
        let (Some(TOKEN_PREFIX), Some(secret), Some(ca), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AdmissionError::Unknown);
        };
        Ok(Self {
            secret: unhex32(secret).ok_or(AdmissionError::Unknown)?,
            ca_fingerprint: unhex32(ca).ok_or(AdmissionError::Unknown)?,
        })
    }
}

impl JoinToken {
    /// The key the root files the token under: hex SHA-256 of the secret.
    pub fn hash(&self) -> String {
        hex(ring::digest::digest(&ring::digest::SHA256, &self.secret).as_ref())
    }
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh token (a random 256-bit secret) and its claims, for any
/// admission backend to store: `capabilities` checked with
/// [`check_capabilities`], expiry `now + ttl`.
pub fn new_token(
    ca_fingerprint: [u8; 32],
    node: &NodeId,
    role: Role,
    ttl: Duration,
    now: SystemTime,
    capabilities: &[String],
) -> Result<(JoinToken, TokenClaims), AdmissionError> {
    check_capabilities(capabilities)?;
    let mut secret = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut secret[..]);
    let token = JoinToken {
        secret,
        ca_fingerprint,
    };
    let claims = TokenClaims {
        node: node.clone(),
        role,
        expires_at_ms: unix_ms(now + ttl),
        capabilities: capabilities.iter().cloned().collect(),
    };
    Ok((token, claims))
}

/// A redeemed token's claims checked against the request, in the order
/// expired, node, role, revoked (`docs/root.md` §2), for any admission
/// backend.
pub fn check_claims(
    claims: TokenClaims,
    node: &NodeId,
    role: Role,
    now: SystemTime,
    revoked: bool,
) -> Result<TokenClaims, AdmissionError> {
    if unix_ms(now) >= claims.expires_at_ms {
        return Err(AdmissionError::Expired);
    }
    if &claims.node != node {
        return Err(AdmissionError::NodeMismatch {
            expected: claims.node,
            got: node.clone(),
        });
    }
    if claims.role != role {
        return Err(AdmissionError::RoleMismatch {
            expected: claims.role,
            got: role,
        });
    }
    if revoked {
        return Err(AdmissionError::Revoked(node.clone()));
    }
    Ok(claims)
}

/// What a token was issued for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    /// The node that may join with it.
    pub node: NodeId,
    /// The role it may join as.
    pub role: Role,
    /// When it expires, Unix milliseconds.
    pub expires_at_ms: u64,
    /// The capabilities the node may register for rendezvous once admitted
    /// (`docs/root.md` §4); none unless the operator named some.
    #[serde(default)]
    pub capabilities: BTreeSet<String>,
}

/// The longest capability name a token may grant, in bytes.
pub const MAX_CAPABILITY_LEN: usize = 128;

/// The most capabilities one token may grant (and one `Register` may list).
pub const MAX_CAPABILITIES: usize = 32;

/// Checks capability names an operator grants: 1 to
/// [`MAX_CAPABILITY_LEN`] bytes, no control characters or spaces, at most
/// [`MAX_CAPABILITIES`] of them.
pub fn check_capabilities(caps: &[String]) -> Result<(), AdmissionError> {
    if caps.len() > MAX_CAPABILITIES {
        return Err(AdmissionError::BadRequest(format!(
            "{} capabilities, at most {MAX_CAPABILITIES}",
            caps.len()
        )));
    }
    for c in caps {
        if c.is_empty()
            || c.len() > MAX_CAPABILITY_LEN
            || c.chars().any(|ch| ch.is_control() || ch.is_whitespace())
        {
            return Err(AdmissionError::BadRequest(format!(
                "capability {c:?}: 1..={MAX_CAPABILITY_LEN} bytes, no spaces or control characters"
            )));
        }
    }
    Ok(())
}

#[derive(Default)]
struct Memory {
    tokens: HashMap<String, TokenClaims>,
    used: HashMap<String, TokenClaims>,
    revoked: BTreeSet<NodeId>,
    /// The capabilities each admitted node may register (from the token it
    /// last joined with).
    grants: BTreeMap<NodeId, BTreeSet<String>>,
}

/// The root's admission book: tokens and revocations, in memory or under a
/// state directory (see the module docs).
pub struct AdmissionBook {
    dir: Option<PathBuf>,
    mem: Mutex<Memory>,
}

impl std::fmt::Debug for AdmissionBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdmissionBook")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn io_err(e: impl std::fmt::Display) -> AdmissionError {
    AdmissionError::Internal(e.to_string())
}

impl AdmissionBook {
    /// A book kept in memory only.
    pub fn in_memory() -> Self {
        Self {
            dir: None,
            mem: Mutex::new(Memory::default()),
        }
    }

    /// A book under `dir` (created if missing); revocations are loaded.
    pub fn open(dir: &Path) -> Result<Self, AdmissionError> {
        std::fs::create_dir_all(dir.join("tokens")).map_err(io_err)?;
        std::fs::create_dir_all(dir.join("used")).map_err(io_err)?;
        let mut mem = Memory::default();
        match std::fs::read(dir.join("revoked.json")) {
            Ok(bytes) => mem.revoked = serde_json::from_slice(&bytes).map_err(io_err)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        match std::fs::read(dir.join("grants.json")) {
            Ok(bytes) => mem.grants = serde_json::from_slice(&bytes).map_err(io_err)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
        }
        Ok(Self {
            dir: Some(dir.to_path_buf()),
            mem: Mutex::new(mem),
        })
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        lock(&self.mem)
    }

    /// Issues a single-use token for `node` in `role`, valid for `ttl` from
    /// `now`, for a root whose CA has `ca_fingerprint`, granting
    /// `capabilities` (checked with [`check_capabilities`]).
    pub fn issue(
        &self,
        ca_fingerprint: [u8; 32],
        node: &NodeId,
        role: Role,
        ttl: Duration,
        now: SystemTime,
        capabilities: &[String],
    ) -> Result<JoinToken, AdmissionError> {
        let (token, claims) = new_token(ca_fingerprint, node, role, ttl, now, capabilities)?;
        match &self.dir {
            Some(dir) => {
                let body = serde_json::to_vec(&claims).map_err(io_err)?;
                let name = format!("{}.json", token.hash());
                let tmp = dir.join("tokens").join(format!(".{name}.tmp"));
                std::fs::write(&tmp, body).map_err(io_err)?;
                std::fs::rename(&tmp, dir.join("tokens").join(name)).map_err(io_err)?;
            }
            None => {
                self.mem().tokens.insert(token.hash(), claims);
            }
        }
        Ok(token)
    }

    /// Redeems `token` for `node` in `role` at `now`. A token whose secret
    /// matches is consumed by this call whatever the outcome, so it cannot
    /// be probed for its claims; the refusals are checked in the order
    /// unknown, reused, expired, node, role, revoked.
    pub fn redeem(
        &self,
        token: &JoinToken,
        node: &NodeId,
        role: Role,
        now: SystemTime,
    ) -> Result<TokenClaims, AdmissionError> {
        let hash = token.hash();
        let claims = match &self.dir {
            Some(dir) => {
                let name = format!("{hash}.json");
                let from = dir.join("tokens").join(&name);
                let to = dir.join("used").join(&name);
                match std::fs::rename(&from, &to) {
                    Ok(()) => {
                        let bytes = std::fs::read(&to).map_err(io_err)?;
                        serde_json::from_slice::<TokenClaims>(&bytes).map_err(io_err)?
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(if to.exists() {
                            AdmissionError::Reused
                        } else {
                            AdmissionError::Unknown
                        });
                    }
                    Err(e) => return Err(io_err(e)),
                }
            }
            None => {
                let mut mem = self.mem();
                match mem.tokens.remove(&hash) {
                    Some(c) => {
                        mem.used.insert(hash, c.clone());
                        c
                    }
                    None if mem.used.contains_key(&hash) => return Err(AdmissionError::Reused),
                    None => return Err(AdmissionError::Unknown),
                }
            }
        };
        let claims = check_claims(claims, node, role, now, self.is_revoked(node))?;
        self.grant(node, claims.capabilities.clone())?;
        Ok(claims)
    }

    /// Records that `node` may register `capabilities` (replacing what an
    /// earlier admission granted); persisted with a state dir.
    fn grant(&self, node: &NodeId, capabilities: BTreeSet<String>) -> Result<(), AdmissionError> {
        let mut mem = self.mem();
        mem.grants.insert(node.clone(), capabilities);
        if let Some(dir) = &self.dir {
            let body = serde_json::to_vec(&mem.grants).map_err(io_err)?;
            let tmp = dir.join(".grants.json.tmp");
            std::fs::write(&tmp, body).map_err(io_err)?;
            std::fs::rename(&tmp, dir.join("grants.json")).map_err(io_err)?;
        }
        Ok(())
    }

    /// The capabilities `node` may register: those of the token it was last
    /// admitted with; none for a node admitted out of band.
    pub fn capabilities(&self, node: &NodeId) -> BTreeSet<String> {
        self.mem().grants.get(node).cloned().unwrap_or_default()
    }

    /// Adds `node` to the revocation list (persisted with a state dir).
    pub fn revoke(&self, node: &NodeId) -> Result<(), AdmissionError> {
        let mut mem = self.mem();
        mem.revoked.insert(node.clone());
        if let Some(dir) = &self.dir {
            let body = serde_json::to_vec(&mem.revoked).map_err(io_err)?;
            let tmp = dir.join(".revoked.json.tmp");
            std::fs::write(&tmp, body).map_err(io_err)?;
            std::fs::rename(&tmp, dir.join("revoked.json")).map_err(io_err)?;
        }
        Ok(())
    }

    /// Whether `node` is revoked.
    pub fn is_revoked(&self, node: &NodeId) -> bool {
        self.mem().revoked.contains(node)
    }

    /// The revoked node ids, sorted.
    pub fn revoked(&self) -> Vec<NodeId> {
        self.mem().revoked.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn books() -> (tempfile::TempDir, Vec<AdmissionBook>) {
        let dir = tempfile::tempdir().unwrap();
        let file = AdmissionBook::open(dir.path()).unwrap();
        (dir, vec![AdmissionBook::in_memory(), file])
    }

    #[test]
    fn token_string_round_trips() {
        let book = AdmissionBook::in_memory();
        let t = book
            .issue(
                [7; 32],
                &NodeId::new("m"),
                Role::Member,
                Duration::from_secs(1),
                SystemTime::now(),
                &[],
            )
            .unwrap();
        let s = t.to_string();
        assert!(s.starts_with("ilj1."));
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
        assert_eq!("ilj1.zz".parse::<JoinToken>(), Err(AdmissionError::Unknown));
        assert!(!format!("{t:?}").contains(&hex(&t.secret)));
    }

    #[test]
    fn single_use_expiry_claims_and_revocation() {
        let (_dir, books) = books();
        let now = SystemTime::now();
        let m = NodeId::new("m");
        for book in books {
            let ttl = Duration::from_secs(900);
            let t = book
                .issue([1; 32], &m, Role::Member, ttl, now, &[])
                .unwrap();
            assert!(book.redeem(&t, &m, Role::Member, now).is_ok());
            assert_eq!(
                book.redeem(&t, &m, Role::Member, now),
                Err(AdmissionError::Reused)
            );
            let forged = JoinToken {
                secret: [9; 32],
                ca_fingerprint: [1; 32],
            };
            assert_eq!(
                book.redeem(&forged, &m, Role::Member, now),
                Err(AdmissionError::Unknown)
            );
            let t = book
                .issue([1; 32], &m, Role::Member, ttl, now, &[])
                .unwrap();
            assert_eq!(
                book.redeem(&t, &m, Role::Member, now + ttl),
                Err(AdmissionError::Expired)
            );
            let t = book
                .issue([1; 32], &m, Role::Member, ttl, now, &[])
                .unwrap();
            assert!(matches!(
                book.redeem(&t, &NodeId::new("x"), Role::Member, now),
                Err(AdmissionError::NodeMismatch { .. })
            ));
            let t = book
                .issue([1; 32], &m, Role::Member, ttl, now, &[])
                .unwrap();
            assert!(matches!(
                book.redeem(&t, &m, Role::Hub, now),
                Err(AdmissionError::RoleMismatch { .. })
            ));
            book.revoke(&m).unwrap();
            let t = book
                .issue([1; 32], &m, Role::Member, ttl, now, &[])
                .unwrap();
            assert_eq!(
                book.redeem(&t, &m, Role::Member, now),
                Err(AdmissionError::Revoked(m.clone()))
            );
        }
    }

    #[test]
    fn capability_grants_are_checked_and_follow_the_last_admission() {
        let book = AdmissionBook::in_memory();
        let (m, now, ttl) = (NodeId::new("m"), SystemTime::now(), Duration::from_secs(60));
        for bad in [
            vec![String::new()],
            vec!["a b".to_string()],
            vec!["x".repeat(MAX_CAPABILITY_LEN + 1)],
            (0..=MAX_CAPABILITIES).map(|i| format!("c{i}")).collect(),
        ] {
            assert!(matches!(
                book.issue([1; 32], &m, Role::Member, ttl, now, &bad),
                Err(AdmissionError::BadRequest(_))
            ));
        }
        assert!(book.capabilities(&m).is_empty());
        let t = book
            .issue([1; 32], &m, Role::Member, ttl, now, &["cam".into()])
            .unwrap();
        book.redeem(&t, &m, Role::Member, now).unwrap();
        assert_eq!(book.capabilities(&m), BTreeSet::from(["cam".to_string()]));
        // A refused redemption grants nothing; a later admission replaces.
        let t = book
            .issue([1; 32], &m, Role::Member, ttl, now, &["mic".into()])
            .unwrap();
        assert!(book.redeem(&t, &m, Role::Hub, now).is_err());
        assert_eq!(book.capabilities(&m), BTreeSet::from(["cam".to_string()]));
        let t = book
            .issue([1; 32], &m, Role::Member, ttl, now, &[])
            .unwrap();
        book.redeem(&t, &m, Role::Member, now).unwrap();
        assert!(book.capabilities(&m).is_empty());
    }

    #[test]
    fn state_dir_is_shared_between_books() {
        let dir = tempfile::tempdir().unwrap();
        let operator = AdmissionBook::open(dir.path()).unwrap();
        let root = AdmissionBook::open(dir.path()).unwrap();
        let now = SystemTime::now();
        let m = NodeId::new("m");
        let caps = vec!["camera".to_string(), "mic/1".to_string()];
        let t = operator
            .issue(
                [1; 32],
                &m,
                Role::Member,
                Duration::from_secs(60),
                now,
                &caps,
            )
            .unwrap();
        assert!(root.redeem(&t, &m, Role::Member, now).is_ok());
        root.revoke(&m).unwrap();
        let again = AdmissionBook::open(dir.path()).unwrap();
        assert!(again.is_revoked(&m));
        // The grant of the token survives a restart of the book.
        assert_eq!(again.capabilities(&m), caps.iter().cloned().collect());
        assert!(again.capabilities(&NodeId::new("other")).is_empty());
    }
}
