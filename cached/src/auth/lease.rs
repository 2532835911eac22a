//! Lease credentials, both derived from one 32-byte server key that the scheduler keeps in
//! RocksDB, so they survive a restart as leases do and need no storage of their own:
//!
//! - the **lease secret** (`FencingToken.secret`): keyed BLAKE3 over the lease (job, task,
//!   attempt) and the name of the token whose agent holds it. Progress, heartbeats and Complete
//!   present it; another worker that learns the job, task and attempt cannot act for the lease,
//!   and neither can the holder's secret through another token.
//! - the **cache credential** (`TaskLease.cache_token`): what the build itself uses to reach
//!   the cache, so the agent's own token never enters a build. A self-describing bearer token,
//!   `cached_lease.<claims>.<mac>` (base64url), whose claims name the lease, the job's namespace
//!   and the job's deadline. The auth layer checks the MAC and the deadline, then asks the
//!   scheduler ([`LiveLeases`]) whether the lease is still current; it grants `read`,
//!   `cas-write` and `ac-write` in exactly that namespace, as `lease:<job>/<task>/<attempt>`.
//!
//! With no tokens configured every caller may do everything, so no cache credential is minted.

use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use super::scopes::{NamespacePattern, Scope};
use super::{Grant, Scopes};

/// How a cache credential starts; `cached_` like every secret of ours, so redaction finds it.
pub const CACHE_TOKEN_PREFIX: &str = "cached_lease.";
const CLAIMS_VERSION: &str = "v2";
/// Claims without the submitter, from a server before it: still read during a rolling upgrade.
const CLAIMS_VERSION_1: &str = "v1";
const SECRET_CONTEXT: &str = "cached 2026-12 lease secret";
const CACHE_TOKEN_CONTEXT: &str = "cached 2026-12 lease cache credential";
/// Longest credential looked at; a real one is well under 300 bytes.
const MAX_CACHE_TOKEN_LEN: usize = 1024;

/// One lease: task `task` of job `job_id`, attempt `attempt`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseId {
    pub job_id: String,
    pub task: u32,
    pub attempt: u32,
}

impl LeaseId {
    /// `lease:<job>/<task>/<attempt>`: the grant name of its cache credential in audit logs.
    pub fn grant_name(&self) -> String {
        format!("lease:{}/{}/{}", self.job_id, self.task, self.attempt)
    }
}

/// What a cache credential says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheClaims {
    pub lease: LeaseId,
    pub namespace: String,
    /// The job's deadline: the credential is refused after it whatever the lease.
    pub expires_unix_ms: i64,
    /// The token that submitted the job, whose leases share one set of budgets; empty in
    /// credentials of an earlier version.
    pub submitter: String,
}

impl CacheClaims {
    /// The claims as they are MACed: one field a line.
    pub fn encode(&self) -> String {
        let LeaseId { job_id, task, attempt } = &self.lease;
        format!(
            "{CLAIMS_VERSION}\n{job_id}\n{task}\n{attempt}\n{}\n{}\n{}",
            self.namespace, self.expires_unix_ms, self.submitter
        )
    }

    /// Claims from [`CacheClaims::encode`]'s text; none for anything else.
    pub fn decode(text: &str) -> Option<Self> {
        let mut fields = text.split('\n');
        let mut next = || fields.next();
        let version = next()?;
        if version != CLAIMS_VERSION && version != CLAIMS_VERSION_1 {
            return None;
        }
        let job_id = next()?.to_owned();
        let task = next()?.parse().ok()?;
        let attempt = next()?.parse().ok()?;
        let namespace = next()?.to_owned();
        let expires_unix_ms = next()?.parse().ok()?;
        let submitter = if version == CLAIMS_VERSION { next()?.to_owned() } else { String::new() };
        if next().is_some() {
            return None;
        }
        Some(Self { lease: LeaseId { job_id, task, attempt }, namespace, expires_unix_ms, submitter })
    }

    /// What the build may do with it.
    pub fn grant(&self) -> Grant {
        Grant {
            token: self.lease.grant_name(),
            scopes: [Scope::Read, Scope::CasWrite, Scope::AcWrite].into_iter().collect::<Scopes>(),
            namespaces: vec![NamespacePattern::Exact(self.namespace.clone())],
            // A build's credential submits no jobs.
            max_priority: 0,
            share: Some(self.share()),
        }
    }

    /// The budget the leases of one submitter's jobs hold together: one per submitting token
    /// (a share per lease made each running task one more holder of every pool and budget,
    /// and one per namespace gave a token of `pr-*` one per namespace it submits into). An
    /// earlier version's credential names no submitter: its namespace's tenant, as then.
    fn share(&self) -> String {
        match self.submitter.as_str() {
            "" => format!("lease:{}", crate::shares::tenant_of(&self.namespace)),
            submitter => format!("lease:{submitter}"),
        }
    }
}

/// Whether a lease is still current: its task LEASED under that attempt, the lease not expired.
/// The scheduler answers; auth does not depend on its type.
pub trait LiveLeases: Send + Sync {
    fn is_live(&self, lease: &LeaseId) -> bool;
}

/// Derives and checks lease secrets and cache credentials.
pub struct LeaseKeys {
    secrets: [u8; 32],
    credentials: [u8; 32],
    /// Cache credentials are minted only while the server has tokens.
    minting: AtomicBool,
}

impl std::fmt::Debug for LeaseKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LeaseKeys(..)")
    }
}

impl LeaseKeys {
    /// Keys for the two uses, derived apart from the one server key.
    pub fn new(server_key: &[u8; 32]) -> Self {
        Self {
            secrets: blake3::derive_key(SECRET_CONTEXT, server_key),
            credentials: blake3::derive_key(CACHE_TOKEN_CONTEXT, server_key),
            minting: AtomicBool::new(false),
        }
    }

    /// The secret of `lease` held through the token named `holder`.
    pub fn secret(&self, lease: &LeaseId, holder: &str) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.secrets);
        // Length-prefixed, so no two (job, holder) pairs hash the same bytes.
        hasher.update(&(lease.job_id.len() as u64).to_le_bytes());
        hasher.update(lease.job_id.as_bytes());
        hasher.update(&lease.task.to_le_bytes());
        hasher.update(&lease.attempt.to_le_bytes());
        hasher.update(&(holder.len() as u64).to_le_bytes());
        hasher.update(holder.as_bytes());
        *hasher.finalize().as_bytes()
    }

    /// Whether `presented` is the secret of `lease` for a caller with token `holder`, compared
    /// in constant time (`blake3::Hash` equality is).
    pub fn secret_matches(&self, lease: &LeaseId, holder: &str, presented: &[u8]) -> bool {
        let Ok(presented) = <[u8; 32]>::try_from(presented) else { return false };
        blake3::Hash::from_bytes(presented) == blake3::Hash::from_bytes(self.secret(lease, holder))
    }

    pub fn set_minting(&self, on: bool) {
        self.minting.store(on, Ordering::Relaxed);
    }

    /// The cache credential of `claims`, or none when the server has no tokens.
    pub fn mint(&self, claims: &CacheClaims) -> Option<String> {
        if !self.minting.load(Ordering::Relaxed) {
            return None;
        }
        let text = claims.encode();
        let mac = blake3::keyed_hash(&self.credentials, text.as_bytes());
        Some(format!(
            "{CACHE_TOKEN_PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(text),
            URL_SAFE_NO_PAD.encode(mac.as_bytes())
        ))
    }

    /// The claims of a credential this server minted, if its MAC holds and it has not expired
    /// at `now_ms`. The error says what is wrong, never echoing the credential.
    pub fn verify(&self, credential: &str, now_ms: i64) -> Result<CacheClaims, String> {
        let forged = || {
            "the lease credential is not valid (altered, truncated, or minted by another server)".to_owned()
        };
        if credential.len() > MAX_CACHE_TOKEN_LEN {
            return Err(forged());
        }
        let body = credential.strip_prefix(CACHE_TOKEN_PREFIX).ok_or_else(forged)?;
        let (claims, mac) = body.split_once('.').ok_or_else(forged)?;
        let claims = URL_SAFE_NO_PAD.decode(claims).map_err(|_| forged())?;
        let mac = URL_SAFE_NO_PAD.decode(mac).map_err(|_| forged())?;
        let mac = <[u8; 32]>::try_from(mac.as_slice()).map_err(|_| forged())?;
        if blake3::keyed_hash(&self.credentials, &claims) != blake3::Hash::from_bytes(mac) {
            return Err(forged());
        }
        let claims = std::str::from_utf8(&claims).ok().and_then(CacheClaims::decode).ok_or_else(forged)?;
        if claims.expires_unix_ms < now_ms {
            return Err(format!(
                "the lease credential of {} expired with its job's deadline",
                claims.lease.grant_name()
            ));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(attempt: u32) -> LeaseId {
        LeaseId { job_id: "1a2b-cc".into(), task: 3, attempt }
    }

    #[test]
    fn secrets_bind_the_lease_and_the_holder() {
        let keys = LeaseKeys::new(&[7; 32]);
        let secret = keys.secret(&lease(1), "agent-a");
        assert!(keys.secret_matches(&lease(1), "agent-a", &secret));
        assert!(!keys.secret_matches(&lease(2), "agent-a", &secret), "another attempt");
        assert!(!keys.secret_matches(&lease(1), "agent-b", &secret), "another token");
        assert!(!keys.secret_matches(&lease(1), "agent-a", &secret[..31]));
        assert!(!keys.secret_matches(&lease(1), "agent-a", &[]));
        assert_ne!(LeaseKeys::new(&[8; 32]).secret(&lease(1), "agent-a"), secret, "another server");
        // Field boundaries count: job "ab" + holder "c" is not job "a" + holder "bc".
        let (x, y) = (
            LeaseId { job_id: "ab".into(), task: 0, attempt: 0 },
            LeaseId { job_id: "a".into(), task: 0, attempt: 0 },
        );
        assert_ne!(keys.secret(&x, "c"), keys.secret(&y, "bc"));
    }

    #[test]
    fn cache_credentials_verify_only_unaltered_and_unexpired() {
        let keys = LeaseKeys::new(&[7; 32]);
        let claims = CacheClaims {
            lease: lease(1),
            namespace: "pr-7/linux".into(),
            expires_unix_ms: 1000,
            submitter: "pr-7-ci".into(),
        };
        assert_eq!(keys.mint(&claims), None, "nothing is minted without tokens");
        keys.set_minting(true);
        let credential = keys.mint(&claims).unwrap();
        assert!(credential.starts_with("cached_lease.") && credential.len() < 300, "{credential}");
        assert_eq!(keys.verify(&credential, 999).unwrap(), claims);
        let grant = claims.grant();
        assert_eq!(grant.token, "lease:1a2b-cc/3/1");
        assert!(grant.allows_namespace("pr-7/linux") && !grant.allows_namespace("pr-7/linux2"));
        assert_eq!(grant.scopes.to_string(), "read, cas-write, ac-write");

        let expired = keys.verify(&credential, 1001).unwrap_err();
        assert!(expired.contains("expired") && !expired.contains(&credential), "{expired}");
        let other = LeaseKeys::new(&[8; 32]);
        assert!(other.verify(&credential, 0).unwrap_err().contains("not valid"));
        let (head, mac) = credential.rsplit_once('.').unwrap();
        let forged = CacheClaims { namespace: "main".into(), ..claims.clone() };
        let forged = format!("{CACHE_TOKEN_PREFIX}{}.{mac}", URL_SAFE_NO_PAD.encode(forged.encode()));
        assert!(keys.verify(&forged, 0).is_err(), "claims changed under the same MAC");
        for bad in [
            "",
            "cached_lease.",
            "cached_lease..",
            &format!("{head}."),
            &format!("{head}.{mac}x"),
            "cached_x",
        ] {
            assert!(keys.verify(bad, 0).is_err(), "{bad:?}");
        }
        assert!(keys.verify(&"a".repeat(5000), 0).is_err());
    }

    #[test]
    fn the_leases_of_one_submitters_jobs_share_one_budget() {
        let grant = |namespace: &str, submitter: &str, attempt| {
            let submitter = submitter.into();
            CacheClaims { lease: lease(attempt), namespace: namespace.into(), expires_unix_ms: 1, submitter }
                .grant()
        };
        let budget = |grant: Grant| grant.budget();
        assert_eq!(budget(grant("pr-7/linux", "ci", 1)), "lease:ci");
        // A token of `pr-*` submitting into many namespaces holds one budget, not one each.
        assert_eq!(budget(grant("pr-7/linux", "ci", 1)), budget(grant("pr-8/windows", "ci", 2)));
        assert_ne!(budget(grant("pr-7/linux", "ci", 1)), budget(grant("pr-7/linux", "other", 1)));
        // An earlier version's credential: its namespace's tenant.
        assert_eq!(budget(grant("pr-7/linux", "", 1)), "lease:pr-7");
        assert_eq!(budget(Grant::anonymous()), "anonymous");
    }

    #[test]
    fn claims_decode_only_what_they_encode() {
        let claims = CacheClaims {
            lease: lease(4),
            namespace: "main".into(),
            expires_unix_ms: i64::MAX,
            submitter: "ci".into(),
        };
        assert_eq!(CacheClaims::decode(&claims.encode()), Some(claims.clone()));
        assert_eq!(CacheClaims::decode(&format!("{}\nextra", claims.encode())), None);
        assert_eq!(CacheClaims::decode(&claims.encode().replace("v2", "v3")), None);
        assert_eq!(CacheClaims::decode("v1\njob\nx\n1\nns\n0"), None);
        let earlier = CacheClaims::decode("v1\njob\n3\n1\nns\n0").expect("a v1 credential's claims");
        assert_eq!(earlier.submitter, "");
    }
}
