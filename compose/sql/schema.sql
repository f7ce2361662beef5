-- The tables of the local stack: the demo schema (syncdata_core::workload::
-- DEMO_DDL, what scripts/demo.sh syncs). Run by both databases' entrypoints
-- (docker-entrypoint-initdb.d) on their first start: the production
-- stand-in (source-db) and the local copy (local-db). DDL is not
-- replicated, so both sides need it.

create table public.customers (
    id         bigint primary key,
    email      text not null,
    name       text,
    bio        text,
    balance    numeric(20,6),
    updated_at timestamptz
);

create table public.orders (
    id          bigint primary key,
    customer_id bigint,
    amount      numeric(30,9),
    status      text,
    note        text,
    tags        text[],
    meta        jsonb,
    created_at  timestamptz
);

create table public.order_lines (
    order_id bigint,
    line     integer,
    sku      text,
    qty      integer,
    price    numeric(12,2),
    primary key (order_id, line)
);
