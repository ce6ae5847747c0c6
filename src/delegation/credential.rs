//! Agent and admin credentials. A credential is `dpt.<agent id>.<64 hex chars of secret>`;
//! deputy stores only the SHA-256 of the whole token and compares digests in constant time.
//! The agent id inside the token only selects the record; it proves nothing by itself.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "dpt";

/// A freshly issued credential: the token (shown to the caller once) and its stored hash.
pub struct Issued {
    pub token: String,
    pub hash: String,
}

/// Issues a credential for `agent_id`.
pub fn issue(agent_id: &str) -> Result<Issued, getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let token = format!("{PREFIX}.{agent_id}.{}", hex::encode(secret));
    let hash = hash(&token);
    Ok(Issued { token, hash })
}

pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// The agent id a token claims to belong to, if it is shaped like an agent credential.
pub fn claimed_agent(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?.strip_prefix('.')?;
    let (id, secret) = rest.rsplit_once('.')?;
    (secret.len() == 64 && !id.is_empty()).then_some(id)
}

/// Whether `token` hashes to `stored_hash`, in time independent of where they differ. An empty
/// stored hash (a session not yet accepted, a bundle agent's row) matches no token.
pub fn verify(token: &str, stored_hash: &str) -> bool {
    if stored_hash.is_empty() {
        return false;
    }
    let h = hash(token);
    h.as_bytes().ct_eq(stored_hash.as_bytes()).into()
}

/// Constant-time comparison of a presented admin token with the configured one.
pub fn verify_admin(presented: &str, configured: &str) -> bool {
    let a = Sha256::digest(presented.as_bytes());
    let b = Sha256::digest(configured.as_bytes());
    a.ct_eq(&b).into()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn issued_tokens_verify_and_name_their_agent() {
        let a = issue("agt-1").unwrap();
        assert!(verify(&a.token, &a.hash));
        assert_eq!(claimed_agent(&a.token), Some("agt-1"));
        let b = issue("agt-1").unwrap();
        assert_ne!(a.token, b.token);
        assert!(!verify(&b.token, &a.hash));
        assert!(!verify(&a.token, ""), "an empty stored hash must match nothing");
        assert!(!verify("", ""));
    }

    #[test]
    fn forged_tokens_fail() {
        let a = issue("agt-1").unwrap();
        let forged = a.token.replace("agt-1", "agt-2");
        assert_eq!(claimed_agent(&forged), Some("agt-2"));
        assert!(!verify(&forged, &a.hash));
        assert_eq!(claimed_agent("Bearer nonsense"), None);
        assert!(verify_admin("s3cret", "s3cret"));
        assert!(!verify_admin("s3cret ", "s3cret"));
    }
}
