#!/bin/sh
# Installs nsproxyfs: the daemon, the mount(8) helper, the systemd unit and
# the man page. After `cargo build --release`, as root:
#
#     ./mount-helper/install.sh [--uninstall] [VAR=VALUE ...]
#
# --uninstall removes the installed files and the directories the install
# made (listed in $PREFIX/share/nsproxyfs/installed-dirs) if they are empty.
#
# VAR=VALUE arguments (or the same variables in the environment):
#     DESTDIR    staging root for packaging; paths inside the files do not
#                include it (default: empty)
#     PREFIX     /usr/local
#     SBINDIR    $PREFIX/sbin                  the nsproxyfs command
#     HELPERDIR  /sbin                         mount.fuse.nsproxyfs; mount(8)
#                                              looks for helpers in /sbin only
#     UNITDIR    $PREFIX/lib/systemd/system    nsproxyfs.service
#     MANDIR     $PREFIX/share/man             man8/nsproxyfs.8
#     BINARY     target/release/nsproxyfs of this source tree
set -eu

die() {
    echo "install.sh: $*" >&2
    exit 1
}

uninstall=
for arg in "$@"; do
    case "$arg" in
        --uninstall) uninstall=1 ;;
        DESTDIR=* | PREFIX=* | SBINDIR=* | HELPERDIR=* | UNITDIR=* | MANDIR=* | BINARY=*)
            name=${arg%%=*}
            eval "$name=\${arg#*=}" ;;
        -h | --help) sed -n '2,22s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) die "unknown argument $arg (see --help)" ;;
    esac
done

src=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
SBINDIR=${SBINDIR:-$PREFIX/sbin}
HELPERDIR=${HELPERDIR:-/sbin}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
MANDIR=${MANDIR:-$PREFIX/share/man}
BINARY=${BINARY:-$src/target/release/nsproxyfs}

for dir in "$PREFIX" "$SBINDIR" "$HELPERDIR" "$UNITDIR" "$MANDIR"; do
    case "$dir" in
        /*) ;;
        *) die "$dir: directories must be absolute" ;;
    esac
    case "$dir" in
        *[\|\&\\]*) die "$dir: |, & and \\ are not supported in directory names" ;;
    esac
done

daemon=$SBINDIR/nsproxyfs
# The directories this script made, one a line (without DESTDIR), so that
# --uninstall removes them again, and only them.
dirlist=$PREFIX/share/nsproxyfs/installed-dirs
# Every file this script installs.
set -- "$DESTDIR$daemon" "$DESTDIR$HELPERDIR/mount.fuse.nsproxyfs" \
    "$DESTDIR$UNITDIR/nsproxyfs.service" "$DESTDIR$MANDIR/man8/nsproxyfs.8"

if [ -n "$uninstall" ]; then
    for f in "$@"; do
        if [ -e "$f" ]; then
            rm -f "$f"
            echo "removed $f"
        fi
    done
    if [ -f "$DESTDIR$dirlist" ]; then
        made=$(cat "$DESTDIR$dirlist")
        rm -f "$DESTDIR$dirlist"
        # Deepest first; a directory that holds something else stays.
        printf '%s\n' "$made" | sort -r | while IFS= read -r d; do
            if [ -n "$d" ] && rmdir "$DESTDIR$d" 2>/dev/null; then
                echo "removed $DESTDIR$d/"
            fi
        done
    fi
    exit 0
fi

[ -x "$BINARY" ] || die "$BINARY is missing: build it first with cargo build --release"

# Copies $1 to $3 with mode $2, the daemon's installed path filled in.
fill() {
    install -d "$(dirname "$3")"
    sed "s|@NSPROXYFS@|$daemon|g" "$1" >"$3.new"
    chmod "$2" "$3.new"
    mv -f "$3.new" "$3"
}

# Prints $1 and each of its parents that do not exist yet, without DESTDIR.
missing() {
    d=$1
    while [ "$d" != / ] && [ ! -d "$DESTDIR$d" ]; do
        echo "$d"
        d=$(dirname "$d")
    done
}
made=$(for d in "$SBINDIR" "$HELPERDIR" "$UNITDIR" "$MANDIR/man8" "$(dirname "$dirlist")"; do
    missing "$d"
done)
install -d "$DESTDIR$SBINDIR" "$DESTDIR$MANDIR/man8" "$DESTDIR$(dirname "$dirlist")"
{
    [ -f "$DESTDIR$dirlist" ] && cat "$DESTDIR$dirlist"
    [ -n "$made" ] && printf '%s\n' "$made"
} | awk 'NF && !seen[$0]++' >"$DESTDIR$dirlist.new"
mv -f "$DESTDIR$dirlist.new" "$DESTDIR$dirlist"
install -m 755 "$BINARY" "$DESTDIR$daemon"
fill "$src/mount-helper/mount.fuse.nsproxyfs" 755 "$DESTDIR$HELPERDIR/mount.fuse.nsproxyfs"
fill "$src/mount-helper/nsproxyfs.service.in" 644 "$DESTDIR$UNITDIR/nsproxyfs.service"
install -m 644 "$src/docs/nsproxyfs.8" "$DESTDIR$MANDIR/man8/nsproxyfs.8"
for f in "$@"; do
    echo "installed $f"
done

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    echo "then: systemctl daemon-reload && systemctl enable --now nsproxyfs"
fi
