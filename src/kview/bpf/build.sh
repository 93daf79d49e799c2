#!/bin/sh
# Builds kview.bpf.o from kview.bpf.c, the object nsproxyfs loads (see
# docs/kernel-view.md). The object is checked in, so building nsproxyfs
# needs no clang; CI runs `build.sh --check`, which rebuilds it and fails
# if the checked-in object differs from what its source compiles to.
#
# Reproducible: run from this directory with relative names, DWARF
# stripped (only the BTF the loader needs stays), with the clang of the
# CI's Debian release (`apt-get install clang llvm`).
set -eu
cd "$(dirname "$0")"
CLANG=${CLANG:-clang}
STRIP=${STRIP:-llvm-strip}
out=kview.bpf.o
if [ "${1:-}" = --check ]; then
    out=$(mktemp /tmp/kview.XXXXXX.o)
    trap 'rm -f "$out"' EXIT
fi
# The source's directory is recorded as `.`, so the object is the same
# wherever the tree is checked out (and names no local path).
"$CLANG" -O2 -g -target bpf -fdebug-prefix-map="$PWD"=. -c kview.bpf.c -o "$out"
"$STRIP" -g "$out"
if [ "${1:-}" = --check ]; then
    if ! cmp -s "$out" kview.bpf.o; then
        echo "kview.bpf.o does not match kview.bpf.c ($("$CLANG" --version | head -1)): run $0 and commit" >&2
        exit 1
    fi
    echo "kview.bpf.o matches kview.bpf.c"
fi
