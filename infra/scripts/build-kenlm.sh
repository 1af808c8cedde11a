#!/usr/bin/env bash
# Builds KenLM's `lmplz` (estimates an ARPA n-gram model) and `build_binary` (ARPA -> mmap-able
# binary) from the kenlm source package on PyPI, which holds the full KenLM tree; the kenlm wheel
# only has the Python query module. Installs both into the given folder (default: .venv/bin, next
# to the interpreter, where tasks/curate/quality.py looks for them).
#
# Idempotent: does nothing when both binaries exist and run. The source package and the build tree
# are cached (KENLM_CACHE, default ~/.cache/llamaline/kenlm), so a rebuild only recompiles.
# Needs the Debian packages that infra/scripts/system-deps.sh installs: build-essential cmake
# libboost-program-options-dev libboost-system-dev libboost-thread-dev libboost-test-dev
# zlib1g-dev libbz2-dev liblzma-dev.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
prefix="${1:-$repo_root/.venv/bin}"
python="${PYTHON_FOR_KENLM:-$repo_root/.venv/bin/python}"
cache="${KENLM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llamaline/kenlm}"
jobs="${KENLM_BUILD_JOBS:-2}"

binaries_run() {
    # Both print their usage and exit 1 on --help; a missing shared library prints a loader error.
    local usage
    usage="$("$prefix/lmplz" --help 2>&1 || true)"
    [[ "$usage" == *"Builds unpruned language models"* ]] || return 1
    usage="$("$prefix/build_binary" --help 2>&1 || true)"
    [[ "$usage" == *"Usage:"* ]]
}

if [ -x "$prefix/lmplz" ] && [ -x "$prefix/build_binary" ] && binaries_run; then
    exit 0
fi

for tool in cmake make c++; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "build-kenlm: '$tool' not found; run infra/scripts/system-deps.sh (make system-deps) first" >&2
        exit 1
    fi
done
if [ ! -x "$python" ]; then
    echo "build-kenlm: no Python at $python (set PYTHON_FOR_KENLM, or create the venv first)" >&2
    exit 1
fi

# The binaries come from the same KenLM release as the Python module that reads their models.
version="${KENLM_VERSION:-$("$python" -c 'import importlib.metadata as m; print(m.version("kenlm"))' 2>/dev/null || echo 0.3.0)}"
sdist="$cache/kenlm-$version.tar.gz"
source_dir="$cache/kenlm-$version"
build_dir="$cache/build-$version"
mkdir -p "$cache" "$prefix"

if [ ! -f "$sdist" ]; then
    echo "build-kenlm: downloading the kenlm $version source package"
    # --no-build-isolation: pip only reads the package's metadata; with isolation it would build
    # the build requirements (cmake) from source too.
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps --no-build-isolation \
        --no-binary kenlm "kenlm==$version" -d "$cache.download"
    mv "$cache.download/kenlm-$version.tar.gz" "$sdist"
    rm -rf "$cache.download"
fi
if [ ! -f "$source_dir/CMakeLists.txt" ]; then
    rm -rf "$source_dir" "$source_dir.unpack"
    mkdir -p "$source_dir.unpack"
    tar -xzf "$sdist" -C "$source_dir.unpack"
    mv "$source_dir.unpack/kenlm-$version" "$source_dir"
    rm -rf "$source_dir.unpack"
fi

echo "build-kenlm: building lmplz and build_binary (kenlm $version, $jobs jobs)"
started=$SECONDS
if ! cmake -S "$source_dir" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release >"$cache/cmake.log" 2>&1; then
    tail -20 "$cache/cmake.log" >&2
    echo "build-kenlm: cmake failed (full log: $cache/cmake.log); the Boost, zlib, bz2 and lzma" \
        "development packages come from infra/scripts/system-deps.sh" >&2
    exit 1
fi
cmake --build "$build_dir" --target lmplz build_binary -j "$jobs" >"$cache/make.log" 2>&1 || {
    tail -30 "$cache/make.log" >&2
    echo "build-kenlm: compilation failed (full log: $cache/make.log)" >&2
    exit 1
}
for binary in lmplz build_binary; do
    # Copy then rename: a concurrent reader never sees a half-written executable.
    install -m 755 "$build_dir/bin/$binary" "$prefix/.$binary.tmp"
    mv -f "$prefix/.$binary.tmp" "$prefix/$binary"
done
binaries_run || { echo "build-kenlm: the built binaries do not run" >&2; exit 1; }
echo "build-kenlm: installed lmplz and build_binary into $prefix in $((SECONDS - started)) s"
