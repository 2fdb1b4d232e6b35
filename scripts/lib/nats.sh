# Sourced by scripts/*: makes sure a NATS server with JetStream is available as $NATS_URL.
#
# With NATS_URL already set, that server is used as is. Otherwise a private server is started
# with JetStream on (-js), its store in a fresh directory under target/ and on a free local
# port, and stopped and deleted when the calling script exits. A missing nats-server is
# installed from Debian's packages (bookworm has 2.9, enough for everything here).
#
# Exit hooks compose with scripts/lib/postgres.sh through $ES_EXIT_HOOKS: each start_* prepends
# its stop function, and the EXIT trap runs them all, the last started first.

nats_log() { printf '\033[2m[nats] %s\033[0m\n' "$*" >&2; }

nats_find_server() {
  local bin
  bin=$(command -v nats-server 2>/dev/null) || bin=/usr/sbin/nats-server
  [ -x "$bin" ] && echo "$bin"
}

nats_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "nats-server is missing; install the 'nats-server' package or set NATS_URL." >&2
    return 1
  fi
  nats_log "installing nats-server from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq nats-server >/dev/null
}

nats_free_port() {
  local port
  for port in $(seq 14222 14999); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# nats_ready PORT: whether the server on PORT accepts connections with JetStream on (its INFO
# line, the first thing a client reads, says "jetstream":true).
nats_ready() {
  local info
  info=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && IFS= read -r -t 2 line <&3 && printf '%s' "$line") 2>/dev/null) || return 1
  case "$info" in
    *'"jetstream":true'*) return 0 ;;
    *) return 1 ;;
  esac
}

nats_stop() {
  if [ -n "${NATS_PID:-}" ]; then
    kill "$NATS_PID" 2>/dev/null || true
    wait "$NATS_PID" 2>/dev/null || true
    NATS_PID=
  fi
  if [ -n "${NATS_PRIVATE_DIR:-}" ] && [ -d "$NATS_PRIVATE_DIR" ]; then
    rm -rf "$NATS_PRIVATE_DIR"
    nats_log "stopped the private server"
  fi
}

start_nats() {
  if [ -n "${NATS_URL:-}" ]; then
    nats_log "using NATS_URL"
    return 0
  fi
  NATS_BIN=$(nats_find_server) || true
  if [ -z "$NATS_BIN" ]; then
    nats_install
    NATS_BIN=$(nats_find_server)
  fi
  local root
  root="$(pwd)/target"
  mkdir -p "$root"
  NATS_PRIVATE_DIR=$(mktemp -d "$root/nats.XXXXXX")
  ES_EXIT_HOOKS="nats_stop ${ES_EXIT_HOOKS:-}"
  trap 'for hook in ${ES_EXIT_HOOKS:-}; do "$hook"; done' EXIT
  trap 'exit 130' INT TERM
  local port
  port=$(nats_free_port)
  "$NATS_BIN" -a 127.0.0.1 -p "$port" -js -sd "$NATS_PRIVATE_DIR/jetstream" \
    >"$NATS_PRIVATE_DIR/server.log" 2>&1 &
  NATS_PID=$!
  local waited=0
  until nats_ready "$port"; do
    if ! kill -0 "$NATS_PID" 2>/dev/null || [ "$waited" -ge 300 ]; then
      cat "$NATS_PRIVATE_DIR/server.log" >&2
      echo "the private nats-server did not start" >&2
      return 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  export NATS_URL="nats://127.0.0.1:$port"
  export NATS_SERVER_LOG="$NATS_PRIVATE_DIR/server.log"
  nats_log "private server $("$NATS_BIN" --version 2>&1 | awk '{print $2}') on port $port (JetStream in $NATS_PRIVATE_DIR)"
}
