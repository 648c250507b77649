'use strict';
// discord.js 14, unmodified, through gateway-proxy to discord-sim.
//
// Run by bins/gateway-proxy/tests/clients.rs with the path of a JSON file
// that describes the run (the proxy's URL, the sim's REST base, the token,
// the shard count and the ground truth of every guild). discord.js finds
// the gateway only through REST `GET /gateway/bot`, which the sim answers
// with the proxy's URL. It asserts inside itself and exits 0 only if
// everything held:
//
// 1. ClientReady on every shard, and the library's own guild cache (names,
//    channel, role and member counts) equals the sim's ground truth.
// 2. Events: every dispatch the sim marks (`d._sim.n`, counted per shard
//    without gaps) arrives once and in order (a GUILD_CREATE the proxy
//    composes may carry a stale one: see `composed`).
// 3. After READY_OK the harness closes every client on the proxy side
//    (4000); every shard must resume and, again, lose nothing.
// 4. `guild.members.fetch()` (op 8 with a nonce) gets this client's own
//    member chunks: about `memberCount` members.
//
// Usage: node discordjs.js RUN.json

const fs = require('node:fs');
const { Client, Events, GatewayIntentBits } = require('discord.js');

const RUN = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const MORE_AFTER_RESUME = 40;
const TIMEOUT_MS = 120_000;

const failures = [];
const debugLog = [];

function check(condition, message) {
  if (!condition) {
    failures.push(message);
    console.log('FAIL', message);
  }
}

function fail(message) {
  console.log('FAIL', message);
  // The library's last words, for whoever reads the harness's panic.
  console.error(debugLog.slice(-60).join('\n'));
  process.exit(1);
}

process.on('unhandledRejection', error => fail(`unhandled rejection: ${error?.stack ?? error}`));
process.on('uncaughtException', error => fail(`uncaught exception: ${error?.stack ?? error}`));
setTimeout(() => fail(`global timeout of ${TIMEOUT_MS / 1000} s`), TIMEOUT_MS).unref();

// Resolves when `predicate()` holds, checked on every call of the returned
// `poke`; rejects with `what` after `ms`.
function waiter(predicate, ms, what) {
  let poke;
  const promise = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    poke = () => {
      if (predicate()) {
        clearTimeout(timer);
        resolve();
      }
    };
  });
  return { promise, poke };
}

// Every non-privileged intent plus the three privileged ones: everything,
// as the proxy's pool has, so that no marked dispatch is filtered away.
const intents = Object.values(GatewayIntentBits)
  .filter(bit => typeof bit === 'number')
  .reduce((all, bit) => all | bit, 0);

const shardIds = Array.from({ length: RUN.shards }, (_, i) => i);
const client = new Client({
  intents,
  rest: { api: RUN.rest },
  shards: shardIds,
  shardCount: RUN.shards,
  waitGuildTimeout: 2_000,
  ws: {
    // The sim's identify buckets are short; no 5 s waits.
    buildIdentifyThrottler: () => ({ waitForIdentify: async () => {} }),
  },
});

const last = new Map(); // shard -> last _sim.n

// The sim marks the dispatches it streams; it never streams READY or
// GUILD_CREATE. Those come from the proxy's cache, and a GUILD_CREATE keeps
// every top-level field the guild's last GUILD_UPDATE brought (unknown
// fields included, as it should), the sim's `_sim` among them: a stale
// marker, not a dispatch. It must be older than every live one.
const stale = new Map(); // shard -> highest marker seen in a composed dispatch
function composed(t, shard, n) {
  if (t !== 'READY' && t !== 'GUILD_CREATE') {
    check(!(n <= stale.get(shard)), `shard ${shard}: live marker ${n} not newer than the stale ${stale.get(shard)}`);
    return false;
  }
  check(!last.has(shard), `shard ${shard}: a ${t} with marker ${n} after live marker ${last.get(shard)}`);
  stale.set(shard, Math.max(n, stale.get(shard) ?? 0));
  return true;
}

let marked = 0;
let messages = 0;
const resumed = new Set(); // shards resumed after READY_OK
let afterResume = 0;
let readyOk = false;

const resumedAll = waiter(() => resumed.size === RUN.shards, 60_000, 'every shard to resume');
const enough = waiter(
  () => resumed.size === RUN.shards && afterResume >= MORE_AFTER_RESUME,
  60_000,
  `${MORE_AFTER_RESUME} marked dispatches after the resume`,
);

client.on(Events.Debug, message => {
  debugLog.push(message);
  if (debugLog.length > 500) debugLog.splice(0, 100);
});

client.on(Events.Raw, (packet, shardId) => {
  const marker = packet?.d?._sim;
  if (packet.op !== 0 || marker === undefined) return;
  const { shard, n } = marker;
  if (composed(packet.t, shard, n)) return;
  check(shard === shardId, `marker of shard ${shard} arrived on shard ${shardId}`);
  const previous = last.get(shard);
  check(previous === undefined || n === previous + 1, `shard ${shard}: marker ${n} after ${previous}`);
  last.set(shard, n);
  marked += 1;
  if (resumed.size === RUN.shards) {
    afterResume += 1;
    enough.poke();
  }
});

client.on(Events.MessageCreate, () => {
  messages += 1;
});

client.on(Events.ShardResume, (shardId, replayed) => {
  console.log('RESUMED', shardId, `replayed=${replayed}`);
  check(readyOk, `shard ${shardId} resumed before READY_OK`);
  resumed.add(shardId);
  resumedAll.poke();
  enough.poke();
});

client.on(Events.ShardReconnecting, shardId => {
  console.log('RECONNECTING', shardId);
});

client.on(Events.ShardDisconnect, (event, shardId) => {
  fail(`shard ${shardId} disconnected for good (close ${event.code})`);
});

client.on(Events.Error, error => fail(`client error: ${error?.stack ?? error}`));

async function main() {
  const ready = new Promise(resolve => client.once(Events.ClientReady, resolve));
  await client.login(RUN.token);
  await ready;

  check(
    client.ws.shards.size === RUN.shards,
    `${client.ws.shards.size} shards, expected ${RUN.shards}`,
  );
  const truth = RUN.guilds;
  const cache = client.guilds.cache;
  check(cache.size === Object.keys(truth).length, `${cache.size} guilds, expected ${Object.keys(truth).length}`);
  for (const [id, want] of Object.entries(truth)) {
    const guild = cache.get(id);
    check(guild !== undefined, `guild ${id} is not in the cache`);
    if (guild === undefined) continue;
    check(guild.available, `guild ${id} is unavailable`);
    check(guild.name === want.name, `guild ${id}: name ${JSON.stringify(guild.name)}, expected ${JSON.stringify(want.name)}`);
    // The cache holds threads too; the truth counts channels only.
    const channels = guild.channels.cache.filter(channel => !channel.isThread()).size;
    check(channels === want.channels, `guild ${id}: ${channels} channels, expected ${want.channels}`);
    check(guild.roles.cache.size === want.roles, `guild ${id}: ${guild.roles.cache.size} roles, expected ${want.roles}`);
    check(guild.memberCount === want.members, `guild ${id}: memberCount ${guild.memberCount}, expected ${want.members}`);
    const shard = Number((BigInt(id) >> 22n) % BigInt(RUN.shards));
    check(guild.shardId === shard, `guild ${id} on shard ${guild.shardId}, expected ${shard}`);
  }
  if (failures.length > 0) fail(`${failures.length} failure(s) at READY`);

  // Tell the harness: it now goes on with the stream and closes this
  // client on the proxy side a second later.
  readyOk = true;
  console.log('READY_OK');

  await resumedAll.promise;
  await enough.promise;

  // Op 8 with a nonce: this client's own chunks.
  const guild = cache.get(Object.keys(truth)[0]);
  const members = await guild.members.fetch({ time: 30_000 });
  // The stream goes on meanwhile (joins and leaves): allow a few.
  check(
    Math.abs(members.size - guild.memberCount) <= 3,
    `members.fetch gave ${members.size} members of ${guild.memberCount}`,
  );
  check(messages > 0, 'no MESSAGE_CREATE reached messageCreate');
  check(last.size === RUN.shards, `markers from shards [${[...last.keys()]}], expected ${RUN.shards} shards`);

  if (failures.length > 0) fail(`${failures.length} failure(s)`);
  console.log(
    `DONE marked=${marked} after_resume=${afterResume} messages=${messages} members=${members.size} shards=[${[...last.keys()].sort()}]`,
  );
  await client.destroy();
  process.exit(0);
}

main().catch(error => fail(error?.stack ?? String(error)));
