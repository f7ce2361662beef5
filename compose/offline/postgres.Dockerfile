# Offline stand-in for the official `postgres:15-bookworm` image (local-db,
# and the base of compose/source-db/Dockerfile): Debian's PostgreSQL 15 with
# a small entrypoint that does what the official one does for this stack
# (postgres-entrypoint.sh). Same data directory, PATH and user name.
ARG BASE_IMAGE=syncdata-offline/debian:bookworm-slim
FROM ${BASE_IMAGE}
# No cluster from the package: the entrypoint creates it in PGDATA, as the
# official image does.
RUN install -d /etc/postgresql-common \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 postgresql-client-15 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 2777 /var/run/postgresql \
    && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data \
    && install -d /docker-entrypoint-initdb.d
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
COPY postgres-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh
ENTRYPOINT ["docker-entrypoint.sh"]
STOPSIGNAL SIGINT
EXPOSE 5432
CMD ["postgres"]
