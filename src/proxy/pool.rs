//! Keep-alive connections to one upstream: an idle list per worker thread, so that a
//! connection is only ever driven by the thread whose requests use it.
//!
//! Built on hyper's connection-level HTTP/1.1 client rather than hyper-util's pooled
//! `Client`, which keys one shared pool by scheme and authority (hashed on every checkout and
//! every return) and spawns a task per response to put its connection back. Each upstream has
//! its own pool here, so there is nothing to look up, and a connection goes back when the
//! response body it carried is finished ([`Lease`], released by
//! [`crate::proxy::response_body::ForwardedBody`]).
//!
//! A request that meets a pooled connection the upstream has just closed (its keep-alive
//! timeout ran out while the connection sat idle) is sent again on another: hyper hands an
//! unsent request back, so this never repeats a request the upstream may have seen.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::proxy::body::{BoxError, ClientBody};

type Sender = SendRequest<ClientBody>;

/// Why a request got no response from the upstream.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened.
    Connect(BoxError),
    /// The request was sent (or could not be) and the exchange failed.
    Request(hyper::Error),
}

pub struct Pool {
    connector: HttpConnector,
    /// `http://{authority}`, what the connector dials.
    address: Uri,
    idle_timeout: Duration,
    max_idle: usize,
    /// One per worker thread.
    idle: Vec<Arc<Mutex<IdleList<Sender>>>>,
}

impl Pool {
    pub fn new(
        connector: HttpConnector,
        authority: Authority,
        idle_timeout: Duration,
        max_idle: usize,
        workers: usize,
    ) -> Pool {
        let address = Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(authority)
            .path_and_query("/")
            .build()
            .expect("a scheme, an authority and / make a URI");
        Pool {
            connector,
            address,
            idle_timeout,
            max_idle,
            idle: (0..workers.max(1))
                .map(|_| Arc::new(Mutex::new(IdleList::default())))
                .collect(),
        }
    }

    /// Sends `request` (origin-form target, `Host` set) on an idle connection of `worker`'s,
    /// or a new one, and returns the response head with the lease on its connection.
    pub async fn send(
        &self,
        worker: usize,
        mut request: Request<ClientBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let home = &self.idle[worker % self.idle.len()];
        loop {
            let pooled = self.checkout(home);
            let reused = pooled.is_some();
            let mut sender = match pooled {
                Some(sender) => sender,
                // Boxed: connecting is the rare path, and its future is large. Inline, it would
                // make every request's future that much larger, and futures are moved (copied)
                // into place on every request.
                None => Box::pin(self.connect()).await?,
            };
            // An idle connection is ready at once; one the upstream closed says so here.
            if reused && sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let lease = Lease {
                        sender,
                        home: Arc::downgrade(home),
                        max_idle: self.max_idle,
                    };
                    return Ok((response, lease));
                }
                Err(mut error) => match error.take_message() {
                    // Not sent: the connection closed before the request could go out.
                    Some(unsent) if reused => request = unsent,
                    _ => return Err(SendError::Request(error.into_error())),
                },
            }
        }
    }

    fn checkout(&self, home: &Arc<Mutex<IdleList<Sender>>>) -> Option<Sender> {
        let mut idle = lock(home);
        if !idle.reaper_started {
            idle.reaper_started = true;
            spawn_reaper(Arc::downgrade(home), self.idle_timeout);
        }
        idle.take(Instant::now(), self.idle_timeout, |sender| {
            !sender.is_closed()
        })
    }

    async fn connect(&self) -> Result<Sender, SendError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|error| SendError::Connect(error.into()))?;
        let io = connector
            .call(self.address.clone())
            .await
            .map_err(|error| SendError::Connect(error.into()))?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|error| SendError::Connect(error.into()))?;
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, "upstream connection closed with an error");
            }
        });
        Ok(sender)
    }
}

/// A connection lent to one exchange. [`Lease::release`] puts it back once the response is
/// finished (and the request too); dropping it instead closes the connection (hyper cannot
/// reuse a connection whose response was not read to the end).
pub struct Lease {
    sender: Sender,
    home: Weak<Mutex<IdleList<Sender>>>,
    max_idle: usize,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").finish_non_exhaustive()
    }
}

impl Lease {
    pub fn release(mut self) {
        if self.sender.is_closed() {
            return;
        }
        if self.sender.is_ready() {
            self.put_back();
            return;
        }
        // The response is finished but the connection is not free: the request's body is
        // still going up (the upstream answered before reading it all). It goes back only
        // once it can take the next request, or a request that took it would wait behind the
        // upload.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if self.sender.ready().await.is_ok() {
                self.put_back();
            }
        });
    }

    fn put_back(self) {
        if let Some(home) = self.home.upgrade() {
            lock(&home).put(self.sender, Instant::now(), self.max_idle);
        }
    }
}

fn lock<C>(list: &Mutex<IdleList<C>>) -> MutexGuard<'_, IdleList<C>> {
    // The list stays consistent whatever panicked while holding it.
    list.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Closes connections left idle past the timeout even when no request comes to notice. One
/// per worker's list, started by its first request so that it runs on that worker; it ends
/// when the pool is dropped.
fn spawn_reaper(list: Weak<Mutex<IdleList<Sender>>>, idle_timeout: Duration) {
    let period = idle_timeout.max(Duration::from_millis(100));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(period).await;
            let Some(list) = list.upgrade() else {
                return;
            };
            lock(&list).evict_expired(Instant::now(), idle_timeout);
        }
    });
}

/// Idle connections, oldest first. Pure bookkeeping, with the time passed in.
#[derive(Debug)]
struct IdleList<C> {
    connections: VecDeque<(C, Instant)>,
    reaper_started: bool,
}

impl<C> Default for IdleList<C> {
    fn default() -> Self {
        IdleList {
            connections: VecDeque::new(),
            reaper_started: false,
        }
    }
}

impl<C> IdleList<C> {
    /// The most recently used connection that is still `usable` and not idle past
    /// `timeout`; the expired and unusable ones met on the way are dropped.
    fn take(&mut self, now: Instant, timeout: Duration, usable: impl Fn(&C) -> bool) -> Option<C> {
        while let Some((connection, since)) = self.connections.pop_back() {
            if now.saturating_duration_since(since) >= timeout {
                // Everything older has expired too.
                self.connections.clear();
                return None;
            }
            if usable(&connection) {
                return Some(connection);
            }
        }
        None
    }

    /// Keeps `connection` for reuse; at `max` the oldest goes to make room.
    fn put(&mut self, connection: C, now: Instant, max: usize) {
        if max == 0 {
            return;
        }
        while self.connections.len() >= max {
            self.connections.pop_front();
        }
        self.connections.push_back((connection, now));
    }

    fn evict_expired(&mut self, now: Instant, timeout: Duration) {
        while self
            .connections
            .front()
            .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= timeout)
        {
            self.connections.pop_front();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.connections.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(90);

    fn list(entries: &[(u32, u64)], t0: Instant) -> IdleList<u32> {
        let mut list = IdleList::default();
        for (connection, at) in entries {
            list.put(*connection, t0 + Duration::from_secs(*at), 10);
        }
        list
    }

    #[test]
    fn the_most_recently_returned_connection_is_reused_first() {
        let t0 = Instant::now();
        let mut idle = list(&[(1, 0), (2, 1), (3, 2)], t0);
        let now = t0 + Duration::from_secs(3);
        assert_eq!(idle.take(now, TIMEOUT, |_| true), Some(3));
        assert_eq!(idle.take(now, TIMEOUT, |_| true), Some(2));
        assert_eq!(idle.take(now, TIMEOUT, |_| true), Some(1));
        assert_eq!(idle.take(now, TIMEOUT, |_| true), None);
    }

    #[test]
    fn closed_connections_are_skipped_and_dropped() {
        let t0 = Instant::now();
        let mut idle = list(&[(1, 0), (2, 1), (3, 2)], t0);
        let now = t0 + Duration::from_secs(3);
        assert_eq!(idle.take(now, TIMEOUT, |c| *c == 1), Some(1));
        assert_eq!(idle.len(), 0, "2 and 3 were met closed and dropped");
    }

    #[test]
    fn a_connection_idle_past_the_timeout_is_never_handed_out() {
        let t0 = Instant::now();
        let mut idle = list(&[(1, 0), (2, 10)], t0);
        // 1 has been idle exactly the timeout, 2 not yet: 2 is taken, 1 stays for now.
        let now = t0 + TIMEOUT;
        assert_eq!(idle.take(now, TIMEOUT, |_| true), Some(2));
        assert_eq!(idle.take(now, TIMEOUT, |_| true), None);
        assert_eq!(idle.len(), 0, "the expired one was dropped on the way");

        let mut idle = list(&[(1, 0), (2, 10)], t0);
        let later = t0 + TIMEOUT + Duration::from_secs(10);
        assert_eq!(idle.take(later, TIMEOUT, |_| true), None);
        assert_eq!(idle.len(), 0);
    }

    #[test]
    fn eviction_removes_only_the_expired() {
        let t0 = Instant::now();
        let mut idle = list(&[(1, 0), (2, 5), (3, 50)], t0);
        idle.evict_expired(t0 + TIMEOUT + Duration::from_secs(5), TIMEOUT);
        assert_eq!(idle.len(), 1);
        assert_eq!(idle.take(t0 + TIMEOUT, TIMEOUT, |_| true), Some(3));
    }

    #[test]
    fn the_list_holds_at_most_max_keeping_the_newest() {
        let t0 = Instant::now();
        let mut idle = IdleList::default();
        for connection in 0..5u32 {
            idle.put(connection, t0, 3);
        }
        assert_eq!(idle.len(), 3);
        let taken: Vec<_> = std::iter::from_fn(|| idle.take(t0, TIMEOUT, |_| true)).collect();
        assert_eq!(taken, vec![4, 3, 2]);

        let mut none_kept = IdleList::default();
        none_kept.put(1u32, t0, 0);
        assert_eq!(none_kept.len(), 0, "pool_max_idle 0 keeps nothing");
    }
}
