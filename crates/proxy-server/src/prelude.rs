//! What every connection says before IDENTIFY, compressed once for all.
//!
//! A zlib-stream or zstd-stream context costs a few hundred KiB to a MiB,
//! and a connection that never identifies must not cost that. Yet HELLO,
//! and the ACKs of heartbeats sent before IDENTIFY (discord.py sends one at
//! once), are already part of the connection's compressed stream. They are
//! the same for every connection: HELLO, then ACK, ACK, … So each
//! compression's first messages are compressed once, here, and sent as
//! they are. A connection makes its own context only for its first other
//! message (READY, or op 9), and first feeds it the prelude messages it
//! sent: compression is deterministic, so the context is then exactly where
//! the client's decoder is.

use bytes::Bytes;
use wire_codec::{Compression, Encoder, Error};

/// The first messages of every connection of one compression, plain and
/// compressed.
#[derive(Debug)]
pub(crate) struct Prelude {
    compression: Compression,
    level: i32,
    /// HELLO, then ACKs.
    plain: Vec<Bytes>,
    /// The same, each as the websocket message a fresh context writes.
    frames: Vec<Bytes>,
}

impl Prelude {
    /// HELLO and `acks` ACKs, compressed with `compression` at `level`.
    pub(crate) fn new(
        compression: Compression,
        level: i32,
        hello: &Bytes,
        ack: &'static [u8],
        acks: usize,
    ) -> Result<Self, Error> {
        let mut plain = Vec::with_capacity(acks + 1);
        plain.push(hello.clone());
        plain.extend(std::iter::repeat_n(Bytes::from_static(ack), acks));
        let mut encoder = Encoder::with_level(compression, level)?;
        let mut frames = Vec::with_capacity(plain.len());
        for message in &plain {
            let mut frame = Vec::new();
            encoder.encode(message, &mut frame)?;
            frames.push(Bytes::from(frame));
        }
        Ok(Self {
            compression,
            level,
            plain,
            frames,
        })
    }

    /// The compressed message to send as the connection's message number
    /// `n`, if `payload` is what every connection sends there.
    pub(crate) fn frame(&self, n: usize, payload: &[u8]) -> Option<&Bytes> {
        (self.plain.get(n)? == payload).then(|| &self.frames[n])
    }

    /// A context that has written the first `sent` prelude messages: the
    /// client's decoder has read those.
    pub(crate) fn encoder(&self, sent: usize) -> Result<Encoder, Error> {
        let mut encoder = Encoder::with_level(self.compression, self.level)?;
        let mut scratch = Vec::new();
        for message in &self.plain[..sent.min(self.plain.len())] {
            scratch.clear();
            encoder.encode(message, &mut scratch)?;
        }
        Ok(encoder)
    }
}

#[cfg(test)]
mod tests {
    use wire_codec::{Decoded, Decoder};

    use super::*;

    const ACK: &[u8] = br#"{"t":null,"s":null,"op":11,"d":null}"#;

    #[test]
    fn a_context_made_late_continues_the_stream_the_client_reads() {
        let hello =
            Bytes::from_static(br#"{"t":null,"s":null,"op":10,"d":{"heartbeat_interval":41250}}"#);
        for compression in [Compression::ZlibStream, Compression::ZstdStream] {
            let prelude = Prelude::new(compression, 6, &hello, ACK, 3).unwrap();
            for sent in 0..=3 {
                let mut decoder = Decoder::new(compression, 1 << 20).unwrap();
                let mut out = Vec::new();
                for n in 0..sent {
                    let message = if n == 0 { &hello[..] } else { ACK };
                    let frame = prelude.frame(n, message).unwrap();
                    out.clear();
                    assert_eq!(decoder.decode(frame, &mut out).unwrap(), Decoded::Message);
                    assert_eq!(out, message);
                }
                assert!(prelude.frame(sent, b"{\"op\":0}").is_none());
                let mut encoder = prelude.encoder(sent).unwrap();
                for event in [
                    &b"{\"t\":\"READY\",\"s\":1,\"op\":0,\"d\":{}}"[..],
                    ACK,
                    &hello,
                ] {
                    let mut frame = Vec::new();
                    encoder.encode(event, &mut frame).unwrap();
                    out.clear();
                    assert_eq!(
                        decoder.decode(&frame, &mut out).unwrap(),
                        Decoded::Message,
                        "{compression:?} after {sent}"
                    );
                    assert_eq!(out, event, "{compression:?} after {sent}");
                }
            }
        }
    }
}
