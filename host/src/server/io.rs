//! Reading, writing and closing a connection's stream, for any [`Transport`]: reads into
//! lent buffers, output written with a deadline only when it does not fit at once, and a
//! lingering close.

use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::buffers;
use crate::handler::ConnectionHandler;
use crate::server::ending::{Ending, Operation};
use crate::server::transport::Transport;

/// Longest wait for a client to close its side after the server closed its own.
const LINGER: Duration = Duration::from_secs(2);

/// Read what the stream holds into a lent buffer (empty at end of stream). The buffer is
/// taken only when the read can complete, so a connection waiting for input holds none.
pub(crate) async fn read_lent<T: Transport>(
    stream: &mut T,
    capacity: usize,
) -> io::Result<Vec<u8>> {
    std::future::poll_fn(|cx| {
        let mut buffer = buffers::take(capacity);
        match tokio_util::io::poll_read_buf(Pin::new(&mut *stream), cx, &mut buffer) {
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(buffer)),
            Poll::Ready(Err(error)) => {
                buffers::give_back(buffer);
                Poll::Ready(Err(error))
            }
            Poll::Pending => {
                buffers::give_back(buffer);
                Poll::Pending
            }
        }
    })
    .await
}

/// Write what the guest queued, waiting at most `timeout` for the client to take it: how many
/// bytes that was. After a failed write the guest's later sends fail with `closed`; the
/// error is why the connection ends.
pub(crate) async fn flush<T: Transport>(
    guest: &mut impl ConnectionHandler,
    stream: &mut T,
    timeout: Duration,
) -> Result<usize, Ending> {
    flush_unless(guest, stream, timeout, std::future::pending()).await
}

/// [`flush`], unless `abort` resolves while the write waits for the client: then the
/// connection ends with the ending `abort` gives (its mailbox overflowed, say). `abort` is
/// polled only while the write waits.
pub(crate) async fn flush_unless<T: Transport>(
    guest: &mut impl ConnectionHandler,
    stream: &mut T,
    timeout: Duration,
    abort: impl Future<Output = Ending>,
) -> Result<usize, Ending> {
    let output = guest.output().len();
    match write_now(guest, stream)? {
        None => Ok(output),
        // The rest waits for the client, in a future of its own: the write timeout's timer
        // would otherwise be part of every connection's task, idle or not.
        Some(sent) => tokio::select! {
            biased;
            written = Box::pin(write_rest(guest, stream, sent, timeout)) => written.map(|()| output),
            ending = abort => Err(ending),
        },
    }
}

/// Write what of the guest's output fits the socket now, without waiting: `None` when that
/// was all of it (most output is), else how many bytes were written, the rest to be written
/// by [`write_rest`].
fn write_now<T: Transport>(
    guest: &mut impl ConnectionHandler,
    stream: &mut T,
) -> Result<Option<usize>, Ending> {
    if guest.output().is_empty() {
        return Ok(None);
    }
    let sent = match stream.try_write(guest.output()) {
        Ok(sent) => sent,
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
        Err(error) => {
            guest.mark_unwritable();
            return Err(Ending::io(Operation::Write, error));
        }
    };
    if sent == guest.output().len() {
        guest.clear_output();
        return Ok(None);
    }
    Ok(Some(sent))
}

/// Write the guest's output past its first `sent` bytes, waiting at most `timeout` for the
/// client to take it.
async fn write_rest<T: Transport>(
    guest: &mut impl ConnectionHandler,
    stream: &mut T,
    sent: usize,
    timeout: Duration,
) -> Result<(), Ending> {
    let rest = &guest.output()[sent..];
    let written = tokio::time::timeout(timeout, async {
        stream.write_all(rest).await?;
        stream.flush().await
    })
    .await;
    let failure = match written {
        Ok(Ok(())) => {
            guest.clear_output();
            return Ok(());
        }
        Ok(Err(error)) => Ending::io(Operation::Write, error),
        Err(_) => Ending::WriteTimeout,
    };
    guest.mark_unwritable();
    Err(failure)
}

/// Close politely: end our side of the stream, then read and discard what the client still
/// sends until it closes too (at most [`LINGER`]). Closing a socket with unread input makes
/// the kernel answer with a reset, which can destroy output the client has not read yet.
pub(crate) async fn linger_close<T: Transport>(stream: &mut T) {
    if stream.shutdown().await.is_err() {
        return;
    }
    // Into lent read buffers: nothing to allocate or zero per connection, and nothing in
    // this future (an array here would grow every connection's task).
    let drain = async {
        while let Ok(discarded) = read_lent(stream, 4 << 10).await {
            let ended = discarded.is_empty();
            buffers::give_back(discarded);
            if ended {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
