//! The bounds shared by connections: how many may be open (in all and per
//! address), and each shard's budget of commands sent upstream.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::context::lock;

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_connections` are open.
    Total,
    /// `max_connections_per_ip` are open from its address.
    PerIp,
}

/// Connections open, in all and per address.
#[derive(Debug)]
pub(crate) struct Admission {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One open connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A place for a connection from `ip`, if there is one.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refused> {
        let mut open = lock(&self.open);
        if open.0 >= self.max_total {
            return Err(Refused::Total);
        }
        let from_ip = open.1.entry(ip).or_insert(0);
        if *from_ip >= self.max_per_ip {
            return Err(Refused::PerIp);
        }
        *from_ip += 1;
        open.0 += 1;
        Ok(Permit {
            admission: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        lock(&self.open).0
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut open = lock(&self.admission.open);
        open.0 = open.0.saturating_sub(1);
        if let Some(from_ip) = open.1.get_mut(&self.ip) {
            *from_ip -= 1;
            if *from_ip == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

/// What the budget says of a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Spend {
    /// Send it.
    Send,
    /// The client has used its share of the shard's budget this minute.
    OverShare,
    /// The shard's budget and its queue are used up.
    Exhausted,
}

const WINDOW: Duration = Duration::from_mins(1);

/// Each shard's commands of the last minute, by the connection that sent
/// them.
///
/// Discord closes a connection that sends more than 120 payloads a minute,
/// and every client of a shard shares that one upstream connection. So the
/// shard has a budget per minute; each client may use `budget / clients`
/// of it; and twilight's own pacing (120 a minute, heartbeats first)
/// queues at most one budget's worth beyond it. A client over its share is
/// closed with 4008, as Discord would close it.
#[derive(Debug)]
pub(crate) struct Budgets {
    per_minute: usize,
    shards: Mutex<HashMap<u32, VecDeque<(Instant, u64)>>>,
}

impl Budgets {
    pub(crate) fn new(per_minute: u32) -> Self {
        Self {
            per_minute: usize::try_from(per_minute).unwrap_or(usize::MAX).max(1),
            shards: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one command of `shard`'s budget for connection `client`, one
    /// of `clients` served by the shard.
    pub(crate) fn spend(&self, shard: u32, client: u64, clients: usize, now: Instant) -> Spend {
        let mut shards = lock(&self.shards);
        let sent = shards.entry(shard).or_default();
        while sent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
        {
            sent.pop_front();
        }
        let fair = (self.per_minute / clients.max(1)).max(1);
        if sent.iter().filter(|(_, c)| *c == client).count() >= fair {
            return Spend::OverShare;
        }
        if sent.len() >= 2 * self.per_minute {
            return Spend::Exhausted;
        }
        sent.push_back((now, client));
        Spend::Send
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_in_all_and_per_address_and_freed() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = [127, 0, 0, 1].into();
        let b: IpAddr = [127, 0, 0, 2].into();
        let first = admission.admit(a).unwrap();
        let _second = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refused::PerIp);
        let _third = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Refused::Total);
        drop(first);
        assert_eq!(admission.open(), 2);
        assert!(admission.admit(a).is_ok());
    }

    #[tokio::test]
    async fn each_client_gets_its_share_of_the_shards_minute() {
        let budgets = Budgets::new(10);
        let now = Instant::now();
        for _ in 0..5 {
            assert_eq!(budgets.spend(0, 1, 2, now), Spend::Send);
        }
        assert_eq!(budgets.spend(0, 1, 2, now), Spend::OverShare);
        for _ in 0..5 {
            assert_eq!(budgets.spend(0, 2, 2, now), Spend::Send);
        }
        assert_eq!(budgets.spend(0, 2, 2, now), Spend::OverShare);
        assert_eq!(
            budgets.spend(1, 1, 1, now),
            Spend::Send,
            "other shards have their own"
        );
        let later = now + WINDOW;
        assert_eq!(budgets.spend(0, 1, 2, later), Spend::Send, "a new minute");
        // A client alone on its shard has the whole budget, and no more.
        let budgets = Budgets::new(3);
        for _ in 0..3 {
            assert_eq!(budgets.spend(0, 7, 1, now), Spend::Send);
        }
        assert_eq!(budgets.spend(0, 7, 1, now), Spend::OverShare);
    }
}
