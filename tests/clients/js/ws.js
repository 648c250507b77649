'use strict';
// @discordjs/ws 2, unmodified, through gateway-proxy to discord-sim: with
// payload compression (IDENTIFY `compress: true`), or zlib-stream inflated
// by Node's zlib or by zlib-sync.
//
// Run by bins/gateway-proxy/tests/clients.rs with the path of a JSON file
// that describes the run (the proxy's URL, the sim's REST base, the token,
// the shard count and the ground truth of every guild). The manager finds
// the gateway through REST `GET /gateway/bot` (@discordjs/rest), which the
// sim answers with the proxy's URL. It asserts inside itself and exits 0
// only if everything held:
//
// 1. READY on every shard, then one GUILD_CREATE for every guild of that
//    shard (`(id >> 22) % shards`), each equal to the ground truth (name,
//    channel, role and member counts), and no other.
// 2. Events: every dispatch the sim marks (`d._sim.n`, counted per shard
//    without gaps) arrives once, in order, on its own shard (a
//    GUILD_CREATE the proxy composes may carry a stale one: see `composed` in common.js).
// 3. After READY_OK the harness closes every client on the proxy side
//    (4000); every shard must resume by itself and, again, lose nothing.
// 4. Op 8 with a nonce on each shard gets GUILD_MEMBERS_CHUNKs with that
//    nonce: about the guild's member count.
//
// Usage: node ws.js RUN.json [payload|zlib-native|zlib-sync]

const { REST } = require('@discordjs/rest');
const { CompressionMethod, WebSocketManager, WebSocketShardEvents } = require('@discordjs/ws');
const {
  RUN, check, debug, fail, failures, progress, readyThenResumed, sawDispatch, sawResume, shardOf, waiter,
} = require('./common');

// Every documented intent (bits 0-16, 20, 21, 24, 25: what discord.js
// calls `IntentsBitField.All`), as the proxy's pool has, so that no marked
// dispatch is filtered away.
const intents = [...Array.from({ length: 17 }, (_, bit) => bit), 20, 21, 24, 25].reduce(
  (all, bit) => all | (1 << bit),
  0,
);

const truth = RUN.guilds;
const expected = new Map(); // shard -> number of guilds
for (let shard = 0; shard < RUN.shards; shard += 1) expected.set(shard, 0);
for (const id of Object.keys(truth)) expected.set(shardOf(id), expected.get(shardOf(id)) + 1);

const ready = new Set(); // shards that got READY
const created = new Map(); // shard -> Set of guild ids from GUILD_CREATE
const memberCount = new Map(); // guild id -> member count, kept up to date
let messages = 0;
const requests = new Map(); // nonce -> { guildId, shardId, members, chunks, poke }

const allReady = waiter(
  () => ready.size === RUN.shards && [...expected].every(([shard, n]) => (created.get(shard)?.size ?? 0) >= n),
  60_000,
  'READY and every GUILD_CREATE on every shard',
);
const rest = new REST({ api: RUN.rest }).setToken(RUN.token);
const manager = new WebSocketManager({
  token: RUN.token,
  intents,
  rest,
  shardCount: RUN.shards,
  // Payload compression: each payload zlib-compressed on its own; or a
  // zlib-stream (`?compress=zlib-stream`) and the decoder it names.
  ...({
    payload: { useIdentifyCompression: true },
    'zlib-native': { compression: CompressionMethod.ZlibNative },
    'zlib-sync': { compression: CompressionMethod.ZlibSync },
  }[process.argv[3] ?? 'payload'] ?? fail(`unknown mode ${process.argv[3]}`)),
  // The sim's identify buckets are short; no 5 s waits.
  buildIdentifyThrottler: () => ({ waitForIdentify: async () => {} }),
});

manager.on(WebSocketShardEvents.Debug, (message, shardId) => debug(`[shard ${shardId}] ${message}`));

manager.on(WebSocketShardEvents.Error, (error, shardId) => fail(`shard ${shardId} error: ${error?.stack ?? error}`));

manager.on(WebSocketShardEvents.Closed, (code, shardId) => {
  console.log('CLOSED', shardId, code);
  check(progress.readyOk, `shard ${shardId} closed (${code}) before READY_OK`);
});

manager.on(WebSocketShardEvents.Ready, (data, shardId) => {
  check(!ready.has(shardId), `shard ${shardId}: a second READY (identified again instead of resuming?)`);
  check(
    Array.isArray(data.shard) && data.shard[0] === shardId && data.shard[1] === RUN.shards,
    `shard ${shardId}: READY shard ${JSON.stringify(data.shard)}`,
  );
  const ids = (data.guilds ?? []).map(guild => guild.id).sort();
  const want = Object.keys(truth).filter(id => shardOf(id) === shardId).sort();
  check(
    JSON.stringify(ids) === JSON.stringify(want),
    `shard ${shardId}: READY guilds ${JSON.stringify(ids)}, expected ${JSON.stringify(want)}`,
  );
  ready.add(shardId);
  allReady.poke();
});

manager.on(WebSocketShardEvents.Resumed, shardId => sawResume(shardId));

manager.on(WebSocketShardEvents.Dispatch, (payload, shardId) => {
  const { t, d } = payload;
  switch (t) {
    case 'GUILD_CREATE': {
      check(!progress.readyOk, `shard ${shardId}: GUILD_CREATE ${d.id} after READY_OK`);
      check(shardOf(d.id) === shardId, `guild ${d.id} created on shard ${shardId}, expected ${shardOf(d.id)}`);
      const want = truth[d.id];
      check(want !== undefined, `shard ${shardId}: GUILD_CREATE of unknown guild ${d.id}`);
      if (want !== undefined) {
        check(d.name === want.name, `guild ${d.id}: name ${JSON.stringify(d.name)}, expected ${JSON.stringify(want.name)}`);
        check(d.channels?.length === want.channels, `guild ${d.id}: ${d.channels?.length} channels, expected ${want.channels}`);
        check(d.roles?.length === want.roles, `guild ${d.id}: ${d.roles?.length} roles, expected ${want.roles}`);
        check(d.member_count === want.members, `guild ${d.id}: member_count ${d.member_count}, expected ${want.members}`);
      }
      if (!created.has(shardId)) created.set(shardId, new Set());
      const guilds = created.get(shardId);
      check(!guilds.has(d.id), `shard ${shardId}: GUILD_CREATE ${d.id} twice`);
      guilds.add(d.id);
      memberCount.set(d.id, d.member_count);
      allReady.poke();
      break;
    }
    case 'GUILD_MEMBER_ADD':
      if (memberCount.has(d.guild_id)) memberCount.set(d.guild_id, memberCount.get(d.guild_id) + 1);
      break;
    case 'GUILD_MEMBER_REMOVE':
      if (memberCount.has(d.guild_id)) memberCount.set(d.guild_id, memberCount.get(d.guild_id) - 1);
      break;
    case 'MESSAGE_CREATE':
      messages += 1;
      break;
    case 'GUILD_MEMBERS_CHUNK': {
      const request = requests.get(d.nonce);
      check(request !== undefined, `shard ${shardId}: GUILD_MEMBERS_CHUNK with a nonce not ours: ${d.nonce}`);
      if (request !== undefined) {
        check(d.guild_id === request.guildId, `chunk ${d.nonce}: guild ${d.guild_id}, expected ${request.guildId}`);
        check(shardId === request.shardId, `chunk ${d.nonce} on shard ${shardId}, expected ${request.shardId}`);
        request.members += d.members.length;
        request.chunks.add(d.chunk_index);
        request.count = d.chunk_count;
        request.poke();
      }
      break;
    }
    default:
      break;
  }

  sawDispatch(t, d, shardId);
});

// Op 8 for all members of `guildId` on its shard; resolves with the number
// of members in the chunks that carry this request's nonce.
async function requestMembers(guildId) {
  const shardId = shardOf(guildId);
  const nonce = `js-${shardId}-${Date.now().toString(36)}`;
  const request = { guildId, shardId, members: 0, chunks: new Set(), count: undefined, poke: undefined };
  const done = waiter(
    () => request.count !== undefined && request.chunks.size === request.count,
    30_000,
    `the chunks of nonce ${nonce}`,
  );
  request.poke = done.poke;
  requests.set(nonce, request);
  await manager.send(shardId, {
    op: 8, // REQUEST_GUILD_MEMBERS
    d: { guild_id: guildId, query: '', limit: 0, nonce },
  });
  await done.promise;
  return request.members;
}

async function main() {
  await manager.connect();
  await allReady.promise;

  for (const [shard, n] of expected) {
    const got = created.get(shard)?.size ?? 0;
    check(got === n, `shard ${shard}: ${got} GUILD_CREATEs, expected ${n}`);
  }
  await readyThenResumed();

  // Op 8 with a nonce, on a guild of every shard.
  const sizes = [];
  for (let shard = 0; shard < RUN.shards; shard += 1) {
    const guildId = Object.keys(truth).find(id => shardOf(id) === shard);
    const members = await requestMembers(guildId);
    const count = memberCount.get(guildId);
    // The stream goes on meanwhile (joins and leaves): allow a few.
    check(Math.abs(members - count) <= 3, `guild ${guildId}: chunks gave ${members} members of ${count}`);
    sizes.push(members);
  }
  check(messages > 0, 'no MESSAGE_CREATE arrived');
  check(progress.last.size === RUN.shards, `markers from shards [${[...progress.last.keys()]}], expected ${RUN.shards} shards`);

  if (failures.length > 0) fail(`${failures.length} failure(s)`);
  console.log(
    `DONE marked=${progress.marked} after_resume=${progress.afterResume} messages=${messages} members=[${sizes}] shards=[${[...progress.last.keys()].sort()}]`,
  );
  await manager.destroy();
  process.exit(0);
}

main().catch(error => fail(error?.stack ?? String(error)));
