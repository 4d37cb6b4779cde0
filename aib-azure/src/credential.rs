//! Credentials: azure_identity (environment / service principal, workload identity, managed
//! identity, Azure CLI) and a fixed token for test servers.

use crate::error::BACKEND;
use aib_core::{Error, Result};
use azure_core::auth::{AccessToken, TokenCredential};
use std::fmt;
use std::sync::Arc;

/// The credential the ARM client asks for tokens.
#[derive(Clone)]
pub struct Credential(pub(crate) Arc<dyn TokenCredential>);

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(***)")
    }
}

impl Credential {
    /// From the environment, as the Azure SDKs do: `AZURE_CREDENTIAL_KIND` when set, else
    /// the environment (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID` with `AZURE_CLIENT_SECRET` or
    /// `AZURE_FEDERATED_TOKEN_FILE`), then managed identity, then the Azure CLI.
    pub fn from_env() -> Result<Self> {
        azure_identity::create_credential().map(Credential).map_err(|e| Error::Unauthenticated { backend: BACKEND, source: Box::new(e) })
    }

    /// Any azure_core credential.
    pub fn new(c: Arc<dyn TokenCredential>) -> Self {
        Credential(c)
    }

    /// A fixed bearer token (test servers, tokens obtained elsewhere).
    pub fn static_token(token: impl Into<String>) -> Self {
        Credential(Arc::new(StaticToken(token.into())))
    }

    pub(crate) async fn bearer(&self, scope: &str) -> Result<String> {
        let t = self.0.get_token(&[scope]).await.map_err(|e| Error::Unauthenticated { backend: BACKEND, source: Box::new(e) })?;
        Ok(format!("Bearer {}", t.token.secret()))
    }
}

struct StaticToken(String);

impl fmt::Debug for StaticToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StaticToken(***)")
    }
}

#[async_trait::async_trait]
impl TokenCredential for StaticToken {
    async fn get_token(&self, _scopes: &[&str]) -> azure_core::Result<AccessToken> {
        Ok(AccessToken::new(self.0.clone(), time::OffsetDateTime::now_utc() + time::Duration::hours(1)))
    }

    async fn clear_cache(&self) -> azure_core::Result<()> {
        Ok(())
    }
}
