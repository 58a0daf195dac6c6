#!/bin/sh
# Writes ../.env (next to docker-compose.yml) with random secrets for every variable the compose file
# requires, readable by its owner only. It never overwrites an existing .env: secrets already in use by
# the volumes (Postgres, MinIO) would stop matching.
#
#   deploy/gen-env.sh            # then: docker compose up -d --build
#   deploy/gen-env.sh path/.env  # somewhere else
set -eu

dest=${1:-"$(dirname "$0")/../.env"}
if [ -e "$dest" ]; then
    echo "$dest exists; not overwriting it" >&2
    exit 1
fi

# hex only: URL-safe (the Postgres password goes into ASRQ_DATABASE_URL) and never needs quoting
rand() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

umask 077
cat > "$dest" <<ENV
POSTGRES_PASSWORD=$(rand 24)
MINIO_ROOT_USER=asrq
MINIO_ROOT_PASSWORD=$(rand 24)
ASRQ_API_KEYS=ops:asrq_$(rand 32)
FLOWER_BASIC_AUTH=admin:$(rand 16)
ASRQ_METRICS_TOKEN=$(rand 24)
GRAFANA_ADMIN_PASSWORD=$(rand 16)
# API_PUBLISH_ADDRESS=0.0.0.0   # publish the API on every interface (default: 127.0.0.1)
ENV
echo "wrote $dest; the API key for tenant 'ops' is in ASRQ_API_KEYS" >&2
