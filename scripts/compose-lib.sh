# Shared by scripts/stack-images.sh and scripts/stack-test.sh (sourced):
# the Compose command this machine has, and a loud failure when no Docker
# engine answers.

die() {
    echo "error: $*" >&2
    exit 1
}

# A Docker engine must answer; nothing here is skipped without one.
require_docker() {
    command -v docker >/dev/null || die "no docker command: install a Docker engine (Debian: apt-get install docker.io docker-compose)"
    if ! docker info >/dev/null 2>&1; then
        die "no Docker engine reachable (docker info failed: $(docker info 2>&1 | tail -n 1))"
    fi
}

# `docker compose` (v2) when it is there, else `docker-compose` (v1, Debian
# bookworm's package). Sets COMPOSE (an array).
find_compose() {
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null; then
        COMPOSE=(docker-compose)
    else
        die "neither 'docker compose' nor 'docker-compose' is installed"
    fi
    # Without the buildx plugin the docker CLI cannot use BuildKit; then build
    # with the classic builder (compose/Dockerfile builds with both).
    if ! docker buildx version >/dev/null 2>&1; then
        export DOCKER_BUILDKIT=0 COMPOSE_DOCKER_CLI_BUILD=0
    fi
}
