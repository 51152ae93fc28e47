//! The threads that serve connections: one single-threaded event loop per thread, each
//! connection pinned to one of them for its whole life.
//!
//! A proxied request wakes two tasks, the client's connection and the upstream
//! connection. On a work-stealing runtime those often sit on different threads and every
//! wake-up crosses threads; here both live on the same thread (each worker has its own
//! upstream pool, see `proxy::forward`), which is how nginx and HAProxy spend their CPU too.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// A timer that keeps each worker's time driver waking at least this often. Without one,
/// a worker that parked with no timer due records no next wake, and the first timeout armed
/// after it (every request arms one: the header-read timeout, Redis' response timeout) counts
/// as earlier than that next wake and writes the worker's eventfd to wake a thread that is
/// already awake: a system call, and a spurious return from the next `epoll_wait`. Timeouts
/// due later than the heartbeat do not.
const HEARTBEAT: std::time::Duration = std::time::Duration::from_millis(100);

thread_local! {
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// The index of the worker running the caller (0 outside the workers).
pub fn current_worker() -> usize {
    worker_index().unwrap_or(0)
}

/// The index of the worker running the caller, `None` outside the workers.
pub fn worker_index() -> Option<usize> {
    WORKER_INDEX.with(Cell::get)
}

/// How many workers `threads` asks for: 0 means one per core.
pub fn worker_count(threads: usize) -> usize {
    if threads > 0 {
        threads
    } else {
        std::thread::available_parallelism().map_or(2, |cores| cores.get())
    }
}

pub struct Workers {
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: watch::Sender<bool>,
}

impl Workers {
    pub fn start(count: usize) -> io::Result<Workers> {
        let (stop, stopped) = watch::channel(false);
        let mut handles = Vec::with_capacity(count);
        for index in 0..count {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let mut stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("portcullis-worker-{index}"))
                .spawn(move || {
                    WORKER_INDEX.with(|cell| cell.set(Some(index)));
                    // Runs the connections spawned onto this worker until told to stop (or
                    // until the pool is dropped); the runtime, and whatever still runs on
                    // it, is dropped with the thread.
                    runtime.block_on(async move {
                        let heartbeat = async {
                            let mut tick = tokio::time::interval(HEARTBEAT);
                            tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
                            loop {
                                tick.tick().await;
                            }
                        };
                        tokio::select! {
                            _ = stopped.wait_for(|stop| *stop) => {}
                            () = heartbeat => {}
                        }
                    });
                })?;
        }
        Ok(Workers {
            handles,
            next: AtomicUsize::new(0),
            stop,
        })
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// Runs `task` on the next worker, round robin.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        self.handles[index].spawn(task);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}
