-- sync tables: the external databases of each tenancy (sync_targets, with their health),
-- the mappings and how far each target got (sync_cursors, a mirror of the cursor kept in
-- the target), and the restricted role mapping queries run as. Row-level security on the
-- tombstone log keeps that role inside one tenancy.
-- depends: 0005_track_app_tables

do $$
begin
    create role pyglue_mapping_reader nologin;
exception when duplicate_object or unique_violation then
    null;  -- roles are per server: another database (or a concurrent migration) made it
end;
$$;
comment on role pyglue_mapping_reader is 'pyglue: sync mapping queries run as this role, under row-level security keyed by pyglue.tenancy_id';
-- the migrating role (the one pyglue connects as) may switch to the reader
grant pyglue_mapping_reader to current_user;
grant usage on schema pyglue to pyglue_mapping_reader;

alter table pyglue.tracked_tables add column if not exists rls_enabled_by_pyglue boolean not null default true;

grant select on pyglue.deleted_rows to pyglue_mapping_reader;
drop policy if exists pyglue_visible on pyglue.deleted_rows;
create policy pyglue_visible on pyglue.deleted_rows as permissive to public using (true);
drop policy if exists pyglue_tenancy_isolation on pyglue.deleted_rows;
create policy pyglue_tenancy_isolation on pyglue.deleted_rows as restrictive to pyglue_mapping_reader
    using (tenancy_id = nullif(current_setting('pyglue.tenancy_id', true), '')::uuid);
alter table pyglue.deleted_rows enable row level security;

create table if not exists pyglue.sync_targets (
    id                   bigint generated always as identity primary key,
    tenancy_id           uuid not null,
    name                 text not null,
    connection_string    text not null,
    enabled              boolean not null default true,
    created_at           timestamptz not null default now(),
    last_success_at      timestamptz,
    last_error           text,
    last_error_at        timestamptz,
    consecutive_failures integer not null default 0,
    retry_after          timestamptz,
    unique (tenancy_id, name)
);
comment on table pyglue.sync_targets is 'External Postgres databases that receive a tenancy''s data, with their sync health';

create table if not exists pyglue.sync_mappings (
    name         text primary key,
    source_table text not null,
    updated_at   timestamptz not null default now()
);
comment on table pyglue.sync_mappings is 'Sync mappings known to the engine and the tracked table each exports';

create table if not exists pyglue.sync_cursors (
    target_id               bigint not null references pyglue.sync_targets (id) on delete cascade,
    mapping_name            text not null,
    last_synced_sequence_id bigint not null,
    updated_at              timestamptz not null default now(),
    primary key (target_id, mapping_name)
);
comment on table pyglue.sync_cursors is 'Mirror of each target''s cursor per mapping (the target''s _pyglue_sync_metadata is authoritative)';
