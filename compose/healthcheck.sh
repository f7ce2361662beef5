#!/bin/bash
# Container health check of the syncdata image (installed as
# /usr/local/bin/syncdata-healthcheck): healthy when the Prometheus endpoint
# of `syncdata start` or `syncdata-producer run` answers `GET /metrics` with
# 200 on 127.0.0.1:PORT.
#
#   syncdata-healthcheck [PORT]    # default: $SYNCDATA_METRICS_PORT, else 9187
#
# Plain bash (/dev/tcp), so the runtime image needs no HTTP client.
# Tested by testkit/tests/it/compose.rs against the real endpoints.
set -u
port="${1:-${SYNCDATA_METRICS_PORT:-9187}}"
case "$port" in
'' | *[!0-9]*)
    echo "syncdata-healthcheck: not a port number: $port" >&2
    exit 2
    ;;
esac
if ! exec 3<>"/dev/tcp/127.0.0.1/$port"; then
    echo "syncdata-healthcheck: nothing listens on 127.0.0.1:$port" >&2
    exit 1
fi
printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&3
status=""
IFS= read -r -t 5 status <&3 || true
exec 3<&-
case "$status" in
"HTTP/1."?" 200"*) exit 0 ;;
esac
echo "syncdata-healthcheck: GET /metrics on 127.0.0.1:$port answered: ${status:-nothing}" >&2
exit 1
