//! The stream against the ground truth: a client that applies every
//! dispatch to the guilds it was given ends with exactly what the sim says
//! its guilds are. Every event names things that exist and changes what it
//! says it changes.

use std::collections::{BTreeMap, BTreeSet};

use discord_sim::Guild;
use serde_json::Value;

use super::sim;
use discord_sim::GatewayClient as Client;

/// One guild as a client sees it.
#[derive(Debug, Default, PartialEq)]
struct View {
    members: BTreeSet<String>,
    channels: BTreeSet<String>,
    roles: BTreeSet<String>,
    /// Thread id to its channel.
    threads: BTreeMap<String, String>,
    voice: BTreeSet<String>,
    name: String,
}

fn text(value: &Value) -> String {
    value.as_str().unwrap().to_owned()
}

fn ids(value: &Value, key: &str) -> BTreeSet<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| text(&v[key]))
        .collect()
}

impl View {
    fn from_guild_create(d: &Value) -> Self {
        Self {
            members: d["members"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| text(&m["user"]["id"]))
                .collect(),
            channels: ids(&d["channels"], "id"),
            roles: ids(&d["roles"], "id"),
            threads: d["threads"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (text(&t["id"]), text(&t["parent_id"])))
                .collect(),
            voice: ids(&d["voice_states"], "user_id"),
            name: text(&d["name"]),
        }
    }

    fn from_truth(guild: &Guild, bot: u64) -> Self {
        Self {
            members: guild
                .members
                .iter()
                .map(|m| m.user.id)
                .chain([bot])
                .map(|id| id.to_string())
                .collect(),
            channels: guild.channels.iter().map(|c| c.id.to_string()).collect(),
            roles: guild.roles.iter().map(|r| r.id.to_string()).collect(),
            threads: guild
                .threads
                .iter()
                .map(|t| (t.id.to_string(), t.parent_id.to_string()))
                .collect(),
            voice: guild
                .voice_states
                .iter()
                .map(|v| v.user_id.to_string())
                .collect(),
            name: guild.name.clone(),
        }
    }

    /// Applies one dispatch, checking that it names what exists.
    fn apply(&mut self, t: &str, d: &Value) {
        let id = || text(&d["id"]);
        match t {
            "GUILD_MEMBER_ADD" => {
                assert!(self.members.insert(text(&d["user"]["id"])), "added twice");
            }
            "GUILD_MEMBER_REMOVE" => {
                let user = text(&d["user"]["id"]);
                assert!(
                    self.members.remove(&user),
                    "removed a member that is not there"
                );
                self.voice.remove(&user);
            }
            "GUILD_MEMBER_UPDATE" => assert!(self.members.contains(&text(&d["user"]["id"]))),
            "CHANNEL_CREATE" => assert!(self.channels.insert(id())),
            "CHANNEL_UPDATE" => assert!(self.channels.contains(&id())),
            "CHANNEL_DELETE" => {
                let channel = id();
                assert!(self.channels.remove(&channel));
                // Threads of a deleted channel go with it.
                self.threads.retain(|_, parent| *parent != channel);
            }
            "GUILD_ROLE_CREATE" => assert!(self.roles.insert(text(&d["role"]["id"]))),
            "GUILD_ROLE_UPDATE" => assert!(self.roles.contains(&text(&d["role"]["id"]))),
            "GUILD_ROLE_DELETE" => assert!(self.roles.remove(&text(&d["role_id"]))),
            "THREAD_CREATE" => {
                let parent = text(&d["parent_id"]);
                assert!(
                    self.channels.contains(&parent),
                    "a thread in a channel that is not there"
                );
                assert!(self.threads.insert(id(), parent).is_none());
            }
            "THREAD_UPDATE" => assert!(self.threads.contains_key(&id())),
            "THREAD_DELETE" => assert!(self.threads.remove(&id()).is_some()),
            "THREAD_LIST_SYNC" => {
                // A full sync (no `channel_ids`): the list is every active thread.
                assert!(d.get("channel_ids").is_none());
                self.threads = d["threads"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| (text(&t["id"]), text(&t["parent_id"])))
                    .collect();
                for parent in self.threads.values() {
                    assert!(
                        self.channels.contains(parent),
                        "a thread in a channel that is not there"
                    );
                }
            }
            "GUILD_UPDATE" => self.name = text(&d["name"]),
            "VOICE_STATE_UPDATE" => {
                let user = text(&d["user_id"]);
                if d["channel_id"].is_null() {
                    assert!(self.voice.remove(&user));
                } else {
                    self.voice.insert(user);
                }
            }
            "MESSAGE_CREATE" | "TYPING_START" | "INTERACTION_CREATE" => {
                assert!(
                    self.members.contains(&text(&d["member"]["user"]["id"])),
                    "{t} by a member that is not there"
                );
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn applying_the_stream_to_the_guilds_gives_the_ground_truth() {
    let sim = sim(|c| {
        c.events_per_sec = 5000;
        c.members_per_guild = 30;
    })
    .await;
    let (mut client, _) = Client::connect(sim.addr(), "v=10&encoding=json&compress=zstd-stream")
        .await
        .unwrap();
    client
        .identify(sim.token(), [0, 1], discord_sim::KNOWN_INTENTS)
        .await
        .unwrap();
    client.dispatch("READY").await.unwrap();
    let mut guilds: BTreeMap<String, View> = BTreeMap::new();
    let mut kinds = BTreeSet::new();
    let mut last = None;
    loop {
        let payload = client.payload().await.unwrap();
        let (t, d) = (payload["t"].as_str().unwrap_or(""), &payload["d"]);
        if t == "GUILD_CREATE" {
            guilds.insert(text(&d["id"]), View::from_guild_create(d));
        } else if let Some(view) = d["guild_id"]
            .as_str()
            .or(d["id"].as_str())
            .and_then(|g| guilds.get_mut(g))
        {
            view.apply(t, d);
            kinds.insert(t.to_owned());
        }
        if last.is_none() && kinds.len() >= 12 {
            // Stop the stream, then read up to its last dispatch.
            sim.pause_stream();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            last = Some(sim.events_sent(0));
        }
        if last.is_some() && d["_sim"]["n"].as_u64() == last {
            break;
        }
    }
    let world = sim.world();
    for guild in world.guilds_of(0, 1).filter(|g| !g.unavailable) {
        assert_eq!(
            guilds[&guild.id.to_string()],
            View::from_truth(guild, world.bot.id)
        );
    }
}
