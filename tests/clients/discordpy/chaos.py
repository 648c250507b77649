"""discord.py 2.7, unmodified, as one of the clients of the chaos test.

Run by bins/gateway-proxy/tests/chaos.rs with the path of a JSON file that
describes the run (the address in front of the cluster's nodes, the sim's
REST base, the token, the shard count) and how long to run. It connects
every shard (zlib-stream, as discord.py does by default) and prints what it
sees, one line each, for the test to check while nodes are killed and
drained under it:

    READY <shard>     a new session (identified; after INVALID_SESSION too)
    RESUMED           a session resumed
    M <shard> <n>     a dispatch the sim marked (`d._sim.n`, per shard)
    DONE              at the end, once closed

Usage: chaos.py RUN.json SECONDS
"""

import asyncio
import json
import sys

import yarl
import discord
from discord.gateway import DiscordWebSocket
from discord.http import Route

with open(sys.argv[1], encoding="utf-8") as f:
    RUN = json.load(f)
SECONDS = float(sys.argv[2])

Route.BASE = RUN["rest"] + "/v10"
DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(RUN["gateway"] + "/")


class Bot(discord.AutoShardedClient):
    def __init__(self):
        super().__init__(
            intents=discord.Intents.all(),
            shard_count=RUN["shards"],
            enable_debug_events=True,
            chunk_guilds_at_startup=False,
            max_messages=None,
        )

    async def before_identify_hook(self, shard_id, *, initial=False):
        # The sim's identify buckets are short; no 5 s wait.
        pass

    async def on_socket_raw_receive(self, raw):
        payload = json.loads(raw)
        if payload.get("op") != 0:
            return
        kind, data = payload.get("t"), payload.get("d")
        if kind == "READY":
            print("READY", data["shard"][0], flush=True)
            return
        if kind == "RESUMED":
            print("RESUMED", flush=True)
            return
        # A GUILD_CREATE comes from the proxy's cache, and may carry a
        # marker a GUILD_UPDATE left among the guild's fields.
        if kind == "GUILD_CREATE" or not isinstance(data, dict):
            return
        marker = data.get("_sim")
        if marker is not None:
            print("M", marker["shard"], marker["n"], flush=True)


async def main():
    bot = Bot()
    async with bot:
        runner = asyncio.create_task(bot.start(RUN["token"]))
        done, _ = await asyncio.wait({runner}, timeout=SECONDS)
        if runner in done:
            # Ended on its own: an error, which the test reports.
            runner.result()
            return 1
        await bot.close()
        runner.cancel()
    print("DONE", flush=True)
    return 0


sys.exit(asyncio.run(main()))
