# Offline stand-in for the official `prom/prometheus` image: Debian's
# Prometheus (2.42) and wget (the stack's health check uses it), run as
# `nobody` with its data in /prometheus, as the official image does.
ARG BASE_IMAGE=syncdata-offline/debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends prometheus wget \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o nobody -g nogroup /prometheus
USER nobody
WORKDIR /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
