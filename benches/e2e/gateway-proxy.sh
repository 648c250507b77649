#!/bin/sh
# Runs this repository's gateway-proxy under the e2e benchmark's contract
# (docs/BENCHMARKING.md): the benchmark sets the variables below and starts
# this script with `sh -c`; another proxy gets the same variables through
# its own script given with `--proxy-cmd`.
#
#   PROXY_HOST, PROXY_PORT  where to listen for clients (127.0.0.1, a free port)
#   UPSTREAM_GATEWAY_URL    the simulated Discord's gateway, ws://127.0.0.1:N
#   UPSTREAM_API_BASE       its REST base, http://127.0.0.1:N/api (/v10/gateway/bot...)
#   DISCORD_TOKEN           the bot token (upstream, and what clients identify with)
#   SHARDS                  the shard count; run shards 0..SHARDS
#   INTENTS                 the intents bitfield to identify with upstream
#   CACHE                   minimal | members | full: what to cache
#   E2E_GATEWAY_PROXY_BIN   (this script only) the gateway-proxy binary
set -eu
export TOKEN="$DISCORD_TOKEN"
export GATEWAY_PROXY_BIND="$PROXY_HOST"
export GATEWAY_PROXY_PORT="$PROXY_PORT"
export GATEWAY_PROXY_GATEWAY_URL="$UPSTREAM_GATEWAY_URL"
export GATEWAY_PROXY_API_BASE="$UPSTREAM_API_BASE"
export GATEWAY_PROXY_SHARDS="$SHARDS"
export GATEWAY_PROXY_INTENTS="$INTENTS"
export GATEWAY_PROXY_LOG_LEVEL="${GATEWAY_PROXY_LOG_LEVEL:-warn}"
case "$CACHE" in
  minimal) ;; # the defaults: channels, roles, threads, the bot's own member
  members) export GATEWAY_PROXY_CACHE__MEMBERS=true ;;
  full)
    for flag in CHANNELS PRESENCES EMOJIS CURRENT_MEMBER MEMBERS ROLES SCHEDULED_EVENTS \
      STAGE_INSTANCES STICKERS USERS VOICE_STATES THREADS SOUNDBOARD_SOUNDS; do
      export "GATEWAY_PROXY_CACHE__$flag=true"
    done
    ;;
  *) echo "unknown CACHE preset: $CACHE" >&2; exit 64 ;;
esac
exec "${E2E_GATEWAY_PROXY_BIN:-gateway-proxy}"
