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
//    composes may carry a stale one: see `composed` in common.js).
// 3. After READY_OK the harness closes every client on the proxy side
//    (4000); every shard must resume and, again, lose nothing.
// 4. Then the stream is paused and, once every marker sent has arrived,
//    the guild cache equals the sim's world again.
// 5. `guild.members.fetch()` (op 8 with a nonce) gets this client's own
//    member chunks: exactly `memberCount` members.
//
// Usage: node discordjs.js RUN.json [auto]

const { Client, Events, GatewayIntentBits } = require('discord.js');
const {
  RUN, check, debug, fail, failures, pauseAndSettle, progress, readyThenResumed, sawDispatch, sawResume,
  shardOf, truthNow,
} = require('./common');

// Every non-privileged intent plus the three privileged ones: everything,
// as the proxy's pool has, so that no marked dispatch is filtered away.
const intents = Object.values(GatewayIntentBits)
  .filter(bit => typeof bit === 'number')
  .reduce((all, bit) => all | bit, 0);

// `auto` (a second argument): the shard count from `GET /gateway/bot`, as
// most bots run.
const auto = process.argv[3] === 'auto';
const shardIds = Array.from({ length: RUN.shards }, (_, i) => i);
const client = new Client({
  intents,
  rest: { api: RUN.rest },
  ...(auto ? { shards: 'auto' } : { shards: shardIds, shardCount: RUN.shards }),
  waitGuildTimeout: 2_000,
  ws: {
    // The sim's identify buckets are short; no 5 s waits.
    buildIdentifyThrottler: () => ({ waitForIdentify: async () => {} }),
  },
});

let messages = 0;

client.on(Events.Debug, debug);

client.on(Events.Raw, (packet, shardId) => {
  if (packet.op === 0) sawDispatch(packet.t, packet.d, shardId);
});

client.on(Events.MessageCreate, () => {
  messages += 1;
});

client.on(Events.ShardResume, (shardId, replayed) => sawResume(shardId, `replayed=${replayed}`));

client.on(Events.ShardReconnecting, shardId => {
  console.log('RECONNECTING', shardId);
});

client.on(Events.ShardDisconnect, (event, shardId) => {
  fail(`shard ${shardId} disconnected for good (close ${event.code})`);
});

client.on(Events.Error, error => fail(`client error: ${error?.stack ?? error}`));

// The library's guild cache against `truth` (the run file's `guilds`
// shape): names, channel, role and member counts, and each guild's shard.
function compareGuilds(truth, when) {
  const cache = client.guilds.cache;
  check(cache.size === Object.keys(truth).length, `${when}: ${cache.size} guilds, expected ${Object.keys(truth).length}`);
  for (const [id, want] of Object.entries(truth)) {
    const guild = cache.get(id);
    check(guild !== undefined, `${when}: guild ${id} is not in the cache`);
    if (guild === undefined) continue;
    check(guild.available, `${when}: guild ${id} is unavailable`);
    check(guild.name === want.name, `${when}: guild ${id}: name ${JSON.stringify(guild.name)}, expected ${JSON.stringify(want.name)}`);
    // The cache holds threads too; the truth counts channels only.
    const channels = guild.channels.cache.filter(channel => !channel.isThread()).size;
    check(channels === want.channels, `${when}: guild ${id}: ${channels} channels, expected ${want.channels}`);
    check(guild.roles.cache.size === want.roles, `${when}: guild ${id}: ${guild.roles.cache.size} roles, expected ${want.roles}`);
    check(guild.memberCount === want.members, `${when}: guild ${id}: memberCount ${guild.memberCount}, expected ${want.members}`);
    const shard = shardOf(id);
    check(guild.shardId === shard, `${when}: guild ${id} on shard ${guild.shardId}, expected ${shard}`);
  }
}

async function main() {
  const ready = new Promise(resolve => client.once(Events.ClientReady, resolve));
  await client.login(RUN.token);
  await ready;

  check(
    client.ws.shards.size === RUN.shards,
    `${client.ws.shards.size} shards, expected ${RUN.shards}`,
  );
  compareGuilds(RUN.guilds, 'at READY');
  await readyThenResumed();
  // After the resume (or the proxy's restart) and the events since, the
  // cache still equals the sim's world.
  await pauseAndSettle();
  compareGuilds(await truthNow(), 'after the resume');

  // Op 8 with a nonce: this client's own chunks; the stream is paused, so
  // exactly the guild's members.
  const guild = client.guilds.cache.get(Object.keys(RUN.guilds)[0]);
  const members = await guild.members.fetch({ time: 30_000 });
  check(
    members.size === guild.memberCount,
    `members.fetch gave ${members.size} members of ${guild.memberCount}`,
  );
  check(messages > 0, 'no MESSAGE_CREATE reached messageCreate');
  check(progress.last.size === RUN.shards, `markers from shards [${[...progress.last.keys()]}], expected ${RUN.shards} shards`);

  if (failures.length > 0) fail(`${failures.length} failure(s)`);
  console.log(
    `DONE marked=${progress.marked} after_resume=${progress.afterResume} messages=${messages} members=${members.size} shards=[${[...progress.last.keys()].sort()}]`,
  );
  await client.destroy();
  process.exit(0);
}

main().catch(error => fail(error?.stack ?? String(error)));
