//! A body wrapper that hashes blob bytes as they stream and turns a digest or length
//! mismatch into a body error, so the client's connection is cut instead of it receiving
//! bytes that are not the blob it asked for.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use sha2::{Digest as _, Sha256};

use crate::body::{Body, BoxError};
use crate::oci::Digest;

pin_project_lite::pin_project! {
    /// Holds back the most recent chunk until the next one arrives or the stream ends
    /// verified, so a wrong blob is never delivered whole (a cut after the last byte looks
    /// like a clean end to an HTTP/1.1 client).
    pub struct Verified {
        #[pin]
        inner: Body,
        hasher: Option<Sha256>,
        expected: Digest,
        expected_len: Option<u64>,
        seen: u64,
        held: Option<Bytes>,
        finished: bool,
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
            held: None,
            finished: false,
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
        let mut this = self.project();
        if *this.finished {
            return Poll::Ready(None);
        }
        loop {
            match this.inner.as_mut().poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => {
                    *this.finished = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if data.is_empty() {
                        continue;
                    }
                    *this.seen += data.len() as u64;
                    if let Some(h) = this.hasher.as_mut() {
                        h.update(&data);
                    }
                    if let Some(want) = *this.expected_len {
                        if *this.seen > want {
                            *this.finished = true;
                            return Poll::Ready(Some(Err(Box::new(VerifyError::Length {
                                got: *this.seen,
                                want,
                            }))));
                        }
                    }
                    if let Some(prev) = this.held.replace(data) {
                        return Poll::Ready(Some(Ok(Frame::data(prev))));
                    }
                }
                Poll::Ready(None) => {
                    *this.finished = true;
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
                    return Poll::Ready(this.held.take().map(|b| Ok(Frame::data(b))));
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::full;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn passes_good_bytes_and_cuts_bad_ones() {
        let good = Verified::new(full("hello"), Digest::sha256_of(b"hello"), Some(5));
        assert_eq!(good.collect().await.unwrap().to_bytes(), "hello");
        let bad = Verified::new(full("hellO"), Digest::sha256_of(b"hello"), Some(5));
        assert!(bad.collect().await.is_err());
        // A wrong body in two chunks: the last one never reaches the client.
        let (tx, rx) = tokio::sync::mpsc::channel(2);
        tx.send(Ok(Bytes::from_static(b"hel"))).await.unwrap();
        tx.send(Ok(Bytes::from_static(b"lO"))).await.unwrap();
        drop(tx);
        let mut v = Verified::new(
            crate::body::from_channel(rx),
            Digest::sha256_of(b"hello"),
            Some(5),
        );
        let first = v.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"hel");
        assert!(v.frame().await.unwrap().is_err());
        let short = Verified::new(full("hell"), Digest::sha256_of(b"hello"), Some(5));
        assert!(short.collect().await.is_err());
    }
}
