#!/bin/bash
# The same backlog with PostgreSQL's own logical replication (same server, subscription disabled while loading).
# STREAM=1: the subscription is enabled before the load; reports how far behind the target was
# when the source finished.
set -e
# Needs the test servers: eval "$(cargo run -q -p duplex-testkit --bin duplex-testservers -- start)"
: "${DUPLEX_TEST_PG_PORT:?start the test servers first (see above)}"
export PGPASSWORD=postgres
TXNS=${TXNS:-2000}
P="psql -h 127.0.0.1 -p $DUPLEX_TEST_PG_PORT -U postgres -X -q -v ON_ERROR_STOP=1"
S=nb_src_$$; T=nb_tgt_$$
$P -d postgres -c "CREATE DATABASE $S" -c "CREATE DATABASE $T"
DDL="CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, status text NOT NULL, total numeric(12,2), created timestamptz NOT NULL, note text); CREATE INDEX ON orders (customer);"
$P -d $S -c "$DDL" -c "CREATE PUBLICATION pub FOR TABLE orders" -c "SELECT pg_create_logical_replication_slot('$S', 'pgoutput')" >/dev/null
$P -d $T -c "$DDL" -c "CREATE SUBSCRIPTION sub CONNECTION 'host=127.0.0.1 port=$DUPLEX_TEST_PG_PORT user=postgres password=postgres dbname=$S' PUBLICATION pub WITH (create_slot = false, slot_name = '$S', copy_data = false, enabled = false)"
$P -d $S -c "CREATE PROCEDURE load(n int) LANGUAGE plpgsql AS \$\$ BEGIN FOR i IN 0..n-1 LOOP INSERT INTO orders SELECT g, g % 5000, 'new', (g % 100000)/100.0, now(), md5(g::text) FROM generate_series(i*100+1, i*100+100) g; COMMIT; END LOOP; END \$\$;"
WANT=$((TXNS*100))
if [ -n "$STREAM" ]; then
  $P -d $T -c "ALTER SUBSCRIPTION sub ENABLE"
  until [ "$($P -d $S -At -c "select active from pg_replication_slots where slot_name = '$S'")" = t ]; do sleep 0.1; done
  $P -d $S -c "CALL load($TXNS)"
  t0=$(date +%s.%N)
else
  $P -d $S -c "CALL load($TXNS)"
  t0=$(date +%s.%N)
  $P -d $T -c "ALTER SUBSCRIPTION sub ENABLE"
fi
while true; do
  n=$($P -d $T -At -c "select count(*) from orders")
  [ "$n" = "$WANT" ] && break
  sleep 0.05
done
t1=$(date +%s.%N); el=$(echo "$t1-$t0"|bc)
if [ -n "$STREAM" ]; then
  echo "native streaming: the target had every row $el s after the source finished"
else
  echo "native caught up $WANT rows in $el s: $(echo "$WANT/$el"|bc) rows/s"
fi
$P -d $T -c "ALTER SUBSCRIPTION sub DISABLE" -c "ALTER SUBSCRIPTION sub SET (slot_name = NONE)" -c "DROP SUBSCRIPTION sub"
$P -d $S -c "SELECT pg_drop_replication_slot('$S')" >/dev/null
$P -d postgres -c "DROP DATABASE $S" -c "DROP DATABASE $T"
