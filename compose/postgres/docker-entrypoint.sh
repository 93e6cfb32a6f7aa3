#!/bin/bash
# The official image's start-up, in short: as root, own the data folder and drop to `postgres`;
# on an empty data folder, initdb with POSTGRES_USER and POSTGRES_PASSWORD, start a temporary
# server on the socket only, create POSTGRES_DB, run /docker-entrypoint-initdb.d/*.sql and *.sh,
# stop it; then run the real server in the foreground (its log on stderr).
set -euo pipefail

# Options alone (`-c fsync=off`, as testcontainers passes) are options of postgres.
if [ "$#" = 0 ] || [ "${1:0:1}" = - ]; then
  set -- postgres "$@"
fi
if [ "$1" != postgres ]; then
  exec "$@"
fi

if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi

user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"

# The password from a file (a mounted secret), as the official image reads it.
if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
  POSTGRES_PASSWORD=$(cat "$POSTGRES_PASSWORD_FILE")
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
    echo "docker-entrypoint: POSTGRES_PASSWORD is not set (or set POSTGRES_HOST_AUTH_METHOD=trust)" >&2
    exit 1
  fi
  pw=()
  if [ -n "${POSTGRES_PASSWORD:-}" ]; then
    pwfile=$(mktemp)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s' "$POSTGRES_PASSWORD" > "$pwfile"
    pw=(--pwfile="$pwfile")
  fi
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of options, as in the official image
  initdb --username="$user" "${pw[@]}" --auth-local=trust --auth-host="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" \
    ${POSTGRES_INITDB_ARGS:-} -D "$PGDATA" >/dev/null
  rm -f "${pwfile:-}"
  {
    echo "listen_addresses = '*'"
  } >> "$PGDATA/postgresql.conf"
  echo "host all all all ${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}" >> "$PGDATA/pg_hba.conf"

  # The temporary server: the same options, no TCP, its log on stdout.
  opts=""
  if [ "$#" -gt 1 ]; then
    opts="$(printf '%q ' "${@:2}")"
  fi
  pg_ctl -D "$PGDATA" -o "$opts-c listen_addresses=''" -w start
  psql=(psql -v ON_ERROR_STOP=1 --username "$user" --no-password --no-psqlrc)
  if [ "$db" != postgres ]; then
    echo 'CREATE DATABASE :"db"' | "${psql[@]}" --dbname postgres --set db="$db" >/dev/null
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    case "$f" in
      *.sh) echo "docker-entrypoint: running $f"; . "$f" ;;
      *.sql) echo "docker-entrypoint: running $f"; "${psql[@]}" --dbname "$db" -f "$f" ;;
      *) [ -e "$f" ] && echo "docker-entrypoint: ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop
  echo "docker-entrypoint: PostgreSQL init process complete; ready for start up."
fi

exec postgres "${@:2}"
