# Sourced by scripts/*: makes sure Debian's pgbouncer is installed, and a newer one built, for
# the tests that start their own pgbouncer in front of the test database
# (es-projections/tests/pgbouncer.rs).

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

# ensure_modern_pgbouncer: exports ES_PGBOUNCER_MODERN, a pgbouncer of 1.21 or later, for the
# test of transaction pooling with prepared statements (`max_prepared_statements`, new in 1.21;
# Debian 12 ships 1.18). Uses one from the environment, else builds Debian 13's pgbouncer 1.24.1
# from its source tarball (checked against its sha256) into target/pgbouncer-1.24.1, once.
PGBOUNCER_MODERN_VERSION=1.24.1
PGBOUNCER_MODERN_SHA256=da72a3aba13072876d055a3e58dd4aba4a5de4ed6148e73033185245598fd3e0
ensure_modern_pgbouncer() {
  if [ -n "${ES_PGBOUNCER_MODERN:-}" ]; then
    return 0
  fi
  local prefix="$PWD/target/pgbouncer-$PGBOUNCER_MODERN_VERSION"
  if [ ! -x "$prefix/bin/pgbouncer" ]; then
    if [ "$(id -u)" -eq 0 ]; then
      printf '\033[2m[pgbouncer] %s\033[0m\n' \
        "installing the build dependencies of pgbouncer $PGBOUNCER_MODERN_VERSION" >&2
      export DEBIAN_FRONTEND=noninteractive
      apt-get update -qq >/dev/null
      apt-get install -y -qq curl gcc make pkg-config libevent-dev libssl-dev >/dev/null
    fi
    printf '\033[2m[pgbouncer] %s\033[0m\n' \
      "building pgbouncer $PGBOUNCER_MODERN_VERSION from Debian's source" >&2
    local work
    work=$(mktemp -d)
    local tarball="$work/pgbouncer.tar.gz"
    curl -sSfL -o "$tarball" \
      "http://deb.debian.org/debian/pool/main/p/pgbouncer/pgbouncer_$PGBOUNCER_MODERN_VERSION.orig.tar.gz"
    echo "$PGBOUNCER_MODERN_SHA256  $tarball" | sha256sum -c --quiet - >&2
    mkdir "$work/src"
    tar -xzf "$tarball" -C "$work/src" --strip-components=1
    (cd "$work/src" \
      && ./configure --prefix="$prefix" --without-cares --without-pam --without-systemd \
        >"$work/configure.log" 2>&1 \
      && make -j2 >"$work/make.log" 2>&1 && make install >"$work/install.log" 2>&1) \
      || { tail -20 "$work"/*.log >&2; rm -rf "$work"; return 1; }
    rm -rf "$work"
  fi
  # The tests run it as `postgres` when they are root: it must be able to reach it.
  chmod -R a+rX "$prefix" 2>/dev/null || true
  export ES_PGBOUNCER_MODERN="$prefix/bin/pgbouncer"
}
