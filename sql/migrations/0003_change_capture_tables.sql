-- change capture tables: which tables are tracked, the tombstone log, the one global
-- sequence every stamp draws from, the sync request queue and the fusebox. The
-- functions that use them arrive in the next migration.
-- depends: 0002_app_model

create sequence if not exists pyglue.change_sequence as bigint;
comment on sequence pyglue.change_sequence is 'The one global sequence of change ids (sequence_id of tracked rows and tombstones)';

create table if not exists pyglue.tracked_tables (
    table_name     regclass primary key,
    tenancy_column name not null,
    key_columns    name[] not null,
    tracked_at     timestamptz not null default now()
);
comment on table pyglue.tracked_tables is 'Tables under change capture (pyglue.track_table)';

create table if not exists pyglue.deleted_rows (
    id                        bigint generated always as identity primary key,
    tenancy_id                uuid not null,
    table_name                text not null,
    primary_key               jsonb not null,
    data                      jsonb not null,
    deleted_at                timestamptz not null default now(),
    sequence_id               bigint,
    should_update_sequence_id boolean not null default true
);
comment on table pyglue.deleted_rows is 'Tombstones of rows deleted from tracked tables, written by trigger in the deleting transaction';
create index if not exists deleted_rows_flagged_idx on pyglue.deleted_rows (id) where should_update_sequence_id;
create index if not exists deleted_rows_fetch_idx on pyglue.deleted_rows (tenancy_id, table_name, sequence_id);
create index if not exists deleted_rows_purge_idx on pyglue.deleted_rows (deleted_at) where not should_update_sequence_id;

create table if not exists pyglue.outgoing_requests (
    id               bigint generated always as identity primary key,
    tenancy_id       uuid not null,
    status           text not null default 'pending' check (status in ('pending', 'claimed', 'dead')),
    created_at       timestamptz not null default now(),
    run_after        timestamptz not null default now(),
    attempts         integer not null default 0,
    claimed_by       text,
    claimed_at       timestamptz,
    lease_expires_at timestamptz,
    last_error       text,
    dead_at          timestamptz,
    check ((status = 'claimed') = (lease_expires_at is not null))
);
comment on table pyglue.outgoing_requests is 'Sync request queue: one pending request per tenancy, claimed under expiring leases';
create unique index if not exists outgoing_requests_one_pending_idx
    on pyglue.outgoing_requests (tenancy_id) where status = 'pending';
create index if not exists outgoing_requests_due_idx
    on pyglue.outgoing_requests (created_at, id) where status = 'pending';
create index if not exists outgoing_requests_lease_idx
    on pyglue.outgoing_requests (tenancy_id, lease_expires_at) where status = 'claimed';

create table if not exists pyglue.fusebox (
    id                boolean primary key default true check (id),
    sequencer_enabled boolean not null default true,
    poller_enabled    boolean not null default true,
    sync_enabled      boolean not null default true,
    updated_at        timestamptz not null default now()
);
comment on table pyglue.fusebox is 'Kill switches (one row) honoured by the sequencer, the request poller and the sync engine';
insert into pyglue.fusebox default values on conflict (id) do nothing;
