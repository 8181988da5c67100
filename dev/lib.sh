# Shared setup for dev/test and dev/demo: installs and starts what mesbak's
# tests and demo need on a Debian 12 machine, as root, idempotently.
# Sourced, not executed.

set -euo pipefail

MESBAK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MESBAK_STATE=${MESBAK_STATE:-/var/lib/mesbak-dev}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_root() {
    [ "$(id -u)" = 0 ] || die "run this as root: it installs packages and starts dockerd"
}

# Debian packages the tests and the demo use.
MESBAK_PACKAGES=(
    docker.io busybox-static dbus postgresql-15 postgresql-client-15
    python3 python3-cryptography libssl-dev pkg-config gcc zstd
    debootstrap lintian rpm ca-certificates curl util-linux procps
    python3-aiosmtpd openssl prometheus man-db
    rclone systemd faketime
)

ensure_packages() {
    local missing=() pkg
    for pkg in "${MESBAK_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
            || missing+=("$pkg")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        # The PostgreSQL server package must not start a cluster on this host:
        # tests run their own servers in containers.
        mkdir -p /etc/postgresql-common
        [ -e /etc/postgresql-common/createcluster.conf ] ||
            echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.conf
        # Only promtool of `prometheus` is used: its server must not start
        # (nor any other service) while packages are installed here.
        local policy=/usr/sbin/policy-rc.d added_policy=
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
        fi
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
        [ -z "$added_policy" ] || rm -f "$policy"
    fi
}

ensure_dockerd() {
    if docker info >/dev/null 2>&1; then return; fi
    say "starting dockerd (no bridge, no iptables)"
    mkdir -p /var/log
    nohup dockerd --bridge=none --iptables=false >>/var/log/mesbak-dockerd.log 2>&1 &
    local i
    for i in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return
        sleep 0.5
    done
    tail -20 /var/log/mesbak-dockerd.log >&2 || true
    die "dockerd did not answer within 30 s (log: /var/log/mesbak-dockerd.log)"
}

# Groups and users the authorization tests use: group `mesbak` may talk to
# the agent, `mesbak-operator` is in it, `mesbak-outsider` is not.
ensure_users() {
    getent group mesbak >/dev/null || groupadd --system mesbak
    id mesbak-operator >/dev/null 2>&1 ||
        useradd --system --no-create-home --shell /usr/sbin/nologin -G mesbak mesbak-operator
    id mesbak-outsider >/dev/null 2>&1 ||
        useradd --system --no-create-home --shell /usr/sbin/nologin mesbak-outsider
}

# Builds image $1 from the tar stream a function $2 writes to stdout, unless
# an image with the same recipe hash already exists. Extra args: --change.
import_image() {
    local name=$1 producer=$2; shift 2
    local recipe
    # The recipe: the producer, the shared pieces producers use, the changes.
    recipe=$( { declare -f "$producer" postgres_entrypoint; printf '%s\n' "$@"; } | sha256sum | cut -c1-16)
    if [ "$(docker image inspect -f '{{index .Config.Labels "mesbak.recipe"}}' "$name" 2>/dev/null)" = "$recipe" ]; then
        return
    fi
    say "building image $name"
    local changes=() c
    for c in "$@"; do changes+=(--change "$c"); done
    if ! "$producer" | docker import "${changes[@]}" --change "LABEL mesbak.recipe=$recipe" - "$name" >/dev/null; then
        docker rmi -f "$name" >/dev/null 2>&1 || true
        die "could not build image $name"
    fi
}

# The entry point both PostgreSQL images share (as the official image's):
# first start initialises the cluster from POSTGRES_USER, _PASSWORD and _DB;
# `timescaledb` is preloaded when the server has it.
postgres_entrypoint() {
    cat <<'E'
#!/bin/sh
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown -R postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    user=${POSTGRES_USER:-postgres}
    pwfile=$(mktemp)
    printf '%s\n' "${POSTGRES_PASSWORD:-postgres}" >"$pwfile"
    initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -A trust --auth-host=scram-sha-256 \
        -E UTF8 --locale=C.UTF-8 >/dev/null
    rm -f "$pwfile"
    db=${POSTGRES_DB:-$user}
    # As the official image: the initial database and extensions are made
    # by a temporary server (single-user mode would give them OIDs that
    # pg_dump takes for built-in objects and leaves out of every dump).
    # Its socket is private, so nobody takes it for the real server.
    PGHOST=$(mktemp -d)
    export PGHOST
    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -c unix_socket_directories=$PGHOST" start >/dev/null
    if [ "$db" != postgres ]; then
        psql -X -q -v ON_ERROR_STOP=1 -U "$user" -d postgres -c "CREATE DATABASE \"$db\" OWNER \"$user\""
    fi
    # As timescale/timescaledb does: preloaded, in template1 and in the
    # database; telemetry off (it would call out of the machine).
    if [ -e "$(pg_config --pkglibdir)/timescaledb.so" ]; then
        printf "shared_preload_libraries = 'timescaledb'\ntimescaledb.telemetry_level = off\n" \
            >>"$PGDATA/postgresql.conf"
        pg_ctl -D "$PGDATA" -w restart >/dev/null
        for target in template1 "$db"; do
            psql -X -q -v ON_ERROR_STOP=1 -U "$user" -d "$target" -c "CREATE EXTENSION IF NOT EXISTS timescaledb"
        done
    fi
    pg_ctl -D "$PGDATA" -w -m fast stop >/dev/null
    rmdir "$PGHOST"
    unset PGHOST
fi
# As the official image: `postgres -c ...` (the image's usual command with
# options) and bare options both run the server with those options.
if [ "${1:-}" = postgres ]; then shift; fi
# docker stop sends SIGTERM, which PostgreSQL takes as a "smart" shutdown that
# waits for clients; answer it with a fast shutdown as the official image does.
postgres -c listen_addresses=127.0.0.1 -c unix_socket_directories=/var/run/postgresql "$@" &
pid=$!
trap 'kill -INT "$pid"' TERM INT
while kill -0 "$pid" 2>/dev/null; do wait "$pid" || true; done
wait "$pid" 2>/dev/null || true
E
}

# A PostgreSQL 15 image without a registry: a skeleton root that runs the
# host's PostgreSQL from /usr, bind-mounted read-only (`-v /usr:/usr:ro`).
# Entry point behaves like the official image: POSTGRES_USER, _PASSWORD, _DB,
# PGPORT; local connections trusted, TCP on 127.0.0.1 with scram.
postgres_rootfs() {
    local root
    root=$(mktemp -d)
    (
        cd "$root"
        mkdir -p usr etc tmp var/run/postgresql var/lib/postgresql/data dev proc sys
        chmod 1777 tmp
        ln -s usr/bin bin; ln -s usr/sbin sbin; ln -s usr/lib lib; ln -s usr/lib64 lib64
        cat >etc/passwd <<'P'
root:x:0:0:root:/root:/bin/sh
postgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
P
        cat >etc/group <<'G'
root:x:0:
postgres:x:999:
nogroup:x:65534:
G
        printf 'passwd: files\ngroup: files\nhosts: files\n' >etc/nsswitch.conf
        cp /etc/ld.so.cache etc/ld.so.cache
        chown -R 999:999 var/run/postgresql var/lib/postgresql
        chmod 700 var/lib/postgresql/data
        postgres_entrypoint >docker-entrypoint.sh
        chmod 755 docker-entrypoint.sh
    )
    tar -C "$root" --numeric-owner -c .
    rm -rf "$root"
}

# busybox-static with every applet linked: volume helpers, a stand-in
# Ignition gateway.
busybox_rootfs() {
    local root
    root=$(mktemp -d)
    (
        cd "$root"
        mkdir -p bin etc tmp
        chmod 1777 tmp
        cp /bin/busybox bin/busybox
        for applet in $(bin/busybox --list); do
            [ -e "bin/$applet" ] || ln -s busybox "bin/$applet"
        done
        printf 'root:x:0:0:root:/root:/bin/sh\n' >etc/passwd
        printf 'root:x:0:\n' >etc/group
    )
    tar -C "$root" --numeric-owner -c .
    rm -rf "$root"
}

# The plant's database image, `timescale/timescaledb:latest-pg17`, built
# without a registry: a Debian 13 root (debootstrap) with PostgreSQL 17 and
# TimescaleDB 2.19 (Apache edition), whose entry point behaves like the
# official image's: POSTGRES_USER, _PASSWORD, _DB, PGPORT; local (socket)
# connections trusted, TCP on 127.0.0.1 with scram; `timescaledb` preloaded
# and its telemetry off.
timescaledb_rootfs() {
    local root mirror
    root=$(mktemp -d)
    mirror=$(apt_mirror)
    debootstrap --variant=minbase \
        --include=postgresql-17,postgresql-17-timescaledb,postgresql-client-17 \
        trixie "$root" "$mirror" >/dev/null ||
        { rm -rf "$root"; return 1; }
    (
        cd "$root"
        # The package made a cluster and its configuration: the entry point
        # makes its own, as the official image does.
        rm -rf etc/postgresql/17 var/lib/postgresql/17 var/cache/apt/archives/*.deb \
            var/lib/apt/lists/* usr/share/doc usr/share/man usr/share/locale
        mkdir -p var/run/postgresql var/lib/postgresql/data
        chown -R postgres:postgres var/run/postgresql var/lib/postgresql
        chmod 700 var/lib/postgresql/data
        postgres_entrypoint >docker-entrypoint.sh
        chmod 755 docker-entrypoint.sh
    )
    tar -C "$root" --numeric-owner -c .
    rm -rf "$root"
}

ensure_images() {
    import_image mesbak-test/postgres:15 postgres_rootfs \
        'ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/bin:/usr/bin:/bin' \
        'ENV PGDATA=/var/lib/postgresql/data' \
        'ENV LANG=C.UTF-8' \
        'VOLUME /var/lib/postgresql/data' \
        'ENTRYPOINT ["/docker-entrypoint.sh"]'
    import_image mesbak-test/timescaledb:pg17 timescaledb_rootfs \
        'ENV PATH=/usr/lib/postgresql/17/bin:/usr/local/bin:/usr/bin:/bin' \
        'ENV PGDATA=/var/lib/postgresql/data' \
        'ENV LANG=C.UTF-8' \
        'VOLUME /var/lib/postgresql/data' \
        'ENTRYPOINT ["/docker-entrypoint.sh"]'
    import_image mesbak-test/busybox busybox_rootfs \
        'ENV PATH=/bin' \
        'CMD ["sh"]'
}

# A clean Debian 12 root for the package install test (debootstrap from the
# mirror apt already uses).
debian_rootfs() {
    local root mirror
    root=$(mktemp -d)
    mirror=$(apt_mirror)
    debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null ||
        { rm -rf "$root"; return 1; }
    tar -C "$root" --numeric-owner -c .
    rm -rf "$root"
}

apt_mirror() {
    local m files
    files=$(ls /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    m=$( [ -n "$files" ] && grep -hoE '^(deb|URIs:)[^#]*https?://[^ ]+' $files 2>/dev/null \
        | grep -oE 'https?://[^ ]+' | grep -E '/debian/?$' | grep -v security | head -1 || true)
    echo "${m:-http://deb.debian.org/debian}"
}

ensure_debian_image() {
    import_image mesbak-test/debian:12 debian_rootfs 'CMD ["/bin/bash"]'
}

# A Debian 12 root that boots systemd as PID 1 in a container (the booted
# package test, tests/tests/packaging.rs): systemd, dbus, and everything
# the .deb depends on, so the package installs with `--network none`;
# curl for the health endpoint; rpm, to install the .rpm in a root where
# rpm works.
debian_systemd_rootfs() {
    local root mirror
    root=$(mktemp -d)
    mirror=$(apt_mirror)
    debootstrap --variant=minbase \
        --include=systemd,systemd-sysv,dbus,libssl3,curl,rpm \
        bookworm "$root" "$mirror" >/dev/null ||
        { rm -rf "$root"; return 1; }
    (
        cd "$root"
        rm -rf var/cache/apt/archives/*.deb var/lib/apt/lists/* \
            usr/share/doc usr/share/man usr/share/locale
        # Nothing a test container needs that would only fail or wait in it.
        for unit in systemd-networkd-wait-online.service getty@tty1.service \
            apt-daily.timer apt-daily-upgrade.timer; do
            ln -sf /dev/null "etc/systemd/system/$unit"
        done
    )
    tar -C "$root" --numeric-owner -c .
    rm -rf "$root"
}

ensure_systemd_image() {
    import_image mesbak-test/debian-systemd:12 debian_systemd_rootfs \
        'ENV container=docker' \
        'CMD ["/lib/systemd/systemd"]'
}

# Off-site test servers, cached under $MESBAK_STATE/tools (a second run
# costs nothing): s3s-fs (an S3 server that checks multipart uploads and
# checksums; later versions need a newer rustc) and Azurite (Microsoft's
# Azure Blob emulator). The tests start them on loopback ports themselves,
# azurite-blob always with --disableTelemetry.
MESBAK_TOOLS=$MESBAK_STATE/tools
S3S_FS_VERSION=0.14.1
AZURITE_VERSION=3.35.0

ensure_offsite_servers() {
    mkdir -p "$MESBAK_TOOLS"
    if [ "$("$MESBAK_TOOLS/bin/s3s-fs" --version 2>/dev/null)" != "s3s-fs $S3S_FS_VERSION" ]; then
        say "building s3s-fs $S3S_FS_VERSION (once)"
        cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked \
            --root "$MESBAK_TOOLS" --target-dir "$MESBAK_STATE/s3s-fs-build" >/dev/null 2>&1 ||
            die "could not build s3s-fs (cargo install s3s-fs --version $S3S_FS_VERSION --features binary --locked)"
        rm -rf "$MESBAK_STATE/s3s-fs-build"
    fi
    if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
        say "installing nodejs and npm"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    fi
    local azurite=$MESBAK_TOOLS/azurite
    if [ "$(node -p "require('$azurite/node_modules/azurite/package.json').version" 2>/dev/null)" != "$AZURITE_VERSION" ]; then
        say "installing azurite $AZURITE_VERSION (once)"
        mkdir -p "$azurite"
        npm install --prefix "$azurite" --no-audit --no-fund --no-update-notifier \
            "azurite@$AZURITE_VERSION" >/dev/null 2>&1 ||
            die "could not install azurite@$AZURITE_VERSION from npm"
    fi
}
