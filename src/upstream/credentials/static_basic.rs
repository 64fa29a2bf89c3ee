//! A stored username and password (or token): sent as Basic when the registry asks for
//! Basic, and to its token realm when it asks for Bearer (Quay, GHCR, ACR, Docker Hub,
//! custom registries).

use http::HeaderValue;

use super::{BasicLogin, BoxFuture, Context, CredentialSource};
use crate::tenancy::Credentials;
use crate::upstream::{basic_header, UpstreamError};

pub(super) struct StaticBasic<'a>(pub(super) &'a Credentials);

impl CredentialSource for StaticBasic<'_> {
    fn basic<'a>(
        &'a self,
        _cx: &'a Context<'a>,
    ) -> BoxFuture<'a, Result<Option<BasicLogin>, UpstreamError>> {
        let header = basic_header(&self.0.username, &self.0.password);
        Box::pin(std::future::ready(Ok(Some(BasicLogin {
            header,
            renewable: None,
        }))))
    }

    fn realm_authorization(&self) -> Option<HeaderValue> {
        Some(basic_header(&self.0.username, &self.0.password))
    }
}
