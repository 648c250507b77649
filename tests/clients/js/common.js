'use strict';
// What the acceptance programs (discordjs.js, ws.js) share: the run file,
// failing loudly, waiting, and the `_sim` markers with the forced resume.
//
// The harness (bins/gateway-proxy/tests/clients.rs) gives each program the
// path of a JSON file: the proxy's URL, the sim's REST base, the token, the
// shard count and the ground truth of every guild.

const fs = require('node:fs');

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

function debug(message) {
  debugLog.push(message);
  if (debugLog.length > 500) debugLog.splice(0, 100);
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

const shardOf = id => Number((BigInt(id) >> 22n) % BigInt(RUN.shards));

// The markers the sim puts on every dispatch it streams (`d._sim`, `n`
// counted per shard without gaps), and the resume the harness forces once
// the program says READY_OK.
const progress = {
  last: new Map(), // shard -> last _sim.n
  stale: new Map(), // shard -> highest marker seen in a composed dispatch
  resumed: new Set(), // shards resumed after READY_OK
  marked: 0,
  afterResume: 0,
  readyOk: false,
};
progress.resumedAll = waiter(() => progress.resumed.size === RUN.shards, 60_000, 'every shard to resume');
progress.enough = waiter(
  () => progress.resumed.size === RUN.shards && progress.afterResume >= MORE_AFTER_RESUME,
  60_000,
  `${MORE_AFTER_RESUME} marked dispatches after the resume`,
);

// The sim marks the dispatches it streams; it never streams READY or
// GUILD_CREATE. Those come from the proxy's cache, and a GUILD_CREATE keeps
// every top-level field the guild's last GUILD_UPDATE brought (unknown
// fields included, as it should), the sim's `_sim` among them: a stale
// marker, not a dispatch. It must be older than every live one.
function composed(t, shard, n) {
  const { last, stale } = progress;
  if (t !== 'READY' && t !== 'GUILD_CREATE') {
    check(!(n <= stale.get(shard)), `shard ${shard}: live marker ${n} not newer than the stale ${stale.get(shard)}`);
    return false;
  }
  check(!last.has(shard), `shard ${shard}: a ${t} with marker ${n} after live marker ${last.get(shard)}`);
  stale.set(shard, Math.max(n, stale.get(shard) ?? 0));
  return true;
}

// A dispatch `t` with data `d` arrived on `shardId`: its marker, if any,
// must be the next of its shard, on its own shard.
function sawDispatch(t, d, shardId) {
  const marker = d?._sim;
  if (marker === undefined) return;
  const { shard, n } = marker;
  if (composed(t, shard, n)) return;
  check(shard === shardId, `marker of shard ${shard} arrived on shard ${shardId}`);
  const previous = progress.last.get(shard);
  check(previous === undefined || n === previous + 1, `shard ${shard}: marker ${n} after ${previous}`);
  progress.last.set(shard, n);
  progress.marked += 1;
  if (progress.resumed.size === RUN.shards) {
    progress.afterResume += 1;
    progress.enough.poke();
  }
  progress.settled?.poke();
}

// Shard `shardId` resumed.
function sawResume(shardId, detail = '') {
  console.log('RESUMED', shardId, detail);
  check(progress.readyOk, `shard ${shardId} resumed before READY_OK`);
  progress.resumed.add(shardId);
  progress.resumedAll.poke();
  progress.enough.poke();
}

// Tells the harness the program is ready: it goes on with the stream and
// closes the client on the proxy side a second later. Then waits for every
// shard to resume and for enough marked dispatches after.
async function readyThenResumed() {
  if (failures.length > 0) fail(`${failures.length} failure(s) at READY`);
  progress.readyOk = true;
  console.log('READY_OK');
  await progress.resumedAll.promise;
  await progress.enough.promise;
}

// The sim's own routes are at its root (REST is under /api).
const SIM = RUN.rest.replace(/\/api$/, '');

// Pauses the sim's stream, then waits until every shard's last marker has
// arrived: the library's cache then stands where the sim's world does.
async function pauseAndSettle() {
  const response = await fetch(`${SIM}/_sim/pause`, { method: 'POST' });
  const last = (await response.json()).last_markers;
  progress.settled = waiter(
    () => last.every((n, shard) => (progress.last.get(shard) ?? 0) >= n),
    30_000,
    `every shard's markers up to [${last}]`,
  );
  progress.settled.poke();
  await progress.settled.promise;
}

// The sim's ground truth now, shaped as the run file's `guilds`.
async function truthNow() {
  const guilds = await (await fetch(`${SIM}/_sim/guilds`)).json();
  return Object.fromEntries(guilds.map(g => [
    g.id,
    { name: g.name, channels: g.channels, roles: g.roles, members: g.member_count },
  ]));
}

module.exports = {
  RUN,
  check,
  debug,
  fail,
  failures,
  pauseAndSettle,
  progress,
  readyThenResumed,
  sawDispatch,
  sawResume,
  shardOf,
  truthNow,
  waiter,
};
