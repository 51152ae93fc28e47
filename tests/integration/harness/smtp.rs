//! A real SMTP server on loopback for tests: it speaks enough of RFC 5321 for lettre (EHLO,
//! MAIL, RCPT, DATA with dot-unstuffing, RSET, NOOP, QUIT, and AUTH PLAIN accepting any
//! credentials), keeps every message it is given, and can be stopped and started again on the
//! same port to play an outage. Depends on tokio and std only.

// A harness: not every test binary that includes it calls every helper.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

/// The longest command line or DATA line accepted; a client past it is cut off.
const MAX_LINE: usize = 64 * 1024;

/// One message as the server received it.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The MAIL FROM address, without angle brackets.
    pub from: String,
    /// The RCPT TO addresses, without angle brackets.
    pub to: Vec<String>,
    /// The DATA section, dot-unstuffed, line endings as sent (CRLF), without the final ".".
    pub data: String,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<ReceivedMail>>,
    /// Signalled (notify_waiters) on each message received.
    arrived: Notify,
    /// Per recipient, how many of its messages `wait_for` has already returned.
    returned: Mutex<HashMap<String, usize>>,
    /// Dropping the listener is what makes the port refuse connections, so it sits where
    /// `stop` can take it synchronously; the accept loop only borrows it while polling.
    listener: Mutex<Option<TcpListener>>,
    /// Wakes the accept loop after `stop` took the listener away.
    stopped: Notify,
    /// Open sessions, aborted by `stop` so that nothing is received after it.
    sessions: Mutex<Vec<AbortHandle>>,
}

pub struct SmtpServer {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl SmtpServer {
    /// On 127.0.0.1 and a free port.
    pub async fn start() -> SmtpServer {
        SmtpServer::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the test SMTP server")
    }

    /// On `addr`: used to bring the server back on the port a stopped one had.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<SmtpServer> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        *state.listener.lock().unwrap() = Some(listener);
        tokio::spawn(accept_loop(Arc::clone(&state)));
        Ok(SmtpServer { addr, state })
    }

    /// Every message received so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.state.received.lock().unwrap().clone()
    }

    /// Waits (bounded by `timeout`) for a message to `recipient` (compared ignoring ASCII
    /// case) and returns the oldest one that no earlier call for that recipient returned, so
    /// consecutive calls walk through a recipient's messages in order, each once. Panics on
    /// timeout, listing what did arrive.
    pub async fn wait_for(&self, recipient: &str, timeout: Duration) -> ReceivedMail {
        let key = recipient.to_ascii_lowercase();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before looking, so a message that lands in between still wakes us.
            let arrived = self.state.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();

            if let Some(mail) = self.take_next(&key) {
                return mail;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                let seen: Vec<String> = self
                    .received()
                    .iter()
                    .map(|m| format!("{:?} {:?}", m.to, m.subject()))
                    .collect();
                panic!(
                    "no new mail to {recipient} at the SMTP server {} within {timeout:?}; \
                     received so far: {seen:?}",
                    self.addr
                );
            }
        }
    }

    fn take_next(&self, key: &str) -> Option<ReceivedMail> {
        let received = self.state.received.lock().unwrap();
        let mut returned = self.state.returned.lock().unwrap();
        let skip = returned.entry(key.to_owned()).or_insert(0);
        let next = received
            .iter()
            .filter(|m| m.to.iter().any(|to| to.eq_ignore_ascii_case(key)))
            .nth(*skip)?
            .clone();
        *skip += 1;
        Some(next)
    }

    /// Stops accepting and closes the listener, so the port refuses connections, and drops
    /// the sessions in progress. Messages already received stay readable.
    pub fn stop(&self) {
        drop(self.state.listener.lock().unwrap().take());
        self.state.stopped.notify_one();
        for session in self.state.sessions.lock().unwrap().drain(..) {
            session.abort();
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(state: Arc<State>) {
    loop {
        let accepted = tokio::select! {
            accepted = poll_fn(|cx| {
                match state.listener.lock().unwrap().as_ref() {
                    Some(listener) => listener.poll_accept(cx).map(Some),
                    None => std::task::Poll::Ready(None),
                }
            }) => accepted,
            _ = state.stopped.notified() => None,
        };
        match accepted {
            None => return,
            Some(Ok((stream, _))) => {
                let session = tokio::spawn(session(stream, Arc::clone(&state)));
                let mut sessions = state.sessions.lock().unwrap();
                sessions.retain(|s| !s.is_finished());
                sessions.push(session.abort_handle());
            }
            // A connection that failed before it was accepted; keep serving the others.
            Some(Err(_)) => tokio::task::yield_now().await,
        }
    }
}

/// One SMTP session. I/O errors end it quietly: the client went away.
async fn session(stream: TcpStream, state: Arc<State>) {
    let _ = serve(stream, &state).await;
}

async fn serve(stream: TcpStream, state: &State) -> std::io::Result<()> {
    let mut conn = BufReader::new(stream);
    reply(&mut conn, "220 localhost ESMTP portcullis-test ready\r\n").await?;

    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = Vec::new();
    loop {
        if !read_line(&mut conn, &mut line).await? {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        let command = text.trim_end_matches(['\r', '\n']);
        let verb = command
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let argument = command.get(verb.len()..).unwrap_or_default().trim();
        match verb.as_str() {
            "EHLO" => {
                from = None;
                to.clear();
                reply(
                    &mut conn,
                    "250-localhost greets you\r\n250-8BITMIME\r\n250-SIZE 10485760\r\n\
                     250-AUTH PLAIN\r\n250 SMTPUTF8\r\n",
                )
                .await?
            }
            "HELO" => {
                from = None;
                to.clear();
                reply(&mut conn, "250 localhost\r\n").await?
            }
            "AUTH" => {
                let mut parts = argument.split_whitespace();
                if !parts
                    .next()
                    .unwrap_or_default()
                    .eq_ignore_ascii_case("PLAIN")
                {
                    reply(&mut conn, "504 5.5.4 only AUTH PLAIN\r\n").await?;
                } else if parts.next().is_some() {
                    reply(&mut conn, "235 2.7.0 authenticated\r\n").await?;
                } else {
                    // No initial response: ask for it, then accept whatever comes.
                    reply(&mut conn, "334 \r\n").await?;
                    if !read_line(&mut conn, &mut line).await? {
                        return Ok(());
                    }
                    reply(&mut conn, "235 2.7.0 authenticated\r\n").await?;
                }
            }
            "MAIL" => match path_after(argument, "FROM:") {
                Some(address) => {
                    from = Some(address);
                    to.clear();
                    reply(&mut conn, "250 2.1.0 sender ok\r\n").await?
                }
                None => reply(&mut conn, "501 5.5.4 syntax: MAIL FROM:<address>\r\n").await?,
            },
            "RCPT" => match (&from, path_after(argument, "TO:")) {
                (None, _) => reply(&mut conn, "503 5.5.1 MAIL first\r\n").await?,
                (Some(_), Some(address)) => {
                    to.push(address);
                    reply(&mut conn, "250 2.1.5 recipient ok\r\n").await?
                }
                (Some(_), None) => {
                    reply(&mut conn, "501 5.5.4 syntax: RCPT TO:<address>\r\n").await?
                }
            },
            "DATA" => {
                if from.is_none() || to.is_empty() {
                    reply(&mut conn, "503 5.5.1 MAIL and RCPT first\r\n").await?;
                    continue;
                }
                reply(&mut conn, "354 end data with <CR><LF>.<CR><LF>\r\n").await?;
                let mut data = Vec::new();
                loop {
                    if !read_line(&mut conn, &mut line).await? {
                        return Ok(()); // cut off mid-message: nothing was accepted
                    }
                    let content = line
                        .strip_suffix(b"\n")
                        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                        .unwrap_or(&line);
                    if content == b"." {
                        break;
                    }
                    // Undo dot-stuffing: a leading "." was doubled by the client.
                    data.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
                }
                let mail = ReceivedMail {
                    from: from.take().unwrap_or_default(),
                    to: std::mem::take(&mut to),
                    data: String::from_utf8_lossy(&data).into_owned(),
                };
                // Delivery is at least once: a gateway whose test ended mid-batch never
                // committed what it sent, and another gateway sends it again with the same
                // Message-ID. Keep one copy, as a mail client would.
                {
                    let mut received = state.received.lock().unwrap();
                    let id = mail.header("message-id");
                    let duplicate = id.is_some()
                        && received
                            .iter()
                            .any(|earlier| earlier.header("message-id") == id);
                    if !duplicate {
                        received.push(mail);
                    }
                }
                state.arrived.notify_waiters();
                reply(&mut conn, "250 2.0.0 queued\r\n").await?
            }
            "RSET" => {
                from = None;
                to.clear();
                reply(&mut conn, "250 2.0.0 reset\r\n").await?
            }
            "NOOP" => reply(&mut conn, "250 2.0.0 ok\r\n").await?,
            "QUIT" => {
                reply(&mut conn, "221 2.0.0 bye\r\n").await?;
                return conn.into_inner().shutdown().await;
            }
            _ => reply(&mut conn, "502 5.5.2 command not recognized\r\n").await?,
        }
    }
}

/// Reads one line including its `\n` into `line`; false at end of stream. A line longer
/// than `MAX_LINE` is an error that ends the session.
async fn read_line(conn: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> std::io::Result<bool> {
    line.clear();
    loop {
        let buffer = conn.fill_buf().await?;
        if buffer.is_empty() {
            return Ok(!line.is_empty());
        }
        let (chunk, done) = match buffer.iter().position(|&b| b == b'\n') {
            Some(end) => (&buffer[..=end], true),
            None => (buffer, false),
        };
        line.extend_from_slice(chunk);
        let used = chunk.len();
        conn.consume(used);
        if line.len() > MAX_LINE {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "SMTP line too long",
            ));
        }
        if done {
            return Ok(true);
        }
    }
}

async fn reply(conn: &mut BufReader<TcpStream>, text: &str) -> std::io::Result<()> {
    let stream = conn.get_mut();
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await
}

/// The address in `FROM:<address> PARAMS` or `TO:<address>`, without brackets.
fn path_after(argument: &str, keyword: &str) -> Option<String> {
    let head = argument.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = argument[keyword.len()..].trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_owned())
}

impl ReceivedMail {
    /// The token after `token=` in the body: the run of `[A-Za-z0-9_-]` that follows.
    pub fn token(&self) -> Option<String> {
        let body = self.body();
        let start = body.find("token=")? + "token=".len();
        let token: String = body[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
            .collect();
        (!token.is_empty()).then_some(token)
    }

    /// The body after the header block, decoded if the message says it is quoted-printable
    /// or base64 (lettre picks those only for non-ASCII text).
    pub fn body(&self) -> String {
        let (_, body) = self.split();
        match self
            .header("Content-Transfer-Encoding")
            .map(|v| v.to_ascii_lowercase())
            .as_deref()
        {
            Some("quoted-printable") => decode_quoted_printable(body),
            Some("base64") => decode_base64(body).unwrap_or_else(|| body.to_owned()),
            _ => body.to_owned(),
        }
    }

    /// The Subject header, unfolded. Encoded words (non-ASCII subjects) are returned as sent.
    pub fn subject(&self) -> Option<String> {
        self.header("Subject")
    }

    /// A header's value, unfolded and trimmed; the first one if there are several.
    pub fn header(&self, name: &str) -> Option<String> {
        let (headers, _) = self.split();
        let mut value: Option<String> = None;
        for line in headers.split('\n').map(|l| l.trim_end_matches('\r')) {
            if line.starts_with([' ', '\t']) {
                if let Some(value) = value.as_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((key, rest)) = line.split_once(':') {
                if key.trim().eq_ignore_ascii_case(name) {
                    value = Some(rest.trim().to_owned());
                }
            }
        }
        value
    }

    /// (header block, body) split at the first empty line.
    fn split(&self) -> (&str, &str) {
        for separator in ["\r\n\r\n", "\n\n"] {
            if let Some(at) = self.data.find(separator) {
                return (&self.data[..at], &self.data[at + separator.len()..]);
            }
        }
        (&self.data, "")
    }
}

fn decode_quoted_printable(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let rest = &bytes[i + 1..];
            if rest.starts_with(b"\r\n") {
                i += 3; // soft line break
                continue;
            }
            if rest.starts_with(b"\n") {
                i += 2;
                continue;
            }
            let hex = rest
                .get(..2)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(byte) = hex {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decode_base64(text: &str) -> Option<String> {
    let mut out = Vec::new();
    let mut bits: u32 = 0;
    let mut count = 0;
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b'\r' | b'\n' | b' ' | b'\t' => continue,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(value);
        count += 6;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    String::from_utf8(out).ok()
}
