//! The live dispatch stream of a shard, drawn from the world so that every
//! event names things that exist.
//!
//! Every generated dispatch carries a marker as the last member of its `d`:
//! `"_sim":{"shard":S,"n":N,"sent_at_us":T}`. `N` counts the shard's
//! dispatches from 1 with no gap, and `T` is the Unix time in microseconds
//! at which the sim made it, so a consumer can find lost, repeated or
//! reordered events and measure latency.

use std::fmt::Write as _;

use crate::world::{Guild, Rng, World, iso8601, json_str};

/// One dispatch, before a session gives it a sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispatch {
    /// The event name, `t`.
    pub t: String,
    /// The event data, `d`, as JSON.
    pub d: String,
}

/// The generator of one shard's stream.
#[derive(Debug)]
pub(crate) struct EventGen {
    rng: Rng,
    shard: u32,
    /// Indexes of the shard's available guilds in `World::guilds`.
    guilds: Vec<usize>,
    next_n: u64,
}

const LINES: &[&str] = &[
    "hello there",
    "the proxy kept the session alive",
    "anyone up for a game tonight?",
    "deploying now, brb",
    "lol",
    "check the \"s\": field, it says {\"op\":0}",
    "日本語のメッセージ ✓",
    "a\\b\\c backslashes",
];

impl EventGen {
    pub(crate) fn new(world: &World, seed: u64, shard: u32, shards: u32) -> Self {
        let guilds = world
            .guilds
            .iter()
            .enumerate()
            .filter(|(_, g)| !g.unavailable && World::shard_of(g.id, shards) == shard)
            .map(|(i, _)| i)
            .collect();
        Self {
            rng: Rng::new(seed ^ (u64::from(shard) << 32)),
            shard,
            guilds,
            next_n: 1,
        }
    }

    /// The marker of the next dispatch, and its number.
    pub(crate) fn marker(&mut self, sent_at_us: u64) -> (String, u64) {
        let n = self.next_n;
        self.next_n += 1;
        let marker = format!(
            r#""_sim":{{"shard":{},"n":{n},"sent_at_us":{sent_at_us}}}"#,
            self.shard
        );
        (marker, n)
    }

    /// The next dispatch of the stream, or `None` if the shard has no
    /// available guild to talk about.
    pub(crate) fn next(&mut self, world: &World, sent_at_us: u64) -> Option<Dispatch> {
        if self.guilds.is_empty() {
            return None;
        }
        let guild = &world.guilds[self.guilds[self.rng.index(self.guilds.len())]];
        let mut d = String::with_capacity(1024);
        let t = match self.rng.below(100) {
            0..45 => self.message_create(guild, sent_at_us, &mut d),
            45..80 => self.presence_update(guild, &mut d),
            _ => self.typing_start(guild, sent_at_us, &mut d),
        };
        // Replace the closing brace with the marker.
        d.pop();
        d.push(',');
        d.push_str(&self.marker(sent_at_us).0);
        d.push('}');
        Some(Dispatch { t: t.to_owned(), d })
    }

    fn message_create(&mut self, guild: &Guild, sent_at_us: u64, d: &mut String) -> &'static str {
        let channel = text_channel(guild, &mut self.rng);
        let id = self.rng.snowflake();
        let _ = write!(
            d,
            r#"{{"type":0,"tts":false,"timestamp":"{}","pinned":false,"nonce":"{}","mentions":[],"mention_roles":[],"mention_everyone":false,"id":"{id}","flags":0,"embeds":[],"edited_timestamp":null,"content":"#,
            iso8601(sent_at_us / 1000),
            self.rng.snowflake(),
        );
        json_str(d, LINES[self.rng.index(LINES.len())]);
        let _ = write!(
            d,
            r#","components":[],"channel_type":0,"channel_id":"{channel}","#
        );
        if let Some(member) = guild
            .members
            .get(self.rng.index(guild.members.len().max(1)))
        {
            d.push_str(r#""author":"#);
            member.user.write(d);
            d.push_str(r#","member":"#);
            member.write(d);
            d.push(',');
        }
        let _ = write!(d, r#""attachments":[],"guild_id":"{}"}}"#, guild.id);
        "MESSAGE_CREATE"
    }

    fn presence_update(&mut self, guild: &Guild, d: &mut String) -> &'static str {
        let status = ["online", "idle", "dnd", "offline"][self.rng.index(4)];
        let user = guild
            .members
            .get(self.rng.index(guild.members.len().max(1)))
            .map_or(0, |m| m.user.id);
        let _ = write!(
            d,
            r#"{{"user":{{"id":"{user}"}},"status":"{status}","guild_id":"{}","client_status":{{"desktop":"{status}"}},"activities":[{{"type":0,"name":"Rocket League","id":"{:016x}","created_at":1732781512345,"state":"In a match"}}]}}"#,
            guild.id,
            self.rng.next_u64(),
        );
        "PRESENCE_UPDATE"
    }

    fn typing_start(&mut self, guild: &Guild, sent_at_us: u64, d: &mut String) -> &'static str {
        let channel = text_channel(guild, &mut self.rng);
        let _ = write!(
            d,
            r#"{{"channel_id":"{channel}","guild_id":"{}","timestamp":{},"#,
            guild.id,
            sent_at_us / 1_000_000
        );
        if let Some(member) = guild
            .members
            .get(self.rng.index(guild.members.len().max(1)))
        {
            let _ = write!(d, r#""user_id":"{}","member":"#, member.user.id);
            member.write(d);
        } else {
            d.push_str(r#""user_id":"0""#);
        }
        d.push('}');
        "TYPING_START"
    }
}

/// A text channel of the guild (its id as a string), or the guild id.
fn text_channel(guild: &Guild, rng: &mut Rng) -> u64 {
    let texts: Vec<u64> = guild
        .channels
        .iter()
        .filter(|c| c.kind == 0)
        .map(|c| c.id)
        .collect();
    if texts.is_empty() {
        guild.id
    } else {
        texts[rng.index(texts.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SimConfig;

    #[test]
    fn events_are_json_marked_and_numbered() {
        let config = SimConfig::default();
        let world = World::generate(&config);
        let mut events = EventGen::new(&world, 9, 0, 1);
        for n in 1..=500u64 {
            let dispatch = events.next(&world, 1_732_766_519_123_456).unwrap();
            let d: serde_json::Value =
                serde_json::from_str(&dispatch.d).unwrap_or_else(|e| panic!("{e}: {}", dispatch.d));
            assert_eq!(d["_sim"]["n"], n);
            assert_eq!(d["_sim"]["shard"], 0);
            let guild = d["guild_id"].as_str().unwrap().parse::<u64>().unwrap();
            assert!(
                world.guild(guild).is_some(),
                "an event names a guild that exists"
            );
        }
    }
}
