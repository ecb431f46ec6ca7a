#!/bin/sh
# Entry point of the ringattn image: the first argument picks the program.
#   coordinator [FLAGS]  ringattn-coordinator, listening on every interface
#   worker [FLAGS]       ringattn-worker, listening on (and advertising) the
#                        container's own address
#   ringattn [ARGS]      the ringattn CLI (status, synthetic, bench, ...)
#   healthcheck          what the image's HEALTHCHECK runs
# Anything else runs as a command. FLAGS come after the defaults below, so a
# flag given here (or in a --flagfile) overrides them.
set -eu

# The first address of this container, as its peers reach it.
own_address() {
  addrs="$(hostname -i 2>/dev/null || true)"
  addr="${addrs%% *}"
  echo "${addr:-127.0.0.1}"
}

usage() {
  cat <<'USAGE'
usage: docker run IMAGE coordinator --cp=N [FLAGS]
       docker run IMAGE worker --coordinator=HOST:PORT [FLAGS]
       docker run IMAGE ringattn status --coordinator=HOST:PORT
Flags: IMAGE coordinator --help, IMAGE worker --help.
USAGE
}

role="${1:-help}"
case "$role" in
  coordinator)
    shift
    exec ringattn-coordinator --host=0.0.0.0 --port="${RINGATTN_PORT:-50051}" \
      --advertise_host="${RINGATTN_ADVERTISE_HOST:-$(own_address)}" "$@"
    ;;
  worker)
    shift
    exec ringattn-worker --host="${RINGATTN_HOST:-$(own_address)}" \
      --port="${RINGATTN_PORT:-50052}" "$@"
    ;;
  ringattn|cli)
    shift
    exec ringattn "$@"
    ;;
  healthcheck)
    shift
    exec ringattn-healthcheck "$@"
    ;;
  help|-h|--help)
    usage
    ;;
  *)
    exec "$@"
    ;;
esac
