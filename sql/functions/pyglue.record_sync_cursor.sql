-- pyglue.record_sync_cursor(p_target_id, p_mapping_name, p_sequence_id): mirror, in the
-- source database, how far a target got with a mapping. The authoritative cursor lives in
-- the target (_pyglue_sync_metadata, advanced in the same transaction as the data); this
-- copy is written after that commit, so it never runs ahead of it. Status and tombstone
-- purging read it. Never moves backwards.
create or replace function pyglue.record_sync_cursor(p_target_id bigint, p_mapping_name text, p_sequence_id bigint)
returns void
language sql
set search_path = pg_catalog, pg_temp
as $$
    insert into pyglue.sync_cursors as c (target_id, mapping_name, last_synced_sequence_id)
    values (p_target_id, p_mapping_name, p_sequence_id)
    on conflict (target_id, mapping_name) do update
        set last_synced_sequence_id = greatest(c.last_synced_sequence_id, excluded.last_synced_sequence_id),
            updated_at = now();
$$;

comment on function pyglue.record_sync_cursor(bigint, text, bigint) is
    'Mirror the cursor a target reached for a mapping (never moves backwards).';
