//! The body every response has: empty, one in-memory chunk the gateway produced, or the
//! upstream's body streamed through frame by frame (never buffered whole), holding the
//! pooled connection it arrives on until it has been read to its end.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::Lease;

/// A response body: empty, one in-memory chunk produced by the gateway, or the upstream's
/// body streamed through.
#[derive(Debug)]
pub enum GatewayBody {
    Empty,
    Full(Option<Bytes>),
    Forwarded(ForwardedBody),
}

impl GatewayBody {
    pub fn empty() -> Self {
        GatewayBody::Empty
    }

    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if bytes.is_empty() {
            GatewayBody::Empty
        } else {
            GatewayBody::Full(Some(bytes))
        }
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            GatewayBody::Empty => Poll::Ready(None),
            GatewayBody::Full(chunk) => {
                Poll::Ready(chunk.take().map(|bytes| Ok(Frame::data(bytes))))
            }
            GatewayBody::Forwarded(forwarded) => Pin::new(forwarded).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            GatewayBody::Empty => true,
            GatewayBody::Full(chunk) => chunk.is_none(),
            GatewayBody::Forwarded(forwarded) => forwarded.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            GatewayBody::Empty => SizeHint::with_exact(0),
            GatewayBody::Full(chunk) => {
                SizeHint::with_exact(chunk.as_ref().map_or(0, |bytes| bytes.len() as u64))
            }
            GatewayBody::Forwarded(forwarded) => forwarded.size_hint(),
        }
    }
}

/// The upstream's response body, holding the lease on the connection it arrives on: the
/// connection goes back to the pool once the body has been read to its end, and is closed if
/// the body is dropped before (a client that went away mid-download).
#[derive(Debug)]
pub struct ForwardedBody {
    inner: Incoming,
    lease: Option<Lease>,
    finished: bool,
}

impl ForwardedBody {
    pub fn new(inner: Incoming, lease: Lease) -> Self {
        ForwardedBody {
            inner,
            lease: Some(lease),
            finished: false,
        }
    }
}

impl Body for ForwardedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            this.finished = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ForwardedBody {
    fn drop(&mut self) {
        // A length-delimited body reports its end as soon as its last byte arrives, so hyper
        // may stop polling before the final `None`: both count as read to the end.
        if let Some(lease) = self.lease.take() {
            if self.is_end_stream() {
                lease.release();
            }
        }
    }
}
