"""discord.py 2.7, unmodified, through gateway-proxy to discord-sim.

Run by bins/gateway-proxy/tests/clients.rs with the path of a JSON file
that describes the run (the proxy's URL, the sim's REST base, the token,
the shard count and the ground truth of every guild). It asserts inside
itself and exits 0 only if everything held:

1. READY and every guild: the library's own guild cache (names, channel,
   role and member counts) equals the sim's ground truth.
2. Events: every dispatch the sim marks (`d._sim.n`, counted per shard
   without gaps) arrives, none lost, none repeated, including a burst of
   messages.
3. After READY the harness closes every client on the proxy side (or
   restarts the proxy); every shard must resume and, again, lose nothing.
4. Then the stream is paused and, once every marker sent has arrived, the
   guild cache equals the sim's world again.
5. REQUEST_GUILD_MEMBERS with a nonce (`guild.chunk()`) gets this client's
   own member chunks: exactly the guild's members.

Usage: bot.py RUN.json [zlib]   (zlib: force zlib-stream instead of zstd)
"""

import asyncio
import json
import sys

if len(sys.argv) > 2 and sys.argv[2] == "zlib":
    # discord.py picks zstd-stream when `zstandard` imports; hide it.
    sys.modules["zstandard"] = None

import aiohttp  # noqa: E402
import yarl  # noqa: E402
import discord  # noqa: E402
from discord.gateway import DiscordWebSocket  # noqa: E402
from discord.http import Route  # noqa: E402

with open(sys.argv[1], encoding="utf-8") as f:
    RUN = json.load(f)

Route.BASE = RUN["rest"] + "/v10"
# The sim's own routes are at its root (REST is under /api).
SIM = RUN["rest"].removesuffix("/api")
DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(RUN["gateway"] + "/")

MORE_AFTER_RESUME = 40
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
        print("FAIL", message, flush=True)


class Bot(discord.AutoShardedClient):
    def __init__(self):
        intents = discord.Intents.all()
        super().__init__(
            intents=intents,
            shard_count=RUN["shards"],
            enable_debug_events=True,
            chunk_guilds_at_startup=False,
            max_messages=None,
        )
        self.last = {}  # shard -> last _sim.n
        self.marked = 0
        self.messages = 0
        self.resumed_shards = set()
        self.resumed = asyncio.Event()  # every shard resumed
        self.after_resume = 0
        self.enough = asyncio.Event()
        self.wanted = None  # shard -> the marker to wait for
        self.settled = asyncio.Event()

    async def before_identify_hook(self, shard_id, *, initial=False):
        # The sim's identify buckets are short; no 5 s wait.
        pass

    async def on_socket_raw_receive(self, raw):
        payload = json.loads(raw)
        if payload.get("op") != 0 or not isinstance(payload.get("d"), dict):
            return
        # READY and GUILD_CREATE come from the proxy's cache, never from the
        # sim's stream; a GUILD_CREATE may carry a marker a GUILD_UPDATE left
        # among the guild's fields (the cache keeps every field it is sent).
        if payload.get("t") in ("READY", "GUILD_CREATE"):
            return
        marker = payload["d"].get("_sim")
        if marker is None:
            return
        shard, n = marker["shard"], marker["n"]
        last = self.last.get(shard)
        check(last is None or n == last + 1, f"shard {shard}: marker {n} after {last}")
        self.last[shard] = n
        self.marked += 1
        if self.resumed.is_set():
            self.after_resume += 1
            if self.after_resume >= MORE_AFTER_RESUME:
                self.enough.set()
        self.poke_settled()

    def poke_settled(self):
        if self.wanted is not None and all(
            self.last.get(shard, 0) >= n for shard, n in enumerate(self.wanted)
        ):
            self.settled.set()

    async def on_message(self, message):
        self.messages += 1

    async def on_shard_resumed(self, shard_id):
        print("RESUMED", shard_id, flush=True)
        self.resumed_shards.add(shard_id)
        if len(self.resumed_shards) == RUN["shards"]:
            self.resumed.set()

    async def pause_and_settle(self, http):
        """Pauses the sim's stream, then waits until every shard's last
        marker has arrived: the cache then stands where the sim's world does."""
        async with http.post(SIM + "/_sim/pause") as response:
            self.wanted = (await response.json())["last_markers"]
        self.poke_settled()
        await asyncio.wait_for(self.settled.wait(), timeout=30)


def compare(bot, truth, when):
    """The library's guild cache against `truth` (the run file's `guilds`
    shape): names, channel, role and member counts."""
    check(len(bot.guilds) == len(truth), f"{when}: {len(bot.guilds)} guilds, expected {len(truth)}")
    for guild in bot.guilds:
        want = truth.get(str(guild.id))
        check(want is not None, f"{when}: unknown guild {guild.id}")
        if want is None:
            continue
        check(guild.name == want["name"], f"{when}: guild {guild.id} name {guild.name!r}")
        check(len(guild.channels) == want["channels"],
              f"{when}: guild {guild.id}: {len(guild.channels)} channels, expected {want['channels']}")
        check(len(guild.roles) == want["roles"],
              f"{when}: guild {guild.id}: {len(guild.roles)} roles, expected {want['roles']}")
        check(guild.member_count == want["members"],
              f"{when}: guild {guild.id}: member_count {guild.member_count}, expected {want['members']}")


async def truth_now(http):
    """The sim's ground truth now, shaped as the run file's `guilds`."""
    async with http.get(SIM + "/_sim/guilds") as response:
        guilds = await response.json()
    return {
        g["id"]: {"name": g["name"], "channels": g["channels"], "roles": g["roles"],
                  "members": g["member_count"]}
        for g in guilds
    }


async def main():
    bot = Bot()
    ready = asyncio.Event()
    bot.event(ready_handler(bot, ready))
    async with bot:
        runner = asyncio.create_task(bot.start(RUN["token"]))
        await asyncio.wait_for(ready.wait(), timeout=60)
        compare(bot, RUN["guilds"], "at READY")
        # Tell the harness: it now closes this client on the proxy side.
        print("READY_OK", flush=True)
        await asyncio.wait_for(bot.resumed.wait(), timeout=60)
        await asyncio.wait_for(bot.enough.wait(), timeout=60)
        async with aiohttp.ClientSession() as http:
            # After the resume (or the proxy's restart) and the events
            # since, the cache still equals the sim's world.
            await bot.pause_and_settle(http)
            compare(bot, await truth_now(http), "after the resume")
        # Op 8 with a nonce: this client's own chunks; the stream is
        # paused, so exactly the guild's members.
        guild = bot.guilds[0]
        members = await asyncio.wait_for(guild.chunk(), timeout=30)
        check(len(members) == guild.member_count,
              f"chunk gave {len(members)} members of {guild.member_count}")
        check(bot.messages > 0, "no MESSAGE_CREATE reached on_message")
        print(f"DONE marked={bot.marked} messages={bot.messages} shards={sorted(bot.last)}", flush=True)
        await bot.close()
        runner.cancel()
    return 1 if failures else 0


def ready_handler(bot, ready):
    async def on_ready():
        ready.set()
    return on_ready


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
