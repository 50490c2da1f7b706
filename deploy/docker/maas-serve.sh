#!/bin/sh
# Entry point of the maas images: `maas serve` on every interface of the container, its main
# settings from MAAS_SERVER_* environment variables (the names `maas serve` itself reads for the
# API keys), and the container's arguments appended, so `docker run IMAGE --request-timeout 60`
# or a Kubernetes `args:` list adds or overrides flags (the last value of a flag wins).
set -eu
exec maas serve "${MAAS_SERVER_REPOSITORY:-/models}" \
    --host 0.0.0.0 \
    --port "${MAAS_SERVER_PORT:-8000}" \
    --model-control "${MAAS_SERVER_MODEL_CONTROL:-none}" \
    --log-level "${MAAS_SERVER_LOG_LEVEL:-info}" \
    --access-log "${MAAS_SERVER_ACCESS_LOG:-text}" \
    "$@"
