#!/usr/bin/env bash
# Debian packages the platform needs from the system: a C++ toolchain, compression headers and
# Boost for building kenlm's Python module and its lmplz/build_binary programs
# (infra/scripts/build-kenlm.sh). Installs only what is missing; explains what to do without root.
set -euo pipefail

packages=(
    build-essential cmake zlib1g-dev libbz2-dev liblzma-dev
    libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev
)

if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "system-deps: not a Debian-based system; install the equivalents of: ${packages[*]}" >&2
    exit 0
fi

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    echo "system-deps: missing Debian packages: ${missing[*]}" >&2
    echo "system-deps: this step needs root. Run once:  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "system-deps: installing ${missing[*]}"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
