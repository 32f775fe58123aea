#!/usr/bin/env bash
# Installs the Debian packages drt needs to build, test and plot, then fetches the data files
# (scripts/fetch-data.sh). Idempotent: it asks dpkg what is already there and runs apt-get
# (update + install) only for what is missing.
#
#   bash scripts/install-deps.sh
#
# Required packages make the script fail when they cannot be installed; optional ones only warn.
# Never add libthrust-dev or libcub-dev: Debian's Thrust 1.17 shadows the CUDA toolkit's CCCL
# in g++ translation units (see docs/ecosystem notes).
set -euo pipefail

scripts_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The GPT-2 vocabulary and the tokenizer's golden tests: needed by the tests, so a failure is fatal.
fetch_data() {
  bash "$scripts_dir/fetch-data.sh"
}

# pkg-config + libpcre2-dev: the GPT-2 tokenizer's regex (CMake finds PCRE2 through pkg-config).
# bible-kjv: the King James Bible (public domain) and its `bible` reader, which fetch-data.sh uses
# to extract data/corpus/kjv.txt (the text file is compressed; only the reader can expand it).
# gnuplot-nox: the main job's PNG plots (drt lengthgen) and plots of benchmark CSV files.
REQUIRED=(build-essential cmake pkg-config libeigen3-dev nlohmann-json3-dev libpcre2-dev libgtest-dev libbenchmark-dev bible-kjv gnuplot-nox)
# ninja-build: faster incremental builds (the scripts fall back to make without it).
OPTIONAL=(ninja-build)

is_installed() {
  [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" == "install ok installed" ]]
}

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: not a Debian/Ubuntu system; install these yourself: ${REQUIRED[*]} (optional: ${OPTIONAL[*]})"
  fetch_data
  exit 0
fi

missing_required=()
missing_optional=()
for package in "${REQUIRED[@]}"; do
  if is_installed "$package"; then echo "  ok       $package"; else echo "  missing  $package"; missing_required+=("$package"); fi
done
for package in "${OPTIONAL[@]}"; do
  if is_installed "$package"; then echo "  ok       $package (optional)"; else echo "  missing  $package (optional)"; missing_optional+=("$package"); fi
done

if (( ${#missing_required[@]} + ${#missing_optional[@]} == 0 )); then
  echo "install-deps: all packages present"
  fetch_data
  exit 0
fi

# How to become root: directly, or through sudo (non-interactive when there is no terminal, so
# that CI fails at once instead of waiting for a password).
as_root=()
if (( EUID != 0 )); then
  if command -v sudo >/dev/null 2>&1; then
    if [[ -t 0 ]]; then as_root=(sudo); else as_root=(sudo -n); fi
  else
    echo "install-deps: not root and no sudo. As root, run:" >&2
    missing=("${missing_required[@]}" "${missing_optional[@]}")
    echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
    (( ${#missing_required[@]} == 0 )) && { fetch_data; exit 0; }
    exit 1
  fi
fi

# apt's own output goes to a log that is shown only when a step fails.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
apt_get() {
  if ! "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 "$@" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    return 1
  fi
}

to_install=("${missing_required[@]}" "${missing_optional[@]}")
echo "install-deps: apt-get update, then installing: ${to_install[*]}"
apt_get update || echo "install-deps: warning: apt-get update failed; trying the package lists at hand" >&2
if (( ${#missing_required[@]} > 0 )); then
  apt_get install -y --no-install-recommends "${missing_required[@]}"
fi
if (( ${#missing_optional[@]} > 0 )); then
  apt_get install -y --no-install-recommends "${missing_optional[@]}" ||
    echo "install-deps: warning: could not install optional ${missing_optional[*]}" >&2
fi

for package in "${to_install[@]}"; do
  if is_installed "$package"; then echo "  installed $package"; else echo "  MISSING  $package"; fi
done
for package in "${missing_required[@]}"; do
  is_installed "$package" || { echo "install-deps: required package $package is still missing" >&2; exit 1; }
done

fetch_data
