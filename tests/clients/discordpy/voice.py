"""discord.py 2.7's VoiceClient, unmodified, through gateway-proxy to
discord-sim, up to the point where it opens its voice websocket.

Run by bins/gateway-proxy/tests/clients.rs with the path of the run file
(see bot.py). No voice server exists here, so the one call that would open
the voice websocket (`DiscordVoiceWebSocket.from_connection_state`) is
replaced by one that records what the library would identify to the voice
server with, and stops there. It asserts that:

1. `VoiceChannel.connect()` gets as far as the voice websocket: the proxy
   passed its op 4 upstream and brought back the bot's voice state and the
   voice server, in the order the library needs;
2. the voice session id is the upstream session's (the one Discord gave
   the proxy's shard, which the voice server checks), not the session id
   the proxy gave this client; the token and endpoint are the sim's; the
   server and user ids are the guild's and the bot's.

With `crash`, the process then ends without closing its gateway
connection (as a crash does: the proxy keeps its session for its ttl, and
the bot stays in the channel). With `rejoin`, a new process (a new
IDENTIFY) finds the bot in a voice channel in its guild cache (the proxy's
GUILD_CREATE shows the bot's own voice state) and connects to that very
channel: Discord would answer such a join with nothing, so the proxy sends
a leave then the join, withholding the leave's voice state from this
client (discord.py aborts a join on it); the library must reach its voice
websocket again.

Prints DONE and exits 0 only if everything held.

Usage: voice.py RUN.json [crash|rejoin]
"""

import asyncio
import json
import os
import sys

import yarl
import discord
from discord.gateway import DiscordVoiceWebSocket, DiscordWebSocket
from discord.http import Route

with open(sys.argv[1], encoding="utf-8") as f:
    RUN = json.load(f)

Route.BASE = RUN["rest"] + "/v10"
DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(RUN["gateway"] + "/")
MODE = sys.argv[2] if len(sys.argv) > 2 else ""

failures = []
reached = {}


def check(condition, message):
    if not condition:
        failures.append(message)
        print("FAIL", message, flush=True)


class Reached(Exception):
    """The library got as far as its voice websocket."""


async def intercept(cls, state, *, resume=False, hook=None, seq_ack=-1):
    reached.update(
        endpoint=state.endpoint,
        token=state.token,
        session_id=state.session_id,
        server_id=state.server_id,
        user_id=state.user.id,
    )
    if MODE == "crash":
        # Here, in the call: discord.py would leave the channel on the way
        # out of a failed connect(), and a crash leaves nothing.
        verify(*joining)
        os._exit(1 if failures else 0)
    raise Reached()


joining = ()  # the bot and the guild whose channel it joins


def verify(bot, guild, channel):
    """What the library would identify to the voice server with."""
    check(bool(reached), "the voice websocket was never reached")
    if reached:
        upstream = RUN["upstream_sessions"].get(str(guild.shard_id))
        # The session id the proxy gave this shard's client (READY's).
        client_session = bot.get_shard(guild.shard_id)._parent.ws.session_id
        check(reached["session_id"] == upstream,
              f"voice session {reached['session_id']!r}, the upstream's is {upstream!r}")
        check(reached["session_id"] != client_session,
              "the voice session id is the proxy's client session id")
        check(str(reached["token"]).startswith("sim-voice-"), f"token {reached['token']!r}")
        check(reached["endpoint"] == "voice.sim.invalid:443", f"endpoint {reached['endpoint']!r}")
        check(reached["server_id"] == guild.id, f"server {reached['server_id']}")
        check(reached["user_id"] == bot.user.id, f"user {reached['user_id']}")
    print(f"DONE voice={reached.get('endpoint')} session={reached.get('session_id')} "
          f"channel={channel.id}", flush=True)


DiscordVoiceWebSocket.from_connection_state = classmethod(intercept)


class Bot(discord.AutoShardedClient):
    async def before_identify_hook(self, shard_id, *, initial=False):
        pass


async def main():
    bot = Bot(
        intents=discord.Intents.all(),
        shard_count=RUN["shards"],
        chunk_guilds_at_startup=False,
        max_messages=None,
    )
    ready = asyncio.Event()

    @bot.event
    async def on_ready():
        ready.set()

    async with bot:
        runner = asyncio.create_task(bot.start(RUN["token"]))
        await asyncio.wait_for(ready.wait(), timeout=60)
        if MODE == "rejoin":
            # The channel the bot is still in since the crash.
            guild = next((g for g in bot.guilds if g.me.voice and g.me.voice.channel), None)
            check(guild is not None, "no guild shows the bot in a voice channel")
            if guild is None:
                return 1
            channel = guild.me.voice.channel
        else:
            guild = next(g for g in bot.guilds if g.voice_channels)
            channel = guild.voice_channels[0]
        global joining
        joining = (bot, guild, channel)
        try:
            await channel.connect(timeout=20, reconnect=False, self_deaf=True)
            check(False, "connect() returned without reaching the voice websocket")
        except Reached:
            pass
        except Exception as error:  # noqa: BLE001 - any other failure is the finding
            if not reached:
                check(False, f"connect() failed before the voice websocket: {error!r}")
        verify(bot, guild, channel)
        await bot.close()
        runner.cancel()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
