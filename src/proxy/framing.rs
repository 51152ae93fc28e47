//! HTTP/1.1 request framing, checked before hyper reads a byte of it.
//!
//! hyper resolves some ambiguous framings instead of refusing them (it drops `Content-Length`
//! when `Transfer-Encoding` is also present, and accepts any byte in a chunk extension), and
//! answers a head it cannot parse with a bare status of its own. A gateway must refuse what a
//! server behind it or beside it could read differently, and answer in its own JSON. So every
//! HTTP/1.1 connection reads through a [`FramingGuard`]: it finds each request head, checks
//! it with `httparse` and the framing rules below, then follows the body's framing byte by
//! byte (strictly, for chunked bodies) so that it knows where the next head starts.
//!
//! A head that breaks a rule never reaches hyper: the guard hands hyper a stand-in head
//! instead and records the refusal under that request's number, so the service answers the
//! refusal (JSON, `Connection: close`) without looking at the stand-in. A body that breaks a
//! rule ends in a read error at the offending byte, which the body's reader turns into a 400.
//! Either way nothing after the offending byte is ever handed to hyper, so it cannot be read
//! as another request.
//!
//! The guard also keeps the connection's socket when hyper is done with it, so that the
//! server can close gracefully ([`linger`]): read and discard what the client is still
//! sending, for a bounded time, so that it reads the answer instead of a reset.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::path::hex_value;
use crate::error::GatewayError;

/// Why a request head was refused before hyper saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRefusal {
    /// The head grew past `server.max_header_bytes` before it ended.
    TooLarge,
    /// Not a well-formed HTTP/1.x request head (httparse refused it, or a bare LF).
    Malformed,
    /// Both `Content-Length` and `Transfer-Encoding`.
    LengthAndChunked,
    /// `Transfer-Encoding` other than exactly one `chunked`, or on HTTP/1.0.
    TransferEncoding,
    /// A `Content-Length` that is not one plain decimal number.
    ContentLength,
    /// A chunked body that breaks the grammar, found before the head went on.
    MalformedBody,
}

impl HeadRefusal {
    /// The message the client reads.
    pub fn message(self) -> &'static str {
        match self {
            HeadRefusal::TooLarge => "Request headers too large",
            HeadRefusal::Malformed => "Malformed request",
            HeadRefusal::LengthAndChunked => {
                "Request has both Content-Length and Transfer-Encoding"
            }
            HeadRefusal::TransferEncoding => "Unsupported Transfer-Encoding",
            HeadRefusal::ContentLength => "Invalid Content-Length",
            HeadRefusal::MalformedBody => "Malformed chunked request body",
        }
    }
}

impl From<HeadRefusal> for GatewayError {
    fn from(refusal: HeadRefusal) -> GatewayError {
        match refusal {
            HeadRefusal::TooLarge => GatewayError::HeadersTooLarge,
            other => GatewayError::bad_request(other.message()),
        }
    }
}

/// What the guard of a connection tells the service about the requests it passed on: the
/// number of the refused head, if any. Heads are numbered from 0 in the order they arrive,
/// and hyper calls the service for them in that order, so the service counts its calls the
/// same way.
#[derive(Debug, Default)]
pub struct FramingReport {
    refused: Mutex<Option<(u64, HeadRefusal)>>,
    served: AtomicU64,
}

impl FramingReport {
    /// For the service, once per request: the refusal recorded for this request, if any.
    pub fn next_request(&self) -> Option<HeadRefusal> {
        let index = self.served.fetch_add(1, Ordering::Relaxed);
        let refused = *self
            .refused
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        refused.and_then(|(at, refusal)| (at == index).then_some(refusal))
    }

    fn refuse(&self, index: u64, refusal: HeadRefusal) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some((index, refusal));
    }
}

/// The head hyper is handed in place of a refused one. Its content is never looked at: the
/// service answers the recorded refusal for it.
const STAND_IN_HEAD: &[u8] = b"GET / HTTP/1.1\r\nhost: refused.invalid\r\n\r\n";

/// hyper's limit on the length of a request target.
const MAX_TARGET_BYTES: usize = u16::MAX as usize - 1;

/// At most this many header lines in a head (hyper's default limit is 100).
const MAX_HEADERS: usize = 100;

/// A chunk-size line (size, extensions) or a trailer section longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// Where a chunked body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// The hex size; `line` counts the bytes of the size line so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: whitespace and extensions, up to CR.
    Extension {
        size: u64,
        line: usize,
    },
    /// CR of the size line read; LF must follow.
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines up to an empty one. `section` counts the trailer
    /// bytes, `line` the current line's, `cr` says a CR was just read.
    Trailer {
        section: usize,
        line: usize,
        cr: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between requests, or inside a head that has not ended.
    Head,
    Body {
        left: u64,
        then: AfterBody,
    },
    Chunked {
        chunk: Chunk,
        then: AfterBody,
    },
    /// After a request that may switch protocols (a WebSocket upgrade): bytes pass as they
    /// are. The service closes any such connection whose request did not switch.
    Opaque,
    /// After a refusal nothing more is read; `error` is answered once first.
    Closed {
        error: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AfterBody {
    NextHead,
    Opaque,
}

enum Step {
    /// This many bytes are checked and may go to hyper.
    Pass(usize),
    /// A head has not ended: the bytes must be held.
    NeedMore,
    /// Nothing more goes to hyper (what must, a stand-in head, is queued).
    Stop,
}

/// The framing state of one connection's incoming bytes: a pure machine, fed what the socket
/// delivers, answering how much of it may go to hyper as it is.
#[derive(Debug)]
pub struct FramingScanner {
    state: State,
    max_head_bytes: usize,
    /// A head that has not ended yet, held back until it can be checked whole.
    held: Vec<u8>,
    /// Checked bytes waiting for hyper, ahead of anything read later.
    ready: Vec<u8>,
    ready_from: usize,
    /// How much of the head being read was already parsed without finding its end.
    parsed_to: usize,
    heads: u64,
    report: Arc<FramingReport>,
}

impl FramingScanner {
    pub fn new(max_head_bytes: usize, report: Arc<FramingReport>) -> FramingScanner {
        FramingScanner {
            state: State::Head,
            max_head_bytes,
            held: Vec::new(),
            ready: Vec::new(),
            ready_from: 0,
            parsed_to: 0,
            heads: 0,
            report,
        }
    }

    /// A scanner that checks nothing (HTTP/2, whose framing is the h2 crate's business).
    pub fn opaque(report: Arc<FramingReport>) -> FramingScanner {
        let mut scanner = FramingScanner::new(0, report);
        scanner.state = State::Opaque;
        scanner
    }

    /// Takes bytes just read from the client. Returns how many of them, from the start, may
    /// go to hyper where they lie; the rest is held (an unfinished head), queued behind one,
    /// or dropped after a refusal.
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        if !self.held.is_empty() || self.ready_from < self.ready.len() {
            // Something read earlier must go first: everything goes through the queue.
            let mut data = std::mem::take(&mut self.held);
            data.extend_from_slice(bytes);
            self.feed_queued(&data);
            return 0;
        }
        let mut at = 0;
        // The request whose head this read delivered, if any: (where it starts, its number).
        let mut head: Option<(usize, u64)> = None;
        while at < bytes.len() {
            let heads = self.heads;
            match self.step(&bytes[at..]) {
                Step::Pass(len) => {
                    if self.heads > heads {
                        head = Some((at, heads));
                    }
                    at += len;
                }
                Step::NeedMore => {
                    self.hold(&bytes[at..]);
                    break;
                }
                Step::Stop => {}
            }
            if let Some(start) = self.refuse_whole_request(head) {
                return start;
            }
            if matches!(self.state, State::Closed { .. }) {
                break;
            }
        }
        at
    }

    fn feed_queued(&mut self, data: &[u8]) {
        let mut at = 0;
        let mut head: Option<(usize, u64)> = None;
        while at < data.len() {
            let heads = self.heads;
            match self.step(&data[at..]) {
                Step::Pass(len) => {
                    if self.heads > heads {
                        head = Some((self.ready.len(), heads));
                    }
                    self.ready.extend_from_slice(&data[at..at + len]);
                    at += len;
                }
                Step::NeedMore => {
                    self.hold(&data[at..]);
                    return;
                }
                Step::Stop => {}
            }
            if let Some(start) = self.refuse_whole_request(head) {
                self.ready.truncate(start);
                self.ready.extend_from_slice(STAND_IN_HEAD);
                return;
            }
            if matches!(self.state, State::Closed { .. }) {
                return;
            }
        }
    }

    /// When a chunked body breaks the grammar in the same read that brought its head, the
    /// head has not reached hyper yet: the whole request is refused like a bad head, so the
    /// upstream never sees any of it. Returns where the request starts; the caller drops
    /// everything from there (the fast path's caller queues the stand-in through `refuse`).
    fn refuse_whole_request(&mut self, head: Option<(usize, u64)>) -> Option<usize> {
        let (start, index) = head?;
        if self.state != (State::Closed { error: true }) {
            return None;
        }
        self.report.refuse(index, HeadRefusal::MalformedBody);
        self.state = State::Closed { error: false };
        if self.ready.is_empty() {
            self.ready.extend_from_slice(STAND_IN_HEAD);
        }
        Some(start)
    }

    /// Checked bytes queued for hyper, if any; `consume` says how many were taken.
    pub fn ready(&self) -> &[u8] {
        &self.ready[self.ready_from..]
    }

    pub fn consume(&mut self, len: usize) {
        self.ready_from += len;
        if self.ready_from >= self.ready.len() {
            self.ready.clear();
            self.ready_from = 0;
        }
    }

    /// Whether hyper has been told everything it will be told, and whether an error is owed
    /// first. Taking the error clears it.
    fn take_end(&mut self) -> Option<bool> {
        match &mut self.state {
            State::Closed { error } => Some(std::mem::take(error)),
            _ => None,
        }
    }

    fn hold(&mut self, bytes: &[u8]) {
        self.held.extend_from_slice(bytes);
        if self.held.len() > self.max_head_bytes {
            self.held = Vec::new();
            self.refuse(HeadRefusal::TooLarge);
        }
    }

    fn refuse(&mut self, refusal: HeadRefusal) {
        self.report.refuse(self.heads, refusal);
        self.heads += 1;
        self.state = State::Closed { error: false };
        self.ready.extend_from_slice(STAND_IN_HEAD);
    }

    fn step(&mut self, bytes: &[u8]) -> Step {
        match self.state {
            State::Closed { .. } => Step::Stop,
            State::Opaque => Step::Pass(bytes.len()),
            State::Body { left, then } => {
                let take = usize::try_from(left).map_or(bytes.len(), |left| left.min(bytes.len()));
                let left = left - take as u64;
                self.state = if left == 0 {
                    after(then)
                } else {
                    State::Body { left, then }
                };
                Step::Pass(take)
            }
            State::Chunked { chunk, then } => {
                let mut chunk = chunk;
                let mut at = 0;
                while at < bytes.len() {
                    match chunk_step(chunk, &bytes[at..]) {
                        Ok((next, used)) => {
                            at += used;
                            match next {
                                Some(next) => chunk = next,
                                None => {
                                    self.state = after(then);
                                    return Step::Pass(at);
                                }
                            }
                        }
                        Err(()) => {
                            self.state = State::Closed { error: true };
                            return if at > 0 { Step::Pass(at) } else { Step::Stop };
                        }
                    }
                }
                self.state = State::Chunked { chunk, then };
                Step::Pass(at)
            }
            State::Head => self.head(bytes),
        }
    }

    fn head(&mut self, bytes: &[u8]) -> Step {
        // A head can only end where a line does: parse again only once a line has ended
        // since the last try, so a head arriving a byte at a time costs a parse per line,
        // not per byte.
        let from = self.parsed_to.min(bytes.len());
        if memchr::memchr(b'\n', &bytes[from..]).is_none() {
            return Step::NeedMore;
        }
        let mut headers = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        // httparse skips (and counts) empty lines before the request line, as RFC 9112 §2.2
        // allows; hyper reads them the same way.
        let checked = match request.parse_with_uninit_headers(bytes, &mut headers) {
            Ok(httparse::Status::Partial) => {
                self.parsed_to = bytes.len();
                return Step::NeedMore;
            }
            Ok(httparse::Status::Complete(end)) if end > self.max_head_bytes => {
                Err(HeadRefusal::TooLarge)
            }
            Ok(httparse::Status::Complete(end)) => {
                check_parsed(&request, &bytes[..end]).map(|framing| (framing, end))
            }
            // hyper answers too many headers as a head too large.
            Err(httparse::Error::TooManyHeaders) => Err(HeadRefusal::TooLarge),
            Err(_) => Err(HeadRefusal::Malformed),
        };
        self.parsed_to = 0;
        match checked {
            Ok((framing, end)) => {
                self.heads += 1;
                let then = if framing.switches {
                    AfterBody::Opaque
                } else {
                    AfterBody::NextHead
                };
                self.state = match framing.body {
                    BodyFraming::Length(0) => after(then),
                    BodyFraming::Length(left) => State::Body { left, then },
                    BodyFraming::Chunked => State::Chunked {
                        chunk: Chunk::Size { size: 0, digits: 0 },
                        then,
                    },
                };
                Step::Pass(end)
            }
            Err(refusal) => {
                self.refuse(refusal);
                Step::Stop
            }
        }
    }
}

fn after(then: AfterBody) -> State {
    match then {
        AfterBody::NextHead => State::Head,
        AfterBody::Opaque => State::Opaque,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeadFraming {
    body: BodyFraming,
    /// The request may switch protocols if the upstream agrees (`Upgrade` with
    /// `Connection: upgrade`), or is a `CONNECT`.
    switches: bool,
}

/// Checks a complete head that httparse read: CRLF line ends only (httparse also takes a bare
/// LF, which other parsers read differently), and framed one way only.
fn check_parsed(request: &httparse::Request, head: &[u8]) -> Result<HeadFraming, HeadRefusal> {
    let bare_lf = memchr::memchr_iter(b'\n', head).any(|at| at == 0 || head[at - 1] != b'\r');
    if bare_lf {
        return Err(HeadRefusal::Malformed);
    }
    // hyper refuses a longer target with a bare 414 of its own: refuse it here first, as
    // part of a head that is too large.
    if request
        .path
        .is_some_and(|target| target.len() >= MAX_TARGET_BYTES)
    {
        return Err(HeadRefusal::TooLarge);
    }
    let http11 = request.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut upgrade = false;
    let mut connection_upgrade = false;
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value.trim_ascii();
        if name.eq_ignore_ascii_case("content-length") {
            // One plain decimal number, once: `+5`, `0x5`, `5, 5` and repeats are refused.
            if length.is_some() || value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(HeadRefusal::ContentLength);
            }
            let text = std::str::from_utf8(value).map_err(|_| HeadRefusal::ContentLength)?;
            length = Some(text.parse().map_err(|_| HeadRefusal::ContentLength)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !http11 || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(HeadRefusal::TransferEncoding);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = true;
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= value
                .split(|&b| b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        }
    }
    let body = match (length, chunked) {
        (Some(_), true) => return Err(HeadRefusal::LengthAndChunked),
        (Some(length), false) => BodyFraming::Length(length),
        (None, true) => BodyFraming::Chunked,
        (None, false) => BodyFraming::Length(0),
    };
    let switches = (http11 && upgrade && connection_upgrade) || request.method == Some("CONNECT");
    Ok(HeadFraming { body, switches })
}

/// One step of a chunked body: the chunk state after the bytes it used, `None` once the body
/// (trailers included) has ended, or `Err` for a byte the grammar does not allow (RFC 9112
/// §7.1: hex digits only for the size, CRLF line ends, extensions of visible ASCII, spaces
/// and tabs).
fn chunk_step(chunk: Chunk, bytes: &[u8]) -> Result<(Option<Chunk>, usize), ()> {
    let byte = bytes[0];
    let next = match chunk {
        Chunk::Size { size, digits } => match hex_value(byte) {
            // Sixteen hex digits fill a u64; a seventeenth would overflow.
            Some(_) if digits >= 16 => return Err(()),
            Some(digit) => Chunk::Size {
                size: size << 4 | u64::from(digit),
                digits: digits + 1,
            },
            None if digits == 0 => return Err(()),
            None => match byte {
                b'\r' => Chunk::SizeLf { size },
                b';' | b' ' | b'\t' => Chunk::Extension { size, line: 1 },
                _ => return Err(()),
            },
        },
        Chunk::Extension { size, line } => match byte {
            b'\r' => Chunk::SizeLf { size },
            b' ' | b'\t' | 0x21..=0x7E if line < MAX_CHUNK_LINE => Chunk::Extension {
                size,
                line: line + 1,
            },
            _ => return Err(()),
        },
        Chunk::SizeLf { size } => match byte {
            b'\n' if size == 0 => Chunk::Trailer {
                section: 0,
                line: 0,
                cr: false,
            },
            b'\n' => Chunk::Data { left: size },
            _ => return Err(()),
        },
        Chunk::Data { left } => {
            let take = usize::try_from(left).map_or(bytes.len(), |left| left.min(bytes.len()));
            let left = left - take as u64;
            let next = if left == 0 {
                Chunk::DataCr
            } else {
                Chunk::Data { left }
            };
            return Ok((Some(next), take));
        }
        Chunk::DataCr => match byte {
            b'\r' => Chunk::DataLf,
            _ => return Err(()),
        },
        Chunk::DataLf => match byte {
            b'\n' => Chunk::Size { size: 0, digits: 0 },
            _ => return Err(()),
        },
        Chunk::Trailer { section, line, cr } => {
            if section >= MAX_CHUNK_LINE {
                return Err(());
            }
            match (byte, cr) {
                (b'\n', true) if line == 0 => return Ok((None, 1)),
                (b'\n', true) => Chunk::Trailer {
                    section: section + 1,
                    line: 0,
                    cr: false,
                },
                (b'\r', false) => Chunk::Trailer {
                    section: section + 1,
                    line,
                    cr: true,
                },
                (b'\t' | 0x20..=0x7E | 0x80..=0xFF, false) => Chunk::Trailer {
                    section: section + 1,
                    line: line + 1,
                    cr: false,
                },
                _ => return Err(()),
            }
        }
    };
    Ok((Some(next), 1))
}

/// Whether the guard passed this HTTP/1.1 request on as one that may switch protocols (see
/// [`check_head`]), after which it no longer reads heads on the connection.
pub fn asks_to_switch<B>(request: &http::Request<B>) -> bool {
    if request.version() != http::Version::HTTP_11 {
        return false;
    }
    let headers = request.headers();
    let connection_upgrade = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    request.method() == http::Method::CONNECT
        || (headers.contains_key(http::header::UPGRADE) && connection_upgrade)
}

/// Where a guard leaves its socket when hyper drops it, for the graceful close.
pub type SocketSlot<T> = Arc<Mutex<Option<T>>>;

/// An HTTP/1.1 connection's socket as hyper sees it: reads pass through a [`FramingScanner`].
pub struct FramingGuard<T> {
    io: Option<T>,
    scanner: FramingScanner,
    slot: SocketSlot<T>,
}

impl<T> FramingGuard<T> {
    pub fn new(io: T, scanner: FramingScanner, slot: SocketSlot<T>) -> FramingGuard<T> {
        FramingGuard {
            io: Some(io),
            scanner,
            slot,
        }
    }

    fn io(&mut self) -> &mut T {
        self.io.as_mut().expect("the socket is only taken on drop")
    }
}

impl<T> Drop for FramingGuard<T> {
    fn drop(&mut self) {
        if let Some(io) = self.io.take() {
            *self
                .slot
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()) = Some(io);
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for FramingGuard<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = this.scanner.ready();
            if !ready.is_empty() {
                let len = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..len]);
                this.scanner.consume(len);
                return Poll::Ready(Ok(()));
            }
            match this.scanner.take_end() {
                Some(true) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed chunked request body",
                    )))
                }
                // Not end of file: hyper drops a connection whose client closed in the middle
                // of a request, before answering it. Nothing more ever comes; hyper finishes
                // on its own (every refusal closes the connection once answered).
                Some(false) => return Poll::Pending,
                None => {}
            }
            let before = buf.filled().len();
            std::task::ready!(Pin::new(this.io()).poll_read(cx, buf))?;
            let read = buf.filled().len() - before;
            if read == 0 {
                return Poll::Ready(Ok(()));
            }
            let kept = this.scanner.feed(&buf.filled()[before..]);
            buf.set_filled(before + kept);
            if kept > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for FramingGuard<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(T::is_write_vectored)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io()).poll_shutdown(cx)
    }
}

/// How long, and how much, a graceful close reads and discards.
const LINGER_TIME: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 1 << 20;

/// Closes a connection gracefully: stops writing (so the client sees the end of the answer),
/// then reads and discards what the client is still sending until it closes its side, for at
/// most [`LINGER_TIME`] and [`LINGER_BYTES`]. Closing a socket with unread input makes the
/// kernel send a reset, which can destroy an answer the client has not read yet.
pub async fn linger(mut socket: TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = socket.shutdown().await;
    // On the heap: an array here would be held inline by every connection's task (this
    // future is part of it) for the connection's whole life, 8 KiB each while idle.
    let mut discard = vec![0u8; 8192];
    let mut total = 0;
    let _ = tokio::time::timeout(LINGER_TIME, async {
        while total < LINGER_BYTES {
            match socket.read(&mut discard).await {
                Ok(0) | Err(_) => break,
                Ok(read) => total += read,
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `input` in pieces of `piece` bytes, collecting what hyper would read, and the
    /// refusal recorded for each of the first three requests.
    fn run(
        input: &[u8],
        piece: usize,
        max_head: usize,
    ) -> (Vec<u8>, bool, Vec<Option<HeadRefusal>>) {
        let report = Arc::new(FramingReport::default());
        let mut scanner = FramingScanner::new(max_head, report.clone());
        let mut out = Vec::new();
        let mut error = false;
        for part in input.chunks(piece.max(1)) {
            let kept = scanner.feed(part);
            out.extend_from_slice(&part[..kept]);
            let ready = scanner.ready().to_vec();
            out.extend_from_slice(&ready);
            scanner.consume(ready.len());
            if let Some(owed) = scanner.take_end() {
                error |= owed;
                break;
            }
        }
        let refusals = (0..3).map(|_| report.next_request()).collect();
        (out, error, refusals)
    }

    const HEAD: &str = "POST /a HTTP/1.1\r\nHost: h\r\n";
    const STAND_IN: &str = "GET / HTTP/1.1\r\nhost: refused.invalid\r\n\r\n";
    use HeadRefusal::*;

    /// (name, input, expected bytes for hyper, error owed after them, refusal of request 0,
    /// of request 1)
    #[allow(clippy::type_complexity)]
    fn cases() -> Vec<(
        &'static str,
        String,
        String,
        bool,
        Option<HeadRefusal>,
        Option<HeadRefusal>,
    )> {
        let get = "GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_string();
        let smuggled = "GET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
        vec![
            ("plain get", get.clone(), get.clone(), false, None, None),
            ("two pipelined gets", get.repeat(2), get.repeat(2), false, None, None),
            ("leading empty line", format!("\r\n{get}"), format!("\r\n{get}"), false, None, None),
            (
                "length body then next head",
                format!("{HEAD}Content-Length: 5\r\n\r\nhello{get}"),
                format!("{HEAD}Content-Length: 5\r\n\r\nhello{get}"),
                false, None, None,
            ),
            (
                "chunked body with extension and trailer",
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n5;name=\"v a\"\r\nhello\r\n0\r\nX-T: 1\r\n\r\n{get}"),
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n5;name=\"v a\"\r\nhello\r\n0\r\nX-T: 1\r\n\r\n{get}"),
                false, None, None,
            ),
            (
                "upper-case hex size",
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n"),
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n"),
                false, None, None,
            ),
            (
                "length and chunked",
                format!("{HEAD}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
                STAND_IN.to_string(), false, Some(LengthAndChunked), None,
            ),
            (
                "chunked and length",
                format!("{HEAD}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n{smuggled}"),
                STAND_IN.to_string(), false, Some(LengthAndChunked), None,
            ),
            ("chunked twice", format!("{HEAD}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), STAND_IN.to_string(), false, Some(TransferEncoding), None),
            ("gzip, chunked", format!("{HEAD}Transfer-Encoding: gzip, chunked\r\n\r\n"), STAND_IN.to_string(), false, Some(TransferEncoding), None),
            ("identity", format!("{HEAD}Transfer-Encoding: identity\r\n\r\n"), STAND_IN.to_string(), false, Some(TransferEncoding), None),
            ("chunked on 1.0", "POST / HTTP/1.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n".into(), STAND_IN.to_string(), false, Some(TransferEncoding), None),
            ("length with sign", format!("{HEAD}Content-Length: +5\r\n\r\nhello"), STAND_IN.to_string(), false, Some(ContentLength), None),
            ("length in hex", format!("{HEAD}Content-Length: 0x5\r\n\r\nhello"), STAND_IN.to_string(), false, Some(ContentLength), None),
            ("length twice", format!("{HEAD}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello"), STAND_IN.to_string(), false, Some(ContentLength), None),
            ("length list", format!("{HEAD}Content-Length: 5, 5\r\n\r\nhello"), STAND_IN.to_string(), false, Some(ContentLength), None),
            ("length overflow", format!("{HEAD}Content-Length: 99999999999999999999999\r\n\r\n"), STAND_IN.to_string(), false, Some(ContentLength), None),
            ("bare LF head", "GET / HTTP/1.1\nHost: h\n\n".into(), STAND_IN.to_string(), false, Some(Malformed), None),
            ("bare LF inside head", "GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n".into(), STAND_IN.to_string(), false, Some(Malformed), None),
            ("not http", "HELLO\r\n\r\n".into(), STAND_IN.to_string(), false, Some(Malformed), None),
            ("space before colon", "GET / HTTP/1.1\r\nHost : h\r\n\r\n".into(), STAND_IN.to_string(), false, Some(Malformed), None),
            ("obs-fold", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n".into(), STAND_IN.to_string(), false, Some(Malformed), None),
            ("second head refused", format!("{get}GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"), format!("{get}{STAND_IN}"), false, None, Some(ContentLength)),
            (
                "chunk size overflow",
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n"),
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n1fffffffffffffff"), true, None, None,
            ),
            (
                "negative chunk size",
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n{smuggled}"),
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n"), true, None, None,
            ),
            (
                "0x chunk size",
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"),
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n0"), true, None, None,
            ),
            (
                "bare LF after chunk size",
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n"),
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n5"), true, None, None,
            ),
            (
                "NUL in chunk extension",
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n5;a\0b\r\nhello\r\n0\r\n\r\n{smuggled}"),
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n5;a"), true, None, None,
            ),
            (
                "data longer than its size",
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n"),
                format!("{HEAD}Transfer-Encoding: chunked\r\n\r\n3\r\nhel"), true, None, None,
            ),
            (
                "upgrade passes what follows",
                "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\u{1}\u{2}frames\n".into(),
                "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\u{1}\u{2}frames\n".into(),
                false, None, None,
            ),
            ("head over the limit", format!("GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n", "a".repeat(300)), STAND_IN.to_string(), false, Some(TooLarge), None),
            ("head that never ends", format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(300)), STAND_IN.to_string(), false, Some(TooLarge), None),
        ]
    }

    #[test]
    fn framing_cases_in_any_piece_size() {
        for (name, input, expected, error, first, second) in cases() {
            // A body error found in the read that brought its head refuses the whole
            // request instead; byte by byte, the head has gone on before the error is seen.
            let pieces: &[usize] = if error {
                &[1]
            } else {
                &[1, 2, 3, 7, 64, input.len()]
            };
            for &piece in pieces {
                let (out, owed, refusals) = run(input.as_bytes(), piece, 256);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    expected,
                    "{name} (pieces of {piece})"
                );
                assert_eq!(owed, error, "{name} (pieces of {piece}): error owed");
                assert_eq!(refusals[0], first, "{name} (pieces of {piece}): request 0");
                assert_eq!(refusals[1], second, "{name} (pieces of {piece}): request 1");
            }
            if error {
                let (out, owed, refusals) = run(input.as_bytes(), input.len(), 256);
                assert_eq!(
                    String::from_utf8_lossy(&out),
                    STAND_IN,
                    "{name} (one piece)"
                );
                assert!(!owed, "{name} (one piece): no error owed");
                assert_eq!(refusals[0], Some(MalformedBody), "{name} (one piece)");
            }
        }
    }

    #[test]
    fn a_body_error_after_a_complete_request_refuses_only_the_second() {
        let first = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
        let input = format!("{first}{HEAD}Transfer-Encoding: chunked\r\n\r\n-1\r\n");
        for piece in [input.len(), first.len() + 5] {
            let (out, owed, refusals) = run(input.as_bytes(), piece, 256);
            assert_eq!(
                String::from_utf8_lossy(&out),
                format!("{first}{STAND_IN}"),
                "{piece}"
            );
            assert!(!owed);
            assert_eq!(refusals[..2], [None, Some(MalformedBody)], "{piece}");
        }
    }

    #[test]
    fn a_target_hyper_would_refuse_as_too_long_is_refused_as_too_large() {
        let long = format!(
            "GET /{} HTTP/1.1\r\nHost: h\r\n\r\n",
            "a".repeat(MAX_TARGET_BYTES)
        );
        let (out, _, refusals) = run(long.as_bytes(), long.len(), 1 << 20);
        assert_eq!(String::from_utf8_lossy(&out), STAND_IN);
        assert_eq!(refusals[0], Some(TooLarge));
        let fits = format!(
            "GET /{} HTTP/1.1\r\nHost: h\r\n\r\n",
            "a".repeat(MAX_TARGET_BYTES - 2)
        );
        let (out, _, refusals) = run(fits.as_bytes(), fits.len(), 1 << 20);
        assert_eq!(out, fits.as_bytes());
        assert_eq!(refusals[0], None);
    }

    #[test]
    fn only_the_refused_request_is_refused() {
        let report = Arc::new(FramingReport::default());
        report.refuse(2, HeadRefusal::Malformed);
        assert_eq!(report.next_request(), None);
        assert_eq!(report.next_request(), None);
        assert_eq!(report.next_request(), Some(HeadRefusal::Malformed));
        assert_eq!(report.next_request(), None);
    }

    #[test]
    fn an_opaque_scanner_passes_everything() {
        let mut scanner = FramingScanner::opaque(Arc::new(FramingReport::default()));
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0";
        assert_eq!(scanner.feed(preface), preface.len());
    }
}
