//! A minimal gateway client, for tests and benchmarks of anything that
//! speaks Discord's gateway: the sim itself, or a proxy in front of it.
//!
//! It connects with any query string, decodes every compression with
//! `wire-codec`, and gives each payload back parsed. It does not heartbeat
//! or reconnect by itself: a test says what it sends.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use wire_codec::{Compression, Decoded, Decoder};

/// What the server sent.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Received {
    /// A payload, decompressed and parsed.
    Payload(Value),
    /// A close frame with its code, or `None` where the connection ended
    /// without one.
    Close(Option<u16>),
}

/// A message before parsing.
enum Message {
    Payload(Vec<u8>),
    Close(Option<u16>),
}

/// Why a client call failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientError {
    /// TCP connect or the websocket handshake failed.
    Connect(String),
    /// Writing to the connection failed.
    Send(String),
    /// The server closed the connection (with this code, if it gave one)
    /// while a payload was expected.
    Closed(Option<u16>),
    /// Nothing came within the client's timeout.
    Timeout,
    /// A message could not be decompressed or parsed.
    Decode(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect: {e}"),
            Self::Send(e) => write!(f, "cannot send: {e}"),
            Self::Closed(Some(code)) => write!(f, "the server closed the connection with {code}"),
            Self::Closed(None) => f.write_str("the connection ended"),
            Self::Timeout => f.write_str("nothing arrived in time"),
            Self::Decode(e) => write!(f, "undecodable message: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

struct SpawnExecutor;

impl<F> hyper::rt::Executor<F> for SpawnExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future);
    }
}

/// One gateway connection.
pub struct GatewayClient {
    ws: FragmentCollector<TokioIo<Upgraded>>,
    decoder: Decoder,
    payload_decoder: Decoder,
    timeout: Duration,
}

impl fmt::Debug for GatewayClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GatewayClient")
            .field("compression", &self.decoder.compression())
            .finish_non_exhaustive()
    }
}

impl GatewayClient {
    /// Connects to `ws://addr/?query` and reads HELLO, which it returns.
    ///
    /// # Errors
    ///
    /// If the connection fails or the first payload is not HELLO.
    pub async fn connect(addr: SocketAddr, query: &str) -> Result<(Self, Value), ClientError> {
        let mut client = Self::connect_raw(addr, query).await?;
        let hello = client.payload().await?;
        if hello["op"] != 10 {
            return Err(ClientError::Decode(format!(
                "expected HELLO first, got {hello}"
            )));
        }
        Ok((client, hello))
    }

    /// Connects without reading anything.
    ///
    /// # Errors
    ///
    /// If the TCP connection or the websocket handshake fails.
    pub async fn connect_raw(addr: SocketAddr, query: &str) -> Result<Self, ClientError> {
        Self::connect_buffered(addr, query, None).await
    }

    /// Connects without reading anything, with the socket's receive buffer
    /// set to `receive_buffer` bytes (the kernel may double it): a client
    /// whose unread data is bounded, for tests of slow clients.
    ///
    /// # Errors
    ///
    /// If the TCP connection or the websocket handshake fails.
    pub async fn connect_buffered(
        addr: SocketAddr,
        query: &str,
        receive_buffer: Option<u32>,
    ) -> Result<Self, ClientError> {
        let connect = |e: &dyn fmt::Display| ClientError::Connect(e.to_string());
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|e| connect(&e))?;
        if let Some(bytes) = receive_buffer {
            socket
                .set_recv_buffer_size(bytes)
                .map_err(|e| connect(&e))?;
        }
        let stream = socket.connect(addr).await.map_err(|e| connect(&e))?;
        let _ = stream.set_nodelay(true);
        let request = hyper::Request::get(format!("http://{addr}/?{query}"))
            .header(HOST, addr.to_string())
            .header(UPGRADE, "websocket")
            .header(CONNECTION, "upgrade")
            .header(
                "Sec-WebSocket-Key",
                fastwebsockets::handshake::generate_key(),
            )
            .header("Sec-WebSocket-Version", "13")
            .body(Empty::<Bytes>::new())
            .map_err(|e| connect(&e))?;
        let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, request, stream)
            .await
            .map_err(|e| connect(&e))?;
        let compression = Compression::from_query(query).unwrap_or(Compression::None);
        let decoder = |c| Decoder::new(c, 256 << 20).map_err(|e| connect(&e));
        Ok(Self {
            ws: FragmentCollector::new(ws),
            decoder: decoder(compression)?,
            payload_decoder: decoder(Compression::ZlibPayload)?,
            timeout: Duration::from_secs(5),
        })
    }

    /// How long [`recv`](Self::recv) waits; five seconds unless changed.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Sends one text payload.
    ///
    /// # Errors
    ///
    /// If the connection is gone.
    pub async fn send(&mut self, json: &str) -> Result<(), ClientError> {
        self.ws
            .write_frame(Frame::text(Payload::Borrowed(json.as_bytes())))
            .await
            .map_err(|e| ClientError::Send(e.to_string()))
    }

    /// Sends a close frame with `code`.
    ///
    /// # Errors
    ///
    /// If the connection is gone.
    pub async fn close(&mut self, code: u16) -> Result<(), ClientError> {
        self.ws
            .write_frame(Frame::close(code, b""))
            .await
            .map_err(|e| ClientError::Send(e.to_string()))
    }

    /// The next payload or close.
    ///
    /// # Errors
    ///
    /// [`ClientError::Timeout`] if nothing arrives in time,
    /// [`ClientError::Decode`] for a message that does not decode.
    pub async fn recv(&mut self) -> Result<Received, ClientError> {
        match self.recv_message().await? {
            Message::Payload(bytes) => serde_json::from_slice(&bytes)
                .map(Received::Payload)
                .map_err(|e| ClientError::Decode(e.to_string())),
            Message::Close(code) => Ok(Received::Close(code)),
        }
    }

    /// The next payload's bytes, decompressed but not parsed: for
    /// consumers that must keep up with a fast stream.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), and [`ClientError::Closed`] on a close.
    pub async fn recv_bytes(&mut self) -> Result<Vec<u8>, ClientError> {
        match self.recv_message().await? {
            Message::Payload(bytes) => Ok(bytes),
            Message::Close(code) => Err(ClientError::Closed(code)),
        }
    }

    async fn recv_message(&mut self) -> Result<Message, ClientError> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.read())
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    async fn read(&mut self) -> Result<Message, ClientError> {
        loop {
            let Ok(frame) = self.ws.read_frame().await else {
                return Ok(Message::Close(None));
            };
            let mut out = Vec::new();
            match frame.opcode {
                OpCode::Text => out.extend_from_slice(&frame.payload),
                OpCode::Binary => {
                    // Without transport compression, binary messages are
                    // payloads compressed one by one.
                    let decoder = if self.decoder.compression() == Compression::None {
                        &mut self.payload_decoder
                    } else {
                        &mut self.decoder
                    };
                    match decoder.decode(&frame.payload, &mut out) {
                        Ok(Decoded::Message) => {}
                        Ok(Decoded::Partial) => continue,
                        Err(e) => return Err(ClientError::Decode(e.to_string())),
                    }
                }
                OpCode::Close => {
                    let code = frame
                        .payload
                        .get(..2)
                        .map(|b| u16::from_be_bytes([b[0], b[1]]));
                    return Ok(Message::Close(code));
                }
                _ => continue,
            }
            return Ok(Message::Payload(out));
        }
    }

    /// The next payload.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv), and [`ClientError::Closed`] on a close.
    pub async fn payload(&mut self) -> Result<Value, ClientError> {
        match self.recv().await? {
            Received::Payload(payload) => Ok(payload),
            Received::Close(code) => Err(ClientError::Closed(code)),
        }
    }

    /// The close code the server ends with, skipping payloads.
    ///
    /// # Errors
    ///
    /// As [`recv`](Self::recv).
    pub async fn close_code(&mut self) -> Result<Option<u16>, ClientError> {
        loop {
            if let Received::Close(code) = self.recv().await? {
                return Ok(code);
            }
        }
    }

    /// The next payload with opcode `op`, skipping others.
    ///
    /// # Errors
    ///
    /// As [`payload`](Self::payload).
    pub async fn op(&mut self, op: u64) -> Result<Value, ClientError> {
        loop {
            let payload = self.payload().await?;
            if payload["op"] == op {
                return Ok(payload);
            }
        }
    }

    /// The next dispatch named `t`, skipping others.
    ///
    /// # Errors
    ///
    /// As [`payload`](Self::payload).
    pub async fn dispatch(&mut self, t: &str) -> Result<Value, ClientError> {
        loop {
            let payload = self.payload().await?;
            if payload["t"] == t {
                return Ok(payload);
            }
        }
    }

    /// Sends IDENTIFY for `shard` (`[id, count]`) with `intents`.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn identify(
        &mut self,
        token: &str,
        shard: [u32; 2],
        intents: u64,
    ) -> Result<(), ClientError> {
        let [id, count] = shard;
        self.send(&format!(
            r#"{{"op":2,"d":{{"token":"{token}","intents":{intents},"shard":[{id},{count}],"properties":{{"os":"linux","browser":"discord-sim","device":"discord-sim"}}}}}}"#
        ))
        .await
    }

    /// Sends RESUME of `session` from `seq`.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub async fn resume(
        &mut self,
        token: &str,
        session: &str,
        seq: u64,
    ) -> Result<(), ClientError> {
        self.send(&format!(
            r#"{{"op":6,"d":{{"token":"{token}","session_id":"{session}","seq":{seq}}}}}"#
        ))
        .await
    }
}
