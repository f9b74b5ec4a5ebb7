#!/usr/bin/env bash
# services.sh up|down|status — the real services of Agate's integration tests, on loopback.
#
#   up      Use PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 if they answer;
#           otherwise install them with apt-get if missing and start them, without systemd.
#           Then create the role and database the tests use, and print on stdout the settings
#           to use (KEY=value lines; nothing is exported):
#             AGATE_TEST_POSTGRES=postgres://agate:agate@127.0.0.1:5432/agate_test?sslmode=disable
#             AGATE_TEST_REDIS=redis://127.0.0.1:6379/0
#             AGATE_TEST_OPENFGA_BIN=<GOPATH>/bin/openfga
#           OpenFGA is only installed (go install, minutes when cold), never started: its tests
#           start and stop private servers of their own from that binary.
#   down    Stop what `up` started, and only that: servers that were already running are left alone.
#   status  Print each service's state; exit 1 if one is down.
#
# Idempotent: run `up` as often as you like. Progress goes to stderr. State (markers of what
# this script started, logs, and its own PostgreSQL cluster if it needs one) lives in
# /var/lib/agate (as root) or ~/.local/state/agate, or AGATE_STATE_DIR. Ports: AGATE_PG_PORT,
# AGATE_REDIS_PORT.
set -euo pipefail

PG_PORT=${AGATE_PG_PORT:-5432}
REDIS_PORT=${AGATE_REDIS_PORT:-6379}
PG_ROLE=agate PG_PASSWORD=agate PG_DB=agate_test
PG_DSN="postgres://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_DB?sslmode=disable"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"

if [ "$(id -u)" -eq 0 ]; then
	ROOT=1 SUDO=() BASE=/var/lib/agate
else
	ROOT=0 SUDO=(sudo -n) BASE=${XDG_STATE_HOME:-$HOME/.local/state}/agate
fi
BASE=${AGATE_STATE_DIR:-$BASE}
STATE=$BASE/services # markers: postgres.started, redis.started; redis pid and log
PG_OWN=$BASE/pg      # this script's own cluster, when the machine has none

log() { echo "services: $*" >&2; }
die() { log "$*"; exit 1; }

# ---- helpers

# as_pg runs a command as the PostgreSQL OS user (root), or as the caller.
as_pg() {
	if [ "$ROOT" = 1 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

apt_install() {
	command -v apt-get >/dev/null || die "$* missing and apt-get not available: install $* yourself"
	if [ "$ROOT" = 0 ] && ! sudo -n true 2>/dev/null; then
		die "$* missing: run as root (or with passwordless sudo) to install it"
	fi
	log "installing $* with apt-get"
	export DEBIAN_FRONTEND=noninteractive
	"${SUDO[@]}" apt-get update -qq >&2
	"${SUDO[@]}" apt-get install -y -qq "$@" >&2
}

# tcp_probe HOST PORT: something accepts connections there.
tcp_probe() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# ---- PostgreSQL

pg_bindir() {
	local d
	d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
	if [ -z "$d" ] && command -v postgres >/dev/null; then d=$(dirname "$(command -v postgres)"); fi
	[ -n "$d" ] && [ -x "$d/initdb" ] && echo "$d"
}

pg_ready() {
	if command -v pg_isready >/dev/null; then
		pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 3
	else
		tcp_probe 127.0.0.1 "$PG_PORT"
	fi
}

pg_wait() {
	for _ in $(seq 1 60); do pg_ready && return 0; sleep 0.5; done
	return 1
}

# pg_cluster prints "VERSION NAME" of a Debian cluster on PG_PORT, if there is one.
pg_cluster() {
	command -v pg_lsclusters >/dev/null || return 0
	pg_lsclusters --no-header 2>/dev/null | awk -v port="$PG_PORT" '$3 == port { print $1, $2; exit }'
}

pg_start() {
	local bindir cluster
	bindir=$(pg_bindir || true)
	if [ -z "$bindir" ]; then
		apt_install postgresql
		bindir=$(pg_bindir) || die "postgresql installed, but no server binaries found"
		# The package may have started its cluster already.
		if pg_wait; then log "postgres: the installed cluster is running"; return; fi
	fi
	cluster=$(pg_cluster)
	if [ -n "$cluster" ]; then
		log "postgres: starting cluster ${cluster/ //} (pg_ctlcluster)"
		# shellcheck disable=SC2086 # two words: version and name
		"${SUDO[@]}" pg_ctlcluster $cluster start >&2 9>&-
		echo "cluster $cluster" >"$STATE/postgres.started"
	else
		local data=$PG_OWN/data
		mkdir -p "$PG_OWN"
		if [ "$ROOT" = 1 ]; then
			id postgres >/dev/null 2>&1 || die "no postgres OS user to run the server as"
			chown postgres: "$PG_OWN"
		fi
		if [ ! -f "$data/PG_VERSION" ]; then
			log "postgres: creating a cluster in $data"
			as_pg "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --locale=C >&2
		fi
		log "postgres: starting $data on 127.0.0.1:$PG_PORT"
		as_pg "$bindir/pg_ctl" -D "$data" -l "$PG_OWN/log" -w -t 60 \
			-o "-p $PG_PORT -k $PG_OWN -c listen_addresses=127.0.0.1" start >&2 9>&- # the server must not hold the lock
		echo "pgctl $bindir $data" >"$STATE/postgres.started"
	fi
	pg_wait || die "postgres did not come up on 127.0.0.1:$PG_PORT"
}

# pg_admin runs psql as a superuser: over TCP as postgres where that is trusted, else as the
# postgres OS user over the local socket.
pg_admin() {
	if PGCONNECT_TIMEOUT=3 psql -w -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atqc 'SELECT 1' >/dev/null 2>&1; then
		PGCONNECT_TIMEOUT=3 psql -w -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
	elif [ "$ROOT" = 1 ]; then
		local sock=()
		if [ -S "$PG_OWN/.s.PGSQL.$PG_PORT" ]; then sock=(-h "$PG_OWN"); fi
		runuser -u postgres -- psql -w -X "${sock[@]}" -p "$PG_PORT" -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
	else
		die "cannot connect to PostgreSQL as a superuser (neither TCP as postgres nor the postgres OS user)"
	fi
}

pg_prepare() {
	command -v psql >/dev/null || apt_install postgresql-client
	if [ "$(pg_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$PG_ROLE'")" != 1 ]; then
		log "postgres: creating role $PG_ROLE"
		pg_admin -c "CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$PG_PASSWORD'" >/dev/null
	fi
	if [ "$(pg_admin -c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
		log "postgres: creating database $PG_DB"
		pg_admin -c "CREATE DATABASE $PG_DB OWNER $PG_ROLE" >/dev/null
	fi
	# The tests create a database each and drop it after.
	if [ "$(pg_admin -c "SELECT rolcanlogin AND (rolcreatedb OR rolsuper) FROM pg_roles WHERE rolname = '$PG_ROLE'")" != t ]; then
		die "role $PG_ROLE exists but cannot log in and create databases: ALTER ROLE $PG_ROLE LOGIN CREATEDB"
	fi
	PGCONNECT_TIMEOUT=3 psql -w -X "$PG_DSN" -Atqc 'SELECT 1' >/dev/null ||
		die "cannot connect with $PG_DSN (pg_hba.conf, or the role's password?)"
}

pg_up() {
	if pg_ready; then
		log "postgres: using the server on 127.0.0.1:$PG_PORT"
	else
		pg_start
	fi
	pg_prepare
}

pg_down() {
	if [ ! -f "$STATE/postgres.started" ]; then
		log "postgres: not started by this script; left alone"
		return
	fi
	local kind a b c
	read -r kind a b c <"$STATE/postgres.started"
	case $kind in
	cluster) log "postgres: stopping cluster $a/$b"; "${SUDO[@]}" pg_ctlcluster "$a" "$b" stop >&2 || true ;;
	pgctl) log "postgres: stopping $b"; as_pg "$a/pg_ctl" -D "$b" -m fast -w stop >&2 || true ;;
	esac
	rm -f "$STATE/postgres.started"
}

pg_status() {
	local who="not started by this script"
	[ -f "$STATE/postgres.started" ] && who="started by this script: $(cat "$STATE/postgres.started")"
	if pg_ready; then echo "postgres: up on 127.0.0.1:$PG_PORT ($who)"; else echo "postgres: down"; return 1; fi
}

# ---- Redis

redis_ready() {
	local reply
	reply=$(
		exec 2>/dev/null
		exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT" || exit 1
		printf 'PING\r\n' >&3
		read -r -t 2 line <&3 && echo "$line"
	) || return 1
	[[ $reply == +PONG* ]]
}

redis_up() {
	if redis_ready; then
		log "redis: using the server on 127.0.0.1:$REDIS_PORT"
		return
	fi
	if ! command -v redis-server >/dev/null; then
		apt_install redis-server
		for _ in $(seq 1 10); do redis_ready && { log "redis: the installed server is running"; return; }; sleep 0.5; done
	fi
	log "redis: starting redis-server on 127.0.0.1:$REDIS_PORT"
	redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
		--dir "$STATE" --pidfile "$STATE/redis.pid" --logfile "$STATE/redis.log" </dev/null >/dev/null 2>&1 9>&-
	echo "$STATE/redis.pid" >"$STATE/redis.started"
	for _ in $(seq 1 20); do redis_ready && return 0; sleep 0.5; done
	die "redis did not come up on 127.0.0.1:$REDIS_PORT (see $STATE/redis.log)"
}

redis_down() {
	if [ ! -f "$STATE/redis.started" ]; then
		log "redis: not started by this script; left alone"
		return
	fi
	local pid
	pid=$(cat "$(cat "$STATE/redis.started")" 2>/dev/null || true)
	if [ -n "$pid" ] && grep -q redis-server "/proc/$pid/cmdline" 2>/dev/null; then
		log "redis: stopping pid $pid"
		kill "$pid"
		for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
	fi
	rm -f "$STATE/redis.started"
}

redis_status() {
	local who="not started by this script"
	[ -f "$STATE/redis.started" ] && who="started by this script, pid $(cat "$(cat "$STATE/redis.started")" 2>/dev/null || echo '?')"
	if redis_ready; then echo "redis: up on 127.0.0.1:$REDIS_PORT ($who)"; else echo "redis: down"; return 1; fi
}

# ---- OpenFGA (installed, not started)

OPENFGA_MODULE=github.com/openfga/openfga
OPENFGA_VERSION=v1.22.1 # the version of go.mod

# ofga_version BIN prints the version of the OpenFGA module BIN was built from, if go can tell.
ofga_version() {
	command -v go >/dev/null || return 0
	go version -m "$1" 2>/dev/null | awk -v m="$OPENFGA_MODULE" '$1 == "mod" && $2 == m { print $3; exit }'
}

# ofga_bin prints the path of an openfga binary of OPENFGA_VERSION: in go's install
# directory, else on PATH.
ofga_bin() {
	local c cands=()
	if command -v go >/dev/null; then
		c=$(go env GOBIN)
		[ -n "$c" ] || c=$(go env GOPATH)/bin
		cands+=("$c/openfga")
	fi
	if c=$(command -v openfga); then cands+=("$c"); fi
	for c in "${cands[@]}"; do
		[ -x "$c" ] && [ "$(ofga_version "$c")" = "$OPENFGA_VERSION" ] && { echo "$c"; return 0; }
	done
	return 1
}

ofga_up() {
	local bin
	if bin=$(ofga_bin); then
		log "openfga: using $bin ($OPENFGA_VERSION)"
		return
	fi
	command -v go >/dev/null || die "openfga missing and go not available: install Go, or go install $OPENFGA_MODULE/cmd/openfga@$OPENFGA_VERSION"
	log "openfga: go install $OPENFGA_MODULE/cmd/openfga@$OPENFGA_VERSION (several minutes when the build cache is cold)"
	(cd / && GOFLAGS=-mod=mod go install "$OPENFGA_MODULE/cmd/openfga@$OPENFGA_VERSION") >&2 9>&-
	ofga_bin >/dev/null || die "openfga: installed, but no $OPENFGA_VERSION binary found in $(go env GOPATH)/bin or on PATH"
}

ofga_status() {
	local bin
	if bin=$(ofga_bin); then echo "openfga: installed at $bin ($OPENFGA_VERSION; started by the tests)"; else echo "openfga: not installed"; return 1; fi
}

# ---- main

mkdir -p "$STATE"
# One up or down at a time. Servers started below close fd 9, so they never hold the lock.
lock() {
	command -v flock >/dev/null || return 0
	exec 9>"$STATE/lock"
	flock -w 300 9 || die "another services.sh has been running for 5 minutes ($STATE/lock)"
}

case ${1:-} in
up)
	lock
	pg_up
	redis_up
	ofga_up
	echo "AGATE_TEST_POSTGRES=$PG_DSN"
	echo "AGATE_TEST_REDIS=$REDIS_URL"
	echo "AGATE_TEST_OPENFGA_BIN=$(ofga_bin)"
	;;
down)
	lock
	redis_down
	pg_down
	;;
status)
	rc=0
	pg_status || rc=1
	redis_status || rc=1
	ofga_status || rc=1
	exit $rc
	;;
*)
	echo "usage: $0 up|down|status" >&2
	exit 2
	;;
esac
