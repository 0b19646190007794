drop table if exists pyglue.sync_cursors, pyglue.sync_mappings, pyglue.sync_targets;
alter table pyglue.deleted_rows disable row level security;
drop policy if exists pyglue_tenancy_isolation on pyglue.deleted_rows;
drop policy if exists pyglue_visible on pyglue.deleted_rows;
revoke select on pyglue.deleted_rows from pyglue_mapping_reader;
revoke usage on schema pyglue from pyglue_mapping_reader;
alter table pyglue.tracked_tables drop column if exists rls_enabled_by_pyglue;
-- the role stays: other databases of the server may use it
