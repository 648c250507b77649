//! Checkpoints read back from arbitrary bytes: a shard's whole checkpoint
//! (`shard-<id>`: identity, ring, pipeline), its pipeline part alone
//! (`shard_pool::Pipeline::restore`, which reads the state cache's with
//! `state_cache::Cache::restore`), and the client sessions kept beside it
//! (`sessions-<id>`). Never a panic; a pipeline that is given back writes
//! READY and every guild as valid JSON; a shard checkpoint given back has a
//! ring that ends where its pipeline does, and every event in it reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shard_pool::Pipeline;
use state_cache::{Flags, Session};

fuzz_target!(|bytes: &[u8]| {
    let _ = shard_pool::fuzzing::restore_shard(bytes);
    let _ = proxy_server::fuzzing::restore_sessions(bytes);
    for flags in [Flags::default(), Flags::ALL] {
        let Ok(pipeline) = Pipeline::restore(flags, bytes) else {
            continue;
        };
        let cache = pipeline.cache();
        let mut out = Vec::new();
        let session = Session {
            session_id: "fuzz",
            resume_gateway_url: "ws://fuzz",
        };
        if cache.write_ready(1, session, &mut out).is_ok() {
            serde_json::from_slice::<serde_json::Value>(&out).expect("READY is JSON");
        }
        for id in cache.guild_ids() {
            out.clear();
            cache.write_guild(id, 2, &mut out);
            serde_json::from_slice::<serde_json::Value>(&out).expect("a guild is JSON");
        }
    }
});
