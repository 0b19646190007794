-- What was measured: the migrations applied to the bench database (the billing functions
-- are whatever they left).
select count(*) as applied, max(migration_id) as latest from _yoyo_migration
