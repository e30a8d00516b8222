//! Write-stall detection: closing connections whose response makes no progress.
//!
//! A client can send a request for a large response and then never read it. Back-pressure then stops the
//! response where it stands (the socket buffer is full, hyper stops polling the body, the streaming
//! producer blocks on its full channel) and nothing would ever end the connection, which holds one of the
//! `max_connections` slots and the memory it has buffered. [`WatchedIo`] wraps the socket and notes when a
//! write has been waiting on the socket and when one succeeds; [`stalled`] completes once a write has been
//! waiting for the whole limit without a byte going out, and the server then drops the connection.
//!
//! Invariants: only writes count (a connection idle between requests is the header timeout's business);
//! any successful write of at least one byte resets the clock, so a slow reader that keeps reading is never
//! cut off.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// When the pending write of one connection started waiting, if one is waiting.
#[derive(Debug)]
pub struct StallClock {
    origin: Instant,
    /// Nanoseconds from `origin` to the start of the wait, plus one; 0 while no write waits.
    since: AtomicU64,
}

impl Default for StallClock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            since: AtomicU64::new(0),
        }
    }
}

impl StallClock {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_nanos())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// A write could not proceed; the wait starts now unless it already started.
    fn waiting(&self) {
        let _ = self
            .since
            .compare_exchange(0, self.now(), Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Bytes went out.
    fn progressed(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    /// How long the current write has been waiting, if one is.
    pub fn stalled_for(&self) -> Option<Duration> {
        match self.since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_nanos(self.now().saturating_sub(since))),
        }
    }
}

/// Completes once a write of the connection has waited `limit` without progress.
pub async fn stalled(clock: &StallClock, limit: Duration) {
    loop {
        let wait = match clock.stalled_for() {
            Some(d) if d >= limit => return,
            Some(d) => limit.saturating_sub(d),
            None => limit,
        };
        tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
    }
}

/// A socket whose writes report to a [`StallClock`].
#[derive(Debug)]
pub struct WatchedIo<T> {
    inner: T,
    clock: Arc<StallClock>,
}

impl<T> WatchedIo<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, clock: Arc<StallClock>) -> Self {
        Self { inner, clock }
    }

    fn note<R>(
        &self,
        poll: Poll<io::Result<R>>,
        progressed: impl Fn(&R) -> bool,
    ) -> Poll<io::Result<R>> {
        match &poll {
            Poll::Pending => self.clock.waiting(),
            Poll::Ready(Ok(r)) if progressed(r) => self.clock.progressed(),
            Poll::Ready(_) => {}
        }
        poll
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WatchedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WatchedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(poll, |&n| n > 0)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(poll, |&n| n > 0)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A flush moves no bytes of its own (a TCP flush is a no-op): only a pending one counts.
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(poll, |()| false)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_starts_once_and_progress_resets_it() {
        let clock = StallClock::default();
        assert_eq!(clock.stalled_for(), None);
        clock.waiting();
        let first = clock.since.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(2));
        clock.waiting();
        assert_eq!(
            clock.since.load(Ordering::Relaxed),
            first,
            "a later wait keeps the start"
        );
        assert!(clock.stalled_for().is_some());
        clock.progressed();
        assert_eq!(clock.stalled_for(), None);
    }
}
