//! Reading a connection's socket through one scratch buffer per runtime thread: a connection
//! waiting for its client holds no read buffer of its own, and a busy one still takes what
//! its client sent (many packets) in one read, up to [`SCRATCH_BYTES`].

use std::cell::RefCell;
use std::future::poll_fn;
use std::pin::Pin;
use std::task::{ready, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

/// Bytes one read may take.
pub(super) const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// Waits for the socket, then appends what it holds (up to [`SCRATCH_BYTES`]) to `buf`;
/// `Ok(0)` at the end of the stream. Cancel-safe: nothing is read until it completes.
pub(super) async fn read_some<R>(stream: &mut R, buf: &mut BytesMut) -> std::io::Result<usize>
where
    R: AsyncRead + Unpin + ?Sized,
{
    poll_fn(|cx| {
        SCRATCH.with_borrow_mut(|scratch| {
            let mut read = ReadBuf::new(scratch);
            ready!(Pin::new(&mut *stream).poll_read(cx, &mut read))?;
            buf.extend_from_slice(read.filled());
            Poll::Ready(Ok(read.filled().len()))
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn takes_everything_waiting_in_one_read_and_appends_it() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.expect("write");
        let mut buf = BytesMut::from(&b"kept"[..]);
        let n = read_some(&mut server, &mut buf).await.expect("read");
        assert_eq!(n, sent.len(), "one read takes all that waits");
        assert_eq!(&buf[..4], b"kept");
        assert_eq!(&buf[4..], &sent[..]);
    }

    #[tokio::test]
    async fn a_read_takes_at_most_the_scratch_size() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&vec![7u8; 40_000]).await.expect("write");
        let mut buf = BytesMut::new();
        let n = read_some(&mut server, &mut buf).await.expect("read");
        assert_eq!(n, SCRATCH_BYTES);
        assert_eq!(buf.len(), SCRATCH_BYTES);
    }

    #[tokio::test]
    async fn end_of_stream_reads_zero() {
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let mut buf = BytesMut::new();
        assert_eq!(read_some(&mut server, &mut buf).await.expect("read"), 0);
    }
}
