//! The bytes of a Raft snapshot as openraft reads and writes them.
//!
//! A group's snapshot is never stored: its state machine is its snapshot. A
//! stored copy doubled every replica's disk use and rewrote the whole shard
//! into the journal at every snapshot. Instead a snapshot is a fjall read
//! view plus the `applied` and membership it shows (see
//! `StateMachine::snapshot_at_view`), and [`SnapshotData`] collects its
//! records only when openraft first reads or seeks it, which happens only
//! when a follower needs the snapshot sent. Building a snapshot for log
//! compaction, or reading the current one at start-up, costs a few point
//! reads.
//!
//! The collection runs on tokio's blocking pool, so a large shard never
//! stalls an async worker. Snapshots received from a leader arrive as bytes
//! and stay bytes.

use std::fmt;
use std::future::Future;
use std::io::{self, Cursor, SeekFrom};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Produces a snapshot's encoded payload; runs on the blocking pool.
pub type Collect = Box<dyn FnOnce() -> io::Result<Vec<u8>> + Send>;

/// A snapshot's payload: collected on first use, or bytes received.
pub struct SnapshotData {
    state: State,
    /// A seek asked for before the bytes existed; applied once they do.
    pending_seek: Option<SeekFrom>,
}

enum State {
    Pending(Option<Collect>),
    Collecting(tokio::task::JoinHandle<io::Result<Vec<u8>>>),
    Ready(Cursor<Vec<u8>>),
}

impl SnapshotData {
    /// A payload that `collect` builds the first time it is read or seeked.
    pub fn lazy(collect: Collect) -> Self {
        Self { state: State::Pending(Some(collect)), pending_seek: None }
    }

    /// A payload that is already bytes (received, or written by a test).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self { state: State::Ready(Cursor::new(bytes)), pending_seek: None }
    }

    /// The payload's bytes, collecting them on this thread if nothing has
    /// yet. Call from blocking code only.
    pub fn into_bytes_blocking(self) -> io::Result<Vec<u8>> {
        match self.state {
            State::Ready(c) => Ok(c.into_inner()),
            State::Pending(Some(collect)) => collect(),
            State::Pending(None) => Err(io::Error::other("snapshot collection failed earlier")),
            State::Collecting(_) => Err(io::Error::other("snapshot is being collected by a reader")),
        }
    }

    /// Drives the collection until the bytes exist, then applies a pending seek.
    fn poll_cursor(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut Cursor<Vec<u8>>>> {
        loop {
            match &mut self.state {
                State::Ready(_) => break,
                State::Pending(collect) => {
                    let Some(collect) = collect.take() else {
                        return Poll::Ready(Err(io::Error::other("snapshot collection failed earlier")));
                    };
                    self.state = State::Collecting(tokio::task::spawn_blocking(collect));
                }
                State::Collecting(handle) => {
                    let joined = ready!(Pin::new(handle).poll(cx));
                    match joined.map_err(io::Error::other).and_then(|r| r) {
                        Ok(bytes) => self.state = State::Ready(Cursor::new(bytes)),
                        Err(e) => {
                            self.state = State::Pending(None);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
            }
        }
        let State::Ready(cursor) = &mut self.state else { unreachable!("the loop ends only when ready") };
        if let Some(position) = self.pending_seek.take() {
            Pin::new(&mut *cursor).start_seek(position)?;
        }
        Poll::Ready(Ok(cursor))
    }
}

impl fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Pending(_) => "pending".to_string(),
            State::Collecting(_) => "collecting".to_string(),
            State::Ready(c) => format!("{} bytes", c.get_ref().len()),
        };
        f.debug_struct("SnapshotData").field("state", &state).finish()
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let cursor = ready!(self.get_mut().poll_cursor(cx))?;
        Pin::new(cursor).poll_read(cx, buf)
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        match &mut this.state {
            State::Ready(cursor) => Pin::new(cursor).start_seek(position),
            _ => {
                this.pending_seek = Some(position);
                Ok(())
            }
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        let cursor = ready!(self.get_mut().poll_cursor(cx))?;
        Pin::new(cursor).poll_complete(cx)
    }
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let cursor = ready!(self.get_mut().poll_cursor(cx))?;
        Pin::new(cursor).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    use super::*;

    fn counted(calls: &Arc<AtomicUsize>, bytes: &'static [u8]) -> SnapshotData {
        let calls = calls.clone();
        SnapshotData::lazy(Box::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(bytes.to_vec())
        }))
    }

    #[tokio::test]
    async fn collects_once_on_first_read_and_honours_an_earlier_seek() {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut data = counted(&calls, b"0123456789");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing is collected before a read");
        assert_eq!(data.seek(SeekFrom::Start(4)).await.expect("seek"), 4);
        let mut chunk = [0u8; 3];
        data.read_exact(&mut chunk).await.expect("read");
        assert_eq!(&chunk, b"456");
        data.seek(SeekFrom::Start(0)).await.expect("seek");
        let mut all = Vec::new();
        data.read_to_end(&mut all).await.expect("read");
        assert_eq!(all, b"0123456789");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_unread_payload_is_never_collected() {
        let calls = Arc::new(AtomicUsize::new(0));
        drop(counted(&calls, b"x"));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_failed_collection_is_an_error_on_every_read() {
        let mut data = SnapshotData::lazy(Box::new(|| Err(io::Error::other("disk gone"))));
        let mut buf = Vec::new();
        let err = data.read_to_end(&mut buf).await.expect_err("collection failed");
        assert!(err.to_string().contains("disk gone"), "{err}");
        assert!(data.read_to_end(&mut buf).await.is_err());
    }

    #[tokio::test]
    async fn received_bytes_are_written_and_returned() {
        let mut data = SnapshotData::from_bytes(Vec::new());
        data.write_all(b"abc").await.expect("write");
        assert_eq!(data.into_bytes_blocking().expect("bytes"), b"abc");
        let calls = Arc::new(AtomicUsize::new(0));
        assert_eq!(counted(&calls, b"xyz").into_bytes_blocking().expect("bytes"), b"xyz");
    }
}
