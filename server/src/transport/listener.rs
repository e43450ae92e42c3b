//! The accept loop's guard: at most `max` connections at once. Every connection is a file
//! descriptor, and so is every file the store opens; a node that accepted connections until the
//! process ran out of descriptors would fail its store too. Past the limit, new connections wait
//! in the kernel's backlog until one closes.

use futures_util::Stream;
use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Descriptors kept free for the store, logs and the like.
const RESERVED_FDS: u64 = 256;

/// How many connections fit in this process's open-file limit.
pub fn connection_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur
    } else {
        1024
    };
    soft.saturating_sub(RESERVED_FDS).max(16) as usize
}

/// A connection that gives its slot back when it closes.
pub struct Limited {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
}

/// Accepted connections, at most `max` open at once; `TCP_NODELAY` on each.
pub fn incoming(listener: TcpListener, max: usize) -> impl Stream<Item = io::Result<Limited>> {
    let slots = Arc::new(Semaphore::new(max));
    futures_util::stream::unfold((listener, slots), |(listener, slots)| async move {
        let slot = match slots.clone().acquire_owned().await {
            Ok(slot) => slot,
            Err(_) => return None,
        };
        let item = listener.accept().await.map(|(stream, _)| {
            let _ = stream.set_nodelay(true);
            Limited {
                stream,
                _slot: slot,
            }
        });
        Some((item, (listener, slots)))
    })
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
