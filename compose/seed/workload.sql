-- One business transaction of the local stack's seed workload: a pgbench
-- custom script (service "seed" in compose/compose.yaml; tests/compose.rs
-- runs it too). Each run upserts a customer and one of their orders with a
-- line, sometimes ships the order (an UPDATE that leaves the large,
-- TOASTed note unchanged, which wal2json then leaves out), sometimes
-- cancels one (DELETE of the order and its lines), and now and then
-- changes a balance with many digits.
\set cid random(1, 2000)
\set oid random(1, 5000)
\set other random(1, 5000)
\set line random(1, 4)
\set qty random(1, 9)
\set cents random(100, 9999999)
\set dice random(1, 10)
begin;
insert into customers (id, email, name, bio, balance, updated_at)
    values (:cid, 'customer' || :cid || '@example.com', 'Customer ' || :cid,
            'Likes ' || md5(:cid::text), :cents / 100.0, now())
    on conflict (id) do update
        set balance = customers.balance + excluded.balance, updated_at = now();
insert into orders (id, customer_id, amount, status, note, tags, meta, created_at)
    values (:oid, :cid, :cents / 1000.0, 'new',
            (select string_agg(md5(:oid::text || g::text), '') from generate_series(1, 300) g),
            array['seed', 'line ' || :line], jsonb_build_object('qty', :qty, 'source', 'pgbench'),
            now())
    on conflict (id) do update set amount = excluded.amount, status = 'changed';
insert into order_lines (order_id, line, sku, qty, price)
    values (:oid, :line, 'SKU-' || :qty, :qty, :cents / 100.0)
    on conflict (order_id, line) do update set qty = excluded.qty, price = excluded.price;
\if :dice <= 3
update orders set status = 'shipped' where id = :other and status <> 'shipped';
\elif :dice = 4
delete from order_lines where order_id = :other;
delete from orders where id = :other;
\elif :dice = 5
update customers set balance = 12345678901234.123456 where id = :cid;
\endif
commit;
