#!/bin/bash
# Backlog catch-up experiment: duplex stopped while N txns x 100 rows commit, then started.
# TARGET=mariadb: into a MariaDB database instead of a PostgreSQL one.
# STREAM=1: duplex keeps running while they commit; reports how far behind the target was
# when the source finished.
set -e
# Needs the test servers: eval "$(cargo run -q -p duplex-testkit --bin duplex-testservers -- start)"
: "${DUPLEX_TEST_PG_PORT:?start the test servers first (see above)}"
export PGPASSWORD=postgres
BIN=${BIN:-target/release/duplex}
TXNS=${TXNS:-2000}
P="psql -h 127.0.0.1 -p $DUPLEX_TEST_PG_PORT -U postgres -X -q -v ON_ERROR_STOP=1"
S=bl_src_$$; T=bl_tgt_$$
M="mariadb -S ${DUPLEX_TEST_MARIADB_SOCKET:-} -uroot --batch --skip-column-names"
$P -d postgres -c "CREATE DATABASE $S OWNER duplex"
if [ "${TARGET:-}" = mariadb ]; then $M -e "CREATE DATABASE $T"; else $P -d postgres -c "CREATE DATABASE $T OWNER duplex"; fi
DDL="CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, status text NOT NULL, total numeric(12,2), created timestamptz NOT NULL, note text); CREATE INDEX ON orders (customer);"
PGPASSWORD=duplex psql -h 127.0.0.1 -p $DUPLEX_TEST_PG_PORT -U duplex -X -q -d $S -c "$DDL"
if [ "${TARGET:-}" = mariadb ]; then
  $M $T -e "CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, status varchar(20) NOT NULL, total decimal(12,2), created datetime(6) NOT NULL, note text, KEY (customer)) ENGINE=InnoDB"
  TARGET_SITE="kind = \"mysql\"
url = \"mysql://duplex:duplex@127.0.0.1:$DUPLEX_TEST_MARIADB_PORT/$T\""
  TARGET_TABLE="$T.orders"
  count() { $M $T -e "select count(*) from orders"; }
else
  PGPASSWORD=duplex psql -h 127.0.0.1 -p $DUPLEX_TEST_PG_PORT -U duplex -X -q -d $T -c "$DDL"
  TARGET_SITE="kind = \"postgres\"
url = \"postgres://duplex:duplex@127.0.0.1:$DUPLEX_TEST_PG_PORT/$T\""
  TARGET_TABLE="public.orders"
  count() { $P -d $T -At -c "select count(*) from orders"; }
fi
DIR=$(mktemp -d)
cat > $DIR/duplex.toml <<TOML
[state]
dir = "$DIR/state"
[sites.$S]
kind = "postgres"
url = "postgres://duplex:duplex@127.0.0.1:$DUPLEX_TEST_PG_PORT/$S"
[sites.$T]
$TARGET_SITE
[[mappings]]
name = "orders"
tables = { $S = "public.orders", $T = "$TARGET_TABLE" }
direction = "$S->$T"
TOML

DUPLEX_LOG=info $BIN --config $DIR/duplex.toml run > $DIR/log1 2>&1 &
PID=$!
until grep -q "link started" $DIR/log1; do kill -0 $PID || { cat $DIR/log1; exit 1; }; sleep 0.2; done
if [ -z "$STREAM" ]; then kill -TERM $PID; wait $PID || true; fi
$P -d $S -c "CREATE PROCEDURE load(n int) LANGUAGE plpgsql AS \$\$ BEGIN FOR i IN 0..n-1 LOOP INSERT INTO orders SELECT g, g % 5000, 'new', (g % 100000)/100.0, now(), md5(g::text) FROM generate_series(i*100+1, i*100+100) g; COMMIT; END LOOP; END \$\$;"
t0=$(date +%s.%N); $P -d $S -c "CALL load($TXNS)"; t1=$(date +%s.%N)
echo "source committed $TXNS txns in $(echo "$t1-$t0"|bc) s"
WANT=$((TXNS*100))
if [ -z "$STREAM" ]; then
  DUPLEX_LOG=info $BIN --config $DIR/duplex.toml run > $DIR/log2 2>&1 &
  PID=$!
  t0=$(date +%s.%N)
else
  t0=$t1
fi
if [ -n "$PERF" ]; then perf record -g -p $PID -o ${PERF_DATA:-perf.data} 2>/dev/null & PERFPID=$!; fi
while true; do
  n=$(count)
  [ "$n" = "$WANT" ] && break
  sleep 0.05
done
t1=$(date +%s.%N)
el=$(echo "$t1-$t0"|bc)
cpu=$(awk '{print ($14+$15)/100}' /proc/$PID/stat)
if [ -z "$STREAM" ]; then
  echo "caught up $WANT rows in $el s: $(echo "$WANT/$el"|bc) rows/s; duplex cpu ${cpu}s"
else
  echo "streaming: the target had every row $el s after the source finished"
fi
[ -n "$PERF" ] && kill -INT $PERFPID && wait $PERFPID
kill -TERM $PID; wait $PID || true
$P -d $S -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database='$S'" >/dev/null
$P -d postgres -c "DROP DATABASE $S"
if [ "${TARGET:-}" = mariadb ]; then $M -e "DROP DATABASE $T"; else $P -d postgres -c "DROP DATABASE $T"; fi
rm -rf $DIR
