//! An in-memory connection: reads hand out the input in fuzz-chosen pieces, writes are
//! counted and dropped. Never pending, so the connection loop runs without a reactor.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::{AsyncRead, AsyncWrite};

/// Split fuzz input into read sizes and the byte stream: the first byte `k` (mod 16) is
/// followed by `k` read sizes.
pub(crate) fn split(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let k = usize::from(k % 16).min(rest.len());
    rest.split_at(k)
}

pub(crate) struct Wire<'a> {
    input: &'a [u8],
    chunks: &'a [u8],
    next_chunk: usize,
    read: usize,
    written: usize,
}

impl<'a> Wire<'a> {
    pub(crate) fn new(input: &'a [u8], chunks: &'a [u8]) -> Self {
        Self {
            input,
            chunks,
            next_chunk: 0,
            read: 0,
            written: 0,
        }
    }

    pub(crate) fn read(&self) -> usize {
        self.read
    }

    pub(crate) fn written(&self) -> usize {
        self.written
    }
}

impl AsyncRead for Wire<'_> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let left = &this.input[this.read..];
        let piece = if this.chunks.is_empty() {
            usize::MAX
        } else {
            let c = this.chunks[this.next_chunk % this.chunks.len()];
            this.next_chunk += 1;
            usize::from(c) * 4 + 1
        };
        let n = left.len().min(buf.len()).min(piece);
        buf[..n].copy_from_slice(&left[..n]);
        this.read += n;
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
