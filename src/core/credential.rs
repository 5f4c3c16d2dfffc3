//! Who a guarded request is, whichever credential it carried: a nixflare token
//! ([`crate::core::token`]) or a CI provider's OIDC ID token ([`crate::core::oidc`]).
//! Everything after the credential check (permissions, what the index records, logs)
//! works with this alone.

use crate::core::reader::TokenRefusal;
use crate::core::token::{Permissions, TokenId, VerifiedToken};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// Who: a token's subject, or a CI identity such as `github:owner/repo@refs/heads/main`.
    pub subject: String,
    pub permissions: Permissions,
    /// Unix seconds after which the credential is refused.
    pub expires_at: u64,
    /// The token's id (what a revocation names); none for an ID token, which is revoked
    /// by changing the rules that admit it.
    pub token_id: Option<TokenId>,
}

impl Credential {
    /// This credential, if it carries `needs`.
    pub fn require(self, needs: Permissions) -> Result<Self, TokenRefusal> {
        if self.permissions.contains(needs) {
            Ok(self)
        } else {
            Err(TokenRefusal::Lacks {
                subject: self.subject,
                needs,
            })
        }
    }
}

impl From<&VerifiedToken> for Credential {
    fn from(token: &VerifiedToken) -> Self {
        Self {
            subject: token.subject.clone(),
            permissions: token.permissions,
            expires_at: token.expires_at,
            token_id: Some(token.id),
        }
    }
}
