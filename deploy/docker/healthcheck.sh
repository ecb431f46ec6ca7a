#!/bin/bash
# The image's HEALTHCHECK: does the daemon that runs as PID 1 answer on its
# gRPC port? The coordinator must answer a ClusterStatus call (the CLI's
# `status`); a worker must accept a connection. Host and port come from the
# daemon's own command line, --flagfile files included, as it parsed them
# (the last occurrence of a flag wins).
set -u

cmdline="${RINGATTN_HEALTH_CMDLINE:-/proc/1/cmdline}"
timeout_s="${RINGATTN_HEALTH_TIMEOUT:-5}"
host=""
port=""

take() {
  case "$1" in
    --host=*) host="${1#--host=}" ;;
    --port=*) port="${1#--port=}" ;;
    --flagfile=*)
      local file="${1#--flagfile=}" line
      [ -r "$file" ] || return 0
      while IFS= read -r line || [ -n "$line" ]; do
        line="${line#"${line%%[![:space:]]*}"}"
        line="${line%"${line##*[![:space:]]}"}"
        case "$line" in ''|'#'*) continue ;; esac
        take "$line"
      done < "$file"
      ;;
  esac
}

mapfile -d '' -t args < "$cmdline" || exit 1
[ "${#args[@]}" -gt 0 ] || exit 1
program="${args[0]##*/}"
for a in "${args[@]:1}"; do take "$a"; done

case "$host" in ''|0.0.0.0|'::'|'[::]') host=127.0.0.1 ;; esac
case "$program" in
  ringattn-coordinator)
    exec timeout "$timeout_s" ringattn status --coordinator="$host:${port:-50051}" >/dev/null
    ;;
  ringattn-worker)
    [ -n "$port" ] && [ "$port" != 0 ] || exit 1
    exec timeout "$timeout_s" bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$host" "$port"
    ;;
  *)
    echo "healthcheck: PID 1 is $program, not a ringattn daemon" >&2
    exit 1
    ;;
esac
