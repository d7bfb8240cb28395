#!/usr/bin/env bash
# Start a Docker engine in the background if none answers, then wait until `docker info` does.
#
# Idempotent: when an engine already answers it does nothing. When `dockerd` is not installed it installs
# Debian's docker.io (CI machines are fresh; the session that wrote this installed it by hand).
# Environment: DOCKERD_LOG (default /tmp/dockerd.log), DOCKERD_WAIT_S (default 60).
set -euo pipefail

log="${DOCKERD_LOG:-/tmp/dockerd.log}"
wait_s="${DOCKERD_WAIT_S:-60}"

if docker info >/dev/null 2>&1; then
    echo "start_dockerd: engine already running"
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    echo "start_dockerd: dockerd missing; installing docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
fi

# A stale pid file from a killed engine makes dockerd refuse to start.
if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
    rm -f /var/run/docker.pid
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
    echo "start_dockerd: starting dockerd (log: $log)"
    # setsid + nohup: the engine outlives this script and the shell that ran it.
    setsid nohup dockerd >"$log" 2>&1 </dev/null &
fi

for _ in $(seq 1 "$wait_s"); do
    if docker info >/dev/null 2>&1; then
        echo "start_dockerd: engine ready ($(docker version --format '{{.Server.Version}}' 2>/dev/null))"
        exit 0
    fi
    sleep 1
done

echo "start_dockerd: engine did not answer within ${wait_s}s; last log lines:" >&2
tail -n 30 "$log" >&2 || true
exit 1
