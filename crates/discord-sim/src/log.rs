//! What each connection sent and received, for tests to inspect.

use std::collections::VecDeque;

/// How many entries of each direction a connection keeps (the latest).
const KEPT: usize = 1000;

/// One payload the sim sent, summarised.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sent {
    /// `op`.
    pub op: u64,
    /// `t`, for dispatches.
    pub t: Option<String>,
    /// `s`, for dispatches.
    pub s: Option<u64>,
    /// The payload's size before compression.
    pub bytes: usize,
}

/// One gateway connection, as the sim saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionLog {
    /// Numbered from 1 in the order of connection.
    pub id: u64,
    /// The URL query it connected with.
    pub query: String,
    /// The shard it identified or resumed for.
    pub shard: Option<u32>,
    /// Its session.
    pub session_id: Option<String>,
    /// Whether it is still open.
    pub open: bool,
    /// The close code that ended it, from either side, if there was one.
    pub close_code: Option<u16>,
    /// The client's payloads, as text (the latest 1000).
    pub received: VecDeque<String>,
    /// What the sim sent (the latest 1000).
    pub sent: VecDeque<Sent>,
    /// Payloads sent in all.
    pub sent_total: u64,
}

impl ConnectionLog {
    pub(crate) fn new(id: u64, query: &str) -> Self {
        Self {
            id,
            query: query.to_owned(),
            open: true,
            ..Self::default()
        }
    }

    pub(crate) fn received(&mut self, payload: &[u8]) {
        if self.received.len() == KEPT {
            self.received.pop_front();
        }
        self.received
            .push_back(String::from_utf8_lossy(payload).into_owned());
    }

    pub(crate) fn sent(&mut self, payload: &[u8]) {
        self.sent_total += 1;
        if self.sent.len() == KEPT {
            self.sent.pop_front();
        }
        let (op, t, s) = match seqpatch::scan(payload) {
            Ok(scan) => (
                scan.op(),
                scan.event_type(payload).map(str::to_owned),
                scan.seq(),
            ),
            Err(_) => (u64::MAX, None, None),
        };
        self.sent.push_back(Sent {
            op,
            t,
            s,
            bytes: payload.len(),
        });
    }
}
