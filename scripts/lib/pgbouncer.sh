# Sourced by scripts/*: makes sure Debian's pgbouncer is installed, for the tests that start
# their own pgbouncer in front of the test database (es-projections/tests/pgbouncer.rs).

ensure_pgbouncer() {
  if [ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1; then
    return 0
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "pgbouncer is missing; install Debian's 'pgbouncer' package." >&2
    return 1
  fi
  printf '\033[2m[pgbouncer] %s\033[0m\n' "installing pgbouncer from Debian's packages" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # The package's own service is not wanted: tests start theirs on a free port.
  apt-get install -y -qq pgbouncer >/dev/null
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now pgbouncer >/dev/null 2>&1 || true
  fi
}
