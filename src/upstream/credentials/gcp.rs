//! Google's registries (`kind: gcr`, `kind: gar`): the service account key's JSON is the
//! password of the fixed user `_json_key`, for Basic and for the token realm alike.

use http::HeaderValue;

use super::{BasicLogin, BoxFuture, Context, CredentialSource};
use crate::settings::Secret;
use crate::upstream::{basic_header, UpstreamError};

/// The user Google's registries expect with a service account key as the password.
pub const JSON_KEY_USER: &str = "_json_key";

pub(super) struct ServiceAccount<'a>(pub(super) &'a Secret);

impl CredentialSource for ServiceAccount<'_> {
    fn basic<'a>(
        &'a self,
        _cx: &'a Context<'a>,
    ) -> BoxFuture<'a, Result<Option<BasicLogin>, UpstreamError>> {
        let header = basic_header(JSON_KEY_USER, self.0);
        Box::pin(std::future::ready(Ok(Some(BasicLogin {
            header,
            renewable: None,
        }))))
    }

    fn realm_authorization(&self) -> Option<HeaderValue> {
        Some(basic_header(JSON_KEY_USER, self.0))
    }
}
