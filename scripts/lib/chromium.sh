# Sourced by scripts/test: makes sure a headless browser is there for the status page's test
# (es-examples' tests/status_page.rs), exporting CHROMIUM.
#
# With CHROMIUM already set, that binary is used as is. Otherwise Debian's `chromium` is found
# on the PATH or installed from Debian's packages when we are root. When it can be neither found
# nor installed this says so and fails: the test would fail too, naming the same cause.

chromium_log() { printf '\033[2m[chromium] %s\033[0m\n' "$*" >&2; }

ensure_chromium() {
  if [ -n "${CHROMIUM:-}" ]; then
    chromium_log "using CHROMIUM=$CHROMIUM"
    return 0
  fi
  local found
  found=$(command -v chromium || command -v chromium-browser || true)
  if [ -z "$found" ]; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "chromium is missing (the status page's test reads the page in it); install Debian's 'chromium' package or set CHROMIUM." >&2
      return 1
    fi
    chromium_log "installing chromium from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq chromium >/dev/null
    found=$(command -v chromium || true)
    if [ -z "$found" ]; then
      echo "apt-get installed no chromium binary" >&2
      return 1
    fi
  fi
  export CHROMIUM="$found"
  chromium_log "$("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
}
