# Shared by scripts/start and scripts/test: a Python >= 3.11 virtual environment in .venv.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
  echo "need root (or sudo) to run: $*" >&2; return 1; fi; }

apt_install() {
  # Installs Debian packages that are missing; apt-get update runs once, and only if needed.
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "usertrail needs Python 3.11 or newer as \`$PYTHON\`" >&2; exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! "$PYTHON" -m venv .venv 2>/dev/null; then
    # Debian's python3 ships venv separately.
    rm -rf .venv
    apt_install python3-venv
    "$PYTHON" -m venv .venv
  fi
  .venv/bin/python -m pip install -q --upgrade pip
fi

install_usertrail() {
  # Installs usertrail into .venv with the given extras spec (`.`, `.[test]`). Where Debian packages can
  # be installed, the MaxMind reader is built with its C extension (libmaxminddb): a city lookup then
  # takes ~6 us instead of ~70 us. Without it the pure-Python reader gives the same answers, slower.
  apt_install libmaxminddb-dev 2>/dev/null || echo "note: libmaxminddb-dev not installed; geolocation uses the pure-Python reader" >&2
  .venv/bin/python -m pip install -q -e "$1"
  if dpkg -s libmaxminddb-dev >/dev/null 2>&1 && ! .venv/bin/python -c 'import maxminddb.extension' 2>/dev/null; then
    # A wheel built (and cached by pip) before libmaxminddb was there lacks the extension: build it again.
    local version
    version=$(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("maxminddb"))')
    .venv/bin/python -m pip install -q --force-reinstall --no-deps --no-cache-dir --no-binary maxminddb "maxminddb==$version"
  fi
}
