'use strict';
// @discordjs/voice with discord.js 14, unmodified, through gateway-proxy to
// discord-sim, up to the point where it opens its voice websocket.
//
// Run by bins/gateway-proxy/tests/clients.rs with the path of the run file
// (see discordjs.js). No voice server exists here, so the WebSocket class
// @discordjs/voice opens its voice connection with (the `ws` package's, as
// @discordjs/voice loads it, after discord.js has its own) is wrapped: a
// connection to the sim's voice endpoint gets a socket that records the
// address and the voice IDENTIFY the library sends, and goes no further. It asserts that:
//
// 1. joinVoiceChannel() gets as far as the voice websocket: the proxy passed
//    its op 4 upstream and brought back the bot's voice state, then the
//    voice server (the order @discordjs/voice needs);
// 2. the voice IDENTIFY carries the upstream session id (the one Discord
//    gave the proxy's shard, which the voice server checks), not the one the
//    proxy gave this client; the sim's token and endpoint; the guild's and
//    the bot's ids.
//
// With `crash`, the process then exits without closing its gateway
// connection (as a crash does: the proxy keeps its session for its ttl, and
// the bot stays in the channel); it does so in any mode, in fact, as it
// ends with process.exit. With `rejoin`, a new process (a new IDENTIFY)
// finds the bot in a voice channel in its guild cache (the proxy's
// GUILD_CREATE shows the bot's own voice state) and joins that very
// channel: Discord would answer such a join with nothing, so the proxy
// sends a leave then the join, withholding the leave's voice state from
// this client; the library must reach its voice websocket again.
//
// Usage: node voice.js RUN.json [crash|rejoin]

const fs = require('node:fs');
const path = require('node:path');

const RUN = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const MODE = process.argv[3] ?? '';
const failures = [];
const debugLog = [];

function check(condition, message) {
  if (!condition) {
    failures.push(message);
    console.log('FAIL', message);
  }
}

function debug(message) {
  debugLog.push(message);
  if (debugLog.length > 200) debugLog.splice(0, 50);
}

function fail(message) {
  console.log('FAIL', message);
  console.error(debugLog.slice(-60).join('\n'));
  process.exit(1);
}

process.on('unhandledRejection', error => fail(`unhandled rejection: ${error?.stack ?? error}`));
process.on('uncaughtException', error => fail(`uncaught exception: ${error?.stack ?? error}`));

const reached = { address: null, identify: null };

// What @discordjs/voice constructs for its voice connection: records, then
// says it is open so that the library sends its IDENTIFY.
class RecordingSocket {
  constructor(address) {
    reached.address = String(address);
    this.readyState = 0;
    setImmediate(() => {
      this.readyState = 1;
      this.onopen?.({ type: 'open', target: this });
    });
  }

  send(data) {
    const payload = JSON.parse(String(data));
    if (payload.op === 0) {
      reached.identify = payload.d;
      finish();
    }
  }

  close() {}
  terminate() {}
}

const { Client, Events, GatewayIntentBits } = require('discord.js');

// The `ws` @discordjs/voice will load, wrapped before it does.
const voiceWs = require.resolve('ws', {
  paths: [path.dirname(require.resolve('@discordjs/voice'))],
});
const RealWebSocket = require(voiceWs);
class VoiceOnly {
  constructor(address, ...rest) {
    if (String(address).includes('voice.sim.invalid')) return new RecordingSocket(address);
    return new RealWebSocket(address, ...rest);
  }
}
require.cache[voiceWs].exports = VoiceOnly;
const { joinVoiceChannel } = require('@discordjs/voice');

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
  ws: { buildIdentifyThrottler: () => ({ waitForIdentify: async () => {} }) },
});
client.on(Events.Debug, debug);

let guild;

function finish() {
  const d = reached.identify;
  const shard = guild.shardId;
  const upstream = RUN.upstream_sessions[String(shard)];
  const clientSession = client.ws.shards?.get?.(shard)?.sessionId;
  check(reached.address.startsWith('wss://voice.sim.invalid:443'), `address ${reached.address}`);
  check(d.session_id === upstream, `voice session ${d.session_id}, the upstream's is ${upstream}`);
  if (clientSession) check(d.session_id !== clientSession, 'the voice session is the client session');
  check(String(d.token).startsWith('sim-voice-'), `token ${d.token}`);
  check(d.server_id === guild.id, `server ${d.server_id}`);
  check(d.user_id === client.user.id, `user ${d.user_id}`);
  console.log(`DONE voice=${reached.address} session=${d.session_id}`);
  process.exit(failures.length === 0 ? 0 : 1);
}

client.once(Events.ClientReady, () => {
  let channel;
  if (MODE === 'rejoin') {
    // The channel the bot is still in since the crash.
    guild = client.guilds.cache.find(g => g.members.me?.voice?.channelId);
    if (!guild) fail('no guild shows the bot in a voice channel');
    channel = guild.members.me.voice.channel;
  } else {
    guild = client.guilds.cache.find(g => g.channels.cache.some(c => c.isVoiceBased()));
    if (!guild) fail('no guild with a voice channel');
    channel = guild.channels.cache.find(c => c.isVoiceBased());
  }
  joinVoiceChannel({
    channelId: channel.id,
    guildId: guild.id,
    adapterCreator: guild.voiceAdapterCreator,
    selfDeaf: true,
    debug: true,
  });
  setTimeout(() => fail('the voice websocket was never reached'), 30_000).unref();
});

client.login(RUN.token).catch(error => fail(`login: ${error}`));
