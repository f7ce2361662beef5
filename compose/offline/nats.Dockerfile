# Offline stand-in for the official `nats:2.10-alpine` image: Debian's
# nats-server (2.9) and wget (the stack's health check uses it). Like the
# official image, arguments that start with `-` are passed to nats-server.
ARG BASE_IMAGE=syncdata-offline/debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends nats-server wget \
    && rm -rf /var/lib/apt/lists/* \
    && printf '%s\n' '#!/bin/sh' 'set -e' \
        'if [ "${1#-}" != "$1" ]; then set -- nats-server "$@"; fi' 'exec "$@"' \
        >/usr/local/bin/docker-entrypoint.sh \
    && chmod 0755 /usr/local/bin/docker-entrypoint.sh
EXPOSE 4222 8222
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["nats-server"]
