//! MQTT over WebSocket (what browser and mobile apps use): the HTTP upgrade with the `mqtt`
//! subprotocol, then MQTT packets carried in binary WebSocket messages, read and written as
//! a byte stream so the rest of the connection layer does not know the difference.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Upgrades an HTTP connection to a WebSocket carrying MQTT. A client that offers
/// subprotocols must offer `mqtt` (MQTT-6.0.0-3); it is answered with `mqtt`.
// The refusal type is tungstenite's (an HTTP response), not ours to shrink.
#[allow(clippy::result_large_err)]
pub(crate) async fn accept<S>(stream: S, max_packet_size: usize) -> io::Result<WsIo<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(max_packet_size + 16))
        .max_frame_size(Some(max_packet_size + 16));
    let negotiate = |request: &Request, mut response: Response| {
        let offered: Vec<String> = request
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|p| p.trim().to_owned()))
            .collect();
        if offered.is_empty() {
            return Ok(response);
        }
        if offered.iter().any(|p| p == "mqtt") {
            response
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
            return Ok(response);
        }
        let mut refusal = ErrorResponse::new(Some(
            "this endpoint speaks MQTT: offer the \"mqtt\" WebSocket subprotocol".to_owned(),
        ));
        *refusal.status_mut() = StatusCode::BAD_REQUEST;
        Err(refusal)
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, negotiate, Some(config))
        .await
        .map_err(io::Error::other)?;
    Ok(WsIo {
        ws,
        pending: Bytes::new(),
    })
}

/// A WebSocket as a byte stream.
pub(crate) struct WsIo<S> {
    ws: WebSocketStream<S>,
    /// What is left of the last binary message read.
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match ready!(Pin::new(&mut self.ws).poll_next(cx)) {
                Some(Ok(Message::Binary(data))) => self.pending = data,
                // Pings are answered by the WebSocket layer itself.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    // MQTT-6.0.0-1: MQTT travels in binary frames only.
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket frame; MQTT must use binary frames",
                    )));
                }
                Some(Ok(Message::Close(_))) | None => return Poll::Ready(Ok(())),
                Some(Err(e)) => return Poll::Ready(Err(io::Error::other(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(io::Error::other)?;
        Pin::new(&mut self.ws)
            .start_send(Message::Binary(Bytes::copy_from_slice(buf)))
            .map_err(io::Error::other)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_flush(cx)
            .map_err(io::Error::other)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.ws)
            .poll_close(cx)
            .map_err(io::Error::other)
    }
}
