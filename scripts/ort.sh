#!/usr/bin/env bash
# Make sure the ONNX Runtime shared library is present and print its path.
#
#   scripts/ort.sh          fetch when missing, then print the library's absolute path
#
# The library comes from the PyPI wheel onnxruntime==$ORT_VERSION (the file is the same in every
# CPython manylinux wheel, so one for Python 3.11 is fetched whatever python3 is here), because
# PyPI is reachable from build machines and ort's own download CDN is not. It is unpacked under
# .local/ort (git-ignored). ORT_DYLIB_PATH, when set to an existing file, wins and nothing is fetched.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
ORT_VERSION=${ORT_VERSION:-1.31.1}
DEST=$REPO/.local/ort
LIB=$DEST/libonnxruntime.so.$ORT_VERSION

log() { printf 'ort: %s\n' "$*" >&2; }
die() { printf 'ort: error: %s\n' "$*" >&2; exit 1; }

if [[ -n ${ORT_DYLIB_PATH:-} && -f $ORT_DYLIB_PATH ]]; then
    printf '%s\n' "$ORT_DYLIB_PATH"
    exit 0
fi
if [[ ! -f $LIB ]]; then
    command -v python3 >/dev/null 2>&1 || die "python3 is needed to fetch onnxruntime from PyPI"
    python3 -m pip --version >/dev/null 2>&1 || die "pip is needed to fetch onnxruntime from PyPI (Debian: apt-get install python3-pip)"
    mkdir -p "$DEST"
    wheels=$(mktemp -d)
    trap 'rm -rf "$wheels"' EXIT
    log "fetching onnxruntime==$ORT_VERSION from PyPI (library only)"
    python3 -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.11 --platform manylinux_2_28_x86_64 \
        --dest "$wheels" "onnxruntime==$ORT_VERSION" >&2
    wheel=$(ls "$wheels"/onnxruntime-*.whl)
    # Unpack just the library, through a temporary name so a half-written file is never used.
    python3 - "$wheel" "$LIB" <<'PY'
import os, shutil, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith("onnxruntime/capi/libonnxruntime.so")]
    if not names:
        sys.exit(f"no libonnxruntime.so in {wheel}")
    tmp = dest + ".tmp"
    with z.open(sorted(names, key=len)[-1]) as src, open(tmp, "wb") as out:
        shutil.copyfileobj(src, out)
    os.replace(tmp, dest)
PY
    log "installed $LIB"
fi
printf '%s\n' "$LIB"
