#!/usr/bin/env bash
# A private PostgreSQL server for the tests (Debian's binaries, as the postgres user: the server refuses root), in a
# temporary folder on a free port; prints the URL of its `postgres` database for $VMBENCH_TEST_PG. Stop it with
# `pg_ctl -D <folder>/data stop` (the folder is the URL's last line on stderr).
set -euo pipefail
BIN=${VMBENCH_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
ROOT=$(mktemp -d /tmp/vmbench-ci-pg.XXXXXX)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
AS=()
if [ "$(id -u)" = 0 ]; then chown postgres "$ROOT"; AS=(runuser -u postgres --); fi
chmod 755 "$ROOT"
"${AS[@]}" "$BIN/initdb" -D "$ROOT/data" -A trust -U postgres -E UTF8 --no-sync > "$ROOT/initdb.log"
"${AS[@]}" "$BIN/pg_ctl" -D "$ROOT/data" -w -t 120 -l "$ROOT/server.log" \
  -o "-p $PORT -k $ROOT -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200" start > /dev/null
echo "$ROOT" >&2
echo "postgresql+psycopg://postgres@127.0.0.1:$PORT/postgres"
