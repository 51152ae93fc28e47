//! The client's request body on its way to the upstream or an `/auth` handler, read under
//! the size limit and the read timeout (the response side is `response_body`).
//!
//! Nothing here buffers a whole body: it passes frame by frame, so memory per request stays
//! at one frame however large the upload is.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::error::GatewayError;

/// The request body exceeded its limit while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the configured limit")]
pub struct BodyTooLarge;

/// The request body stayed (nearly) silent for the read timeout.
#[derive(Debug, thiserror::Error)]
#[error("request body timed out")]
pub struct BodyTimedOut;

/// The client's side of the body failed: malformed framing, or the client went away.
#[derive(Debug, thiserror::Error)]
#[error("request body could not be read")]
pub struct ClientBodyError(#[source] hyper::Error);

/// A request body reading error: the limit, the timeout, or the client's connection failing.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body counts as silent unless this much of it arrives within each read timeout (or it
/// ends): a client trickling a byte at a time (R.U.D.Y.) holds a connection as surely as one
/// that sends nothing.
const MIN_PROGRESS: u64 = 1024;

/// The client's request body on its way to the upstream or an `/auth` handler: cut off with
/// [`BodyTooLarge`] as soon as more than the limit has been read (which lets a chunked upload
/// of unknown length be refused without buffering it), and with [`BodyTimedOut`] when less
/// than [`MIN_PROGRESS`] bytes arrive in a read timeout.
#[derive(Debug)]
pub struct ClientBody {
    inner: Incoming,
    remaining: u64,
    read_timeout: Duration,
    /// Armed the first time the body has nothing to give, then moved on by progress.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    progress: u64,
}

impl ClientBody {
    pub fn new(inner: Incoming, limit: u64, read_timeout: Duration) -> Self {
        ClientBody {
            inner,
            remaining: limit,
            read_timeout,
            deadline: None,
            progress: 0,
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.remaining = 0;
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                    this.remaining -= len;
                    this.progress += len;
                    if this.progress >= MIN_PROGRESS {
                        this.progress = 0;
                        if let Some(deadline) = &mut this.deadline {
                            deadline
                                .as_mut()
                                .reset(tokio::time::Instant::now() + this.read_timeout);
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError(error)))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let timeout = this.read_timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The answer owed to the client when reading its body failed (the error is typically the
/// upstream client's, with the body's error as its cause): 413, 408 or 400. `None` when the
/// body was not the cause.
pub fn client_body_failure(error: &(dyn std::error::Error + 'static)) -> Option<GatewayError> {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(cause) = current {
        if cause.is::<BodyTooLarge>() {
            return Some(GatewayError::PayloadTooLarge);
        }
        if cause.is::<BodyTimedOut>() {
            return Some(GatewayError::RequestTimeout);
        }
        if cause.is::<ClientBodyError>() {
            return Some(GatewayError::bad_request("Malformed request body"));
        }
        current = cause.source();
    }
    None
}
