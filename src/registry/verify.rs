//! A body wrapper that hashes blob bytes as they stream and turns a digest or length
//! mismatch into a body error, so the client's connection is cut instead of it receiving
//! bytes that are not the blob it asked for.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use sha2::{Digest as _, Sha256};

use crate::api::body::{Body, BoxError};
use crate::oci::Digest;

pin_project_lite::pin_project! {
    pub struct Verified {
        #[pin]
        inner: Body,
        hasher: Option<Sha256>,
        expected: Digest,
        expected_len: Option<u64>,
        seen: u64,
    }
}

impl Verified {
    /// Only sha256 is checked: it is the only algorithm registries use for blobs in
    /// practice; other digests pass through unchecked.
    pub fn new(inner: Body, expected: Digest, expected_len: Option<u64>) -> Verified {
        let hasher =
            (expected.algorithm() == crate::oci::digest::Algorithm::Sha256).then(Sha256::new);
        Verified {
            inner,
            hasher,
            expected,
            expected_len,
            seen: 0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("upstream sent {got} bytes, expected {want}")]
    Length { got: u64, want: u64 },
    #[error("upstream bytes do not match digest {0}")]
    Digest(String),
}

impl http_body::Body for Verified {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    *this.seen += d.len() as u64;
                    if let Some(h) = this.hasher.as_mut() {
                        h.update(d);
                    }
                    if let Some(want) = *this.expected_len {
                        if *this.seen > want {
                            return Poll::Ready(Some(Err(Box::new(VerifyError::Length {
                                got: *this.seen,
                                want,
                            }))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                if let Some(want) = *this.expected_len {
                    if *this.seen != want {
                        return Poll::Ready(Some(Err(Box::new(VerifyError::Length {
                            got: *this.seen,
                            want,
                        }))));
                    }
                }
                if let Some(h) = this.hasher.take() {
                    let got = Digest::from_sha256(&h.finalize());
                    if got != *this.expected {
                        return Poll::Ready(Some(Err(Box::new(VerifyError::Digest(
                            this.expected.to_string(),
                        )))));
                    }
                }
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::body::full;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn passes_good_bytes_and_cuts_bad_ones() {
        let good = Verified::new(full("hello"), Digest::sha256_of(b"hello"), Some(5));
        assert_eq!(good.collect().await.unwrap().to_bytes(), "hello");
        let bad = Verified::new(full("hellO"), Digest::sha256_of(b"hello"), Some(5));
        assert!(bad.collect().await.is_err());
        let short = Verified::new(full("hell"), Digest::sha256_of(b"hello"), Some(5));
        assert!(short.collect().await.is_err());
    }
}
