//! A minimal gateway client over fastwebsockets, decoding with wire-codec.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use fastwebsockets::{FragmentCollector, Frame, OpCode, Payload};
use http_body_util::Empty;
use hyper::header::{CONNECTION, HOST, UPGRADE};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use wire_codec::{Compression, Decoded, Decoder};

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

/// What the server sent.
#[derive(Debug)]
pub(crate) enum Received {
    Payload(Value),
    Close(Option<u16>),
}

pub(crate) struct Client {
    ws: FragmentCollector<TokioIo<Upgraded>>,
    decoder: Decoder,
    payload_decoder: Decoder,
}

impl Client {
    /// Connects to `ws://addr` with `query`, and reads HELLO.
    pub(crate) async fn connect(addr: std::net::SocketAddr, query: &str) -> (Self, Value) {
        let mut client = Self::connect_raw(addr, query).await;
        let hello = client.payload().await;
        assert_eq!(hello["op"], 10, "HELLO comes first");
        (client, hello)
    }

    /// Connects without reading anything.
    pub(crate) async fn connect_raw(addr: std::net::SocketAddr, query: &str) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
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
            .unwrap();
        let (ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, request, stream)
            .await
            .unwrap();
        let compression = Compression::from_query(query).unwrap_or(Compression::None);
        Self {
            ws: FragmentCollector::new(ws),
            decoder: Decoder::new(compression, 64 << 20).unwrap(),
            payload_decoder: Decoder::new(Compression::ZlibPayload, 64 << 20).unwrap(),
        }
    }

    /// Closes with `code`.
    pub(crate) async fn close(&mut self, code: u16) {
        self.ws.write_frame(Frame::close(code, b"")).await.unwrap();
    }

    pub(crate) async fn send(&mut self, json: &str) {
        self.ws
            .write_frame(Frame::text(Payload::Borrowed(json.as_bytes())))
            .await
            .unwrap();
    }

    /// The next payload or close, within five seconds.
    pub(crate) async fn recv(&mut self) -> Received {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let Ok(frame) = self.ws.read_frame().await else {
                    return Received::Close(None);
                };
                let mut out = Vec::new();
                match frame.opcode {
                    OpCode::Text => out.extend_from_slice(&frame.payload),
                    OpCode::Binary => {
                        let decoder = if self.decoder.compression() == Compression::None {
                            &mut self.payload_decoder
                        } else {
                            &mut self.decoder
                        };
                        if decoder.decode(&frame.payload, &mut out).unwrap() == Decoded::Partial {
                            continue;
                        }
                    }
                    OpCode::Close => {
                        let code = frame
                            .payload
                            .get(..2)
                            .map(|b| u16::from_be_bytes([b[0], b[1]]));
                        return Received::Close(code);
                    }
                    _ => continue,
                }
                return Received::Payload(serde_json::from_slice(&out).unwrap());
            }
        })
        .await
        .expect("the sim answers within five seconds")
    }

    /// The next payload; a close fails the test.
    pub(crate) async fn payload(&mut self) -> Value {
        match self.recv().await {
            Received::Payload(v) => v,
            Received::Close(code) => panic!("closed with {code:?}"),
        }
    }

    /// The close code the server ends with, skipping payloads.
    pub(crate) async fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Received::Close(code) = self.recv().await {
                return code;
            }
        }
    }

    /// The next payload with opcode `op`, skipping others.
    pub(crate) async fn op(&mut self, op: u64) -> Value {
        loop {
            let payload = self.payload().await;
            if payload["op"] == op {
                return payload;
            }
        }
    }

    /// The next dispatch named `t`, skipping others.
    pub(crate) async fn dispatch(&mut self, t: &str) -> Value {
        loop {
            let payload = self.payload().await;
            if payload["t"] == t {
                return payload;
            }
        }
    }

    pub(crate) async fn resume(&mut self, token: &str, session: &str, seq: u64) {
        self.send(&format!(
            r#"{{"op":6,"d":{{"token":"{token}","session_id":"{session}","seq":{seq}}}}}"#
        ))
        .await;
    }

    pub(crate) async fn identify(&mut self, token: &str, shard: [u32; 2], intents: u64) {
        self.send(&format!(
            r#"{{"op":2,"d":{{"token":"{token}","intents":{intents},"shard":[{},{}],"properties":{{"os":"linux","browser":"test","device":"test"}}}}}}"#,
            shard[0], shard[1]
        ))
        .await;
    }
}
