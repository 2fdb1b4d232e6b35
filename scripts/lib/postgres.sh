# Sourced by scripts/*: makes sure a PostgreSQL server is available as $DATABASE_URL.
#
# With DATABASE_URL already set, that server is used as is. Otherwise a private cluster is
# created under target/ (initdb on a free local port, run as the `postgres` user when we are
# root, since PostgreSQL refuses to run as root), and stopped and deleted when the calling
# script exits. Missing binaries are installed from Debian's packages.

pg_log() { printf '\033[2m[postgres] %s\033[0m\n' "$*" >&2; }

pg_find_bindir() {
  local dir
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$dir" ] && command -v pg_config >/dev/null 2>&1; then
    dir=$(pg_config --bindir)
  fi
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && echo "$dir"
}

pg_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "PostgreSQL server binaries are missing; install the 'postgresql' package or set DATABASE_URL." >&2
    return 1
  fi
  pg_log "installing PostgreSQL from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq postgresql >/dev/null
}

pg_free_port() {
  local port
  for port in $(seq 54329 54999); do
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  return 1
}

# pg_as_owner CMD...: runs CMD as the cluster's owner.
pg_as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

pg_stop() {
  if [ -n "${PG_PRIVATE_DIR:-}" ] && [ -d "$PG_PRIVATE_DIR" ]; then
    pg_as_owner "$PG_BINDIR/pg_ctl" -D "$PG_PRIVATE_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_PRIVATE_DIR"
    pg_log "stopped the private server"
  fi
}

# start_postgres PROFILE: PROFILE "test" turns durability off (fast, throw-away); "real" keeps
# PostgreSQL's defaults (for demos and benchmarks).
start_postgres() {
  local profile=${1:-real}
  if [ -n "${DATABASE_URL:-}" ]; then
    pg_log "using DATABASE_URL"
    return 0
  fi
  PG_BINDIR=$(pg_find_bindir) || true
  if [ -z "$PG_BINDIR" ]; then
    pg_install
    PG_BINDIR=$(pg_find_bindir)
  fi
  if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
  fi
  local root
  root="$(pwd)/target"
  mkdir -p "$root"
  PG_PRIVATE_DIR=$(mktemp -d "$root/pg.XXXXXX")
  chmod 755 "$PG_PRIVATE_DIR"
  [ "$(id -u)" -eq 0 ] && chown postgres "$PG_PRIVATE_DIR"
  ES_EXIT_HOOKS="pg_stop ${ES_EXIT_HOOKS:-}"; trap 'for hook in ${ES_EXIT_HOOKS:-}; do "$hook"; done' EXIT
  trap 'exit 130' INT TERM
  local port
  port=$(pg_free_port)
  pg_as_owner "$PG_BINDIR/initdb" -D "$PG_PRIVATE_DIR/data" -U postgres --auth=trust \
    --encoding=UTF8 --locale=C >"$PG_PRIVATE_DIR/initdb.log" 2>&1 \
    || { cat "$PG_PRIVATE_DIR/initdb.log" >&2; return 1; }
  local options="-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$PG_PRIVATE_DIR"
  options="$options -c max_connections=400 -c shared_buffers=512MB -c max_wal_size=4GB"
  # Two-phase commit is on so that tests can show a prepared transaction holds its holes.
  options="$options -c max_prepared_transactions=20"
  if [ "$profile" = "test" ]; then
    options="$options -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  fi
  pg_as_owner "$PG_BINDIR/pg_ctl" -D "$PG_PRIVATE_DIR/data" -o "$options" \
    -l "$PG_PRIVATE_DIR/server.log" -w -t 60 start >/dev/null \
    || { cat "$PG_PRIVATE_DIR/server.log" >&2; return 1; }
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  export PG_SERVER_LOG="$PG_PRIVATE_DIR/server.log"
  pg_log "private server $("$PG_BINDIR/postgres" --version | awk '{print $3}') on port $port ($profile profile)"
}

# ensure_postgres_binaries: the server binaries (initdb, pg_ctl) for tests that start a private,
# differently configured server (es-postgres/tests/tls.rs), also when DATABASE_URL is set.
ensure_postgres_binaries() {
  if [ -z "$(pg_find_bindir || true)" ]; then
    pg_install
  fi
}

# ensure_openssl: the openssl command, which the TLS test makes its certificates with.
ensure_openssl() {
  if ! command -v openssl >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "openssl is missing; install Debian's 'openssl' package." >&2
      return 1
    fi
    pg_log "installing openssl from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq openssl >/dev/null
  fi
}
