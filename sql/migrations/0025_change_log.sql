-- The sequencer finds flagged rows through a change log, pyglue.changed_rows, that
-- statement triggers of each tracked table append to, instead of through a partial index
-- on the flag (#13). With that index every application update of a synced row was a
-- non-HOT update (the flag, an indexed column, flips), so each one wrote an entry into
-- every index of the table: 36-49 us instead of 14-19 per row for 100-row avatar updates on
-- 1,000,000 users, Debian PG 15; the log costs about 3 us a row. Every tracked table is
-- tracked again: its log triggers and log function are made, its flagged rows logged,
-- its flagged index dropped.
-- depends: 0024_finished_requests_wake_workers

-- keyed by table first: the sequencer reads each table's entries oldest first
create table pyglue.changed_rows (
    table_name regclass not null,
    id bigint generated always as identity,
    tenancy_id uuid not null,
    primary_key jsonb not null,
    primary key (table_name, id)
);
comment on table pyglue.changed_rows is
    'Keys of flagged rows of tracked tables, appended by their log triggers, deleted by the sequencer once stamped.';

-- copied from sql/functions/pyglue._key_match.sql
-- pyglue._key_match(p_table, p_row, p_log): the join condition of a tracked table's rows
-- (alias p_row) to entries of pyglue.changed_rows (alias p_log), one typed equality per
-- primary key column, so the row side is probed through the table's primary key:
-- "r.tenancy_id = (l.primary_key ->> 'tenancy_id')::uuid and r.id = (...)::uuid".
-- The entries hold the key as jsonb_build_object of its columns (pyglue.track_table's log
-- function), whose text form every key type reads back.
create or replace function pyglue._key_match(p_table regclass, p_row text, p_log text)
returns text
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select string_agg(format('%s.%I = (%s.primary_key ->> %L)::%s', p_row, a.attname, p_log, a.attname,
                             format_type(a.atttypid, a.atttypmod)), ' and ' order by k.ord)
    from pyglue.tracked_tables t
    cross join lateral unnest(t.key_columns) with ordinality as k(attname, ord)
    join pg_attribute a on a.attrelid = t.table_name and a.attname = k.attname
    where t.table_name = p_table;
$$;

comment on function pyglue._key_match(regclass, text, text) is
    'Join condition of a tracked table''s rows to their pyglue.changed_rows entries, by primary key.';

-- copied from sql/functions/pyglue._unsequenced_rows.sql
-- pyglue._unsequenced_rows(p_table, p_tenancy_id, p_after): rows of a tracked table that
-- wait for the sequencer (flagged), in one tenancy (all when p_tenancy_id is null), whose
-- last stamp, if any, is not past p_after (any stamp when p_after is null): what a reader
-- at cursor p_after will receive besides the rows with sequence_id > p_after. Counted
-- through pyglue.changed_rows (the flagged rows' entries, a row changed twice has two),
-- not by scanning the table.
create or replace function pyglue._unsequenced_rows(p_table regclass, p_tenancy_id uuid, p_after bigint)
returns bigint
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_count bigint;
begin
    execute format(
        'select count(*) from (select distinct l.primary_key from pyglue.changed_rows l join %s r on %s'
        ' where l.table_name = $1 and ($2 is null or l.tenancy_id = $2) and r.should_update_sequence_id'
        '   and ($3 is null or coalesce(r.sequence_id, 0) <= $3)) x',
        p_table, pyglue._key_match(p_table, 'r', 'l'))
    into v_count using p_table, p_tenancy_id, p_after;
    return v_count;
end;
$$;

comment on function pyglue._unsequenced_rows(regclass, uuid, bigint) is
    'Rows of a tracked table (in a tenancy) flagged for the sequencer and not stamped past a cursor.';

-- copied from sql/functions/pyglue.track_table.sql
-- pyglue.track_table(p_table, p_tenancy_column): make a table syncable.
--
-- Adds sequence_id and should_update_sequence_id (existing rows start flagged, so they
-- sync once), the (tenancy, sequence_id) index the fetch reads, a BEFORE UPDATE trigger
-- that re-flags a row whenever anything but the sequencer changes it, and DELETE and
-- TRUNCATE triggers that write tombstones to pyglue.deleted_rows in the same transaction
-- (rows removed by foreign-key cascades included). Idempotent: a second call changes
-- nothing but the recorded tenancy column.
--
-- The sequencer finds flagged rows through pyglue.changed_rows, not through an index on
-- the flag: AFTER INSERT and AFTER UPDATE statement triggers append the key of every
-- flagged row they wrote (a function of this table's own, pyglue._tg_log_change_<table>_<hash>,
-- whose INSERT is static SQL and so planned once per session). An index on the flag made
-- every application update of a synced row a non-HOT update, since the flag flips:
-- 36-49 us instead of 14-19 per row for 100-row avatar updates on 1,000,000 users (#13); the
-- log costs about 3 us. Rows already flagged when the table is first tracked (all of
-- them) are logged here; the flagged partial index of tables tracked before 0025 is
-- dropped.
--
-- A primary key change writes a tombstone for the old key (row trigger, WHEN the key
-- differs), so targets drop the old key.
--
-- Tenant isolation for sync mappings: grants SELECT to pyglue_mapping_reader and adds a
-- restrictive row-level security policy for that role keyed by pyglue._fetch_tenancy()
-- (which a mapping query cannot change), called once per query through a sub-select so
-- it is an index condition next to the query's own (called per row, the planner kept
-- the email lookup of the users mapping from using tenancy and user together).
-- The policy also binds roles that inherit from the reader: grant membership with
-- NOINHERIT (owners and superusers are exempt from row-level security anyway).
-- What other roles see does not change: if row-level security
-- was off, it is turned on with a permissive policy for everyone (using true); if the
-- table already had its own policies, only the reader gets a permissive one.
--
-- Parameters: p_table, any ordinary table with a primary key; p_tenancy_column, its uuid
-- column naming the tenancy (default tenancy_id).
-- Errors: 42809 not an ordinary table or a pyglue table; 42P16 no primary key;
-- 42703 no such column; 42804 tenancy column is not uuid.
-- Locks: ACCESS EXCLUSIVE on p_table while its columns, triggers and policies are added.
create or replace function pyglue.track_table(p_table regclass, p_tenancy_column name default 'tenancy_id')
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_relname name;
    v_relkind "char";
    v_schema name;
    v_key name[];
    v_tenancy_type regtype;
    v_had_rls boolean;
    v_rls_ours boolean;
    v_log_function text;
    v_key_json text;
    v_old_function regprocedure;
begin
    select c.relname, c.relkind, n.nspname, c.relrowsecurity into v_relname, v_relkind, v_schema, v_had_rls
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.oid = p_table;
    if v_relkind is distinct from 'r' or v_schema = 'pyglue' then
        raise exception 'cannot track %: not an ordinary table outside schema pyglue', p_table
            using errcode = '42809';
    end if;

    select array_agg(a.attname order by k.ord) into v_key
    from pg_index i
    cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
    join pg_attribute a on a.attrelid = i.indrelid and a.attnum = k.attnum
    where i.indrelid = p_table and i.indisprimary;
    if v_key is null then
        raise exception 'cannot track %: it has no primary key', p_table
            using errcode = '42P16', hint = 'Tombstones identify deleted rows by primary key.';
    end if;

    select a.atttypid::regtype into v_tenancy_type
    from pg_attribute a
    where a.attrelid = p_table and a.attname = p_tenancy_column and a.attnum > 0 and not a.attisdropped;
    if v_tenancy_type is null then
        raise exception 'cannot track %: it has no column %', p_table, quote_ident(p_tenancy_column)
            using errcode = '42703';
    end if;
    if v_tenancy_type <> 'uuid'::regtype then
        raise exception 'cannot track %: tenancy column % is %, not uuid', p_table, quote_ident(p_tenancy_column), v_tenancy_type
            using errcode = '42804';
    end if;

    execute format(
        'alter table %s add column if not exists sequence_id bigint,'
        ' add column if not exists should_update_sequence_id boolean not null default true', p_table);
    execute format('drop index if exists %I.%I', v_schema, left(v_relname, 40) || '_pyglue_flagged_idx');
    execute format('create index if not exists %I on %s (%I, sequence_id)',
                   left(v_relname, 40) || '_pyglue_sequence_idx', p_table, p_tenancy_column);
    -- Fires only for a row not yet flagged whose sequence_id is unchanged: application
    -- updates of synced rows. The sequencer's own stamp changes sequence_id, so it never
    -- re-flags; rows already flagged cost nothing.
    execute format(
        'create or replace trigger _100_pyglue_flag_change before update on %s for each row'
        ' when (not new.should_update_sequence_id and new.sequence_id is not distinct from old.sequence_id)'
        ' execute function pyglue._tg_flag_change()', p_table);
    -- the change log (see the header): a function named after the table (readable, and the
    -- same in every database), SECURITY DEFINER as the tombstone trigger's, so roles that
    -- write the table need no rights on schema pyglue
    v_log_function := format('pyglue.%I', left('_tg_log_change_' || v_schema || '_' || v_relname, 50)
                                          || '_' || left(md5(format('%I.%I', v_schema, v_relname)), 8));
    v_key_json := (select string_agg(format('%L, r.%I', k, k), ', ') from unnest(v_key) as k);
    execute format(
        'create or replace function %s() returns trigger language plpgsql security definer'
        ' set search_path = pg_catalog, pg_temp as $log$ begin'
        ' insert into pyglue.changed_rows (table_name, tenancy_id, primary_key)'
        ' select tg_relid, r.%I, jsonb_build_object(%s) from pyglue_new_rows r where r.should_update_sequence_id;'
        ' return null; end $log$',
        v_log_function, p_tenancy_column, v_key_json);
    execute format('comment on function %s() is %L', v_log_function,
                   format('Trigger of %s: log the flagged rows a statement wrote, for the sequencer.', p_table));
    select g.tgfoid::regprocedure into v_old_function
    from pg_trigger g where g.tgrelid = p_table and g.tgname = '_100_pyglue_log_update';
    execute format(
        'create or replace trigger _100_pyglue_log_insert after insert on %s'
        ' referencing new table as pyglue_new_rows for each statement execute function %s()', p_table, v_log_function);
    execute format(
        'create or replace trigger _100_pyglue_log_update after update on %s'
        ' referencing new table as pyglue_new_rows for each statement execute function %s()', p_table, v_log_function);
    if v_old_function <> to_regprocedure(v_log_function || '()') then
        execute format('drop function %s', v_old_function);  -- of the table's name before a rename
    end if;
    if v_old_function is null then
        execute format(
            'insert into pyglue.changed_rows (table_name, tenancy_id, primary_key)'
            ' select $1, r.%I, jsonb_build_object(%s) from %s r where r.should_update_sequence_id',
            p_tenancy_column, v_key_json, p_table)
        using p_table;
    end if;
    execute format(
        'create or replace trigger _900_pyglue_log_delete after delete on %s'
        ' referencing old table as pyglue_old_rows for each statement'
        ' execute function pyglue._tg_log_delete(%L, %L)', p_table, p_tenancy_column, v_key::text);
    execute format(
        'create or replace trigger _900_pyglue_log_truncate before truncate on %s for each statement'
        ' execute function pyglue._tg_log_delete(%L, %L)', p_table, p_tenancy_column, v_key::text);
    execute format(
        'create or replace trigger _900_pyglue_log_key_change after update on %s for each row'
        ' when ((%s) is distinct from (%s)) execute function pyglue._tg_log_key_change(%L, %L)',
        p_table,
        (select string_agg(format('old.%I', k), ', ') from unnest(v_key) as k),
        (select string_agg(format('new.%I', k), ', ') from unnest(v_key) as k),
        p_tenancy_column, v_key::text);

    -- row-level security for mapping reads (see the header)
    select t.rls_enabled_by_pyglue into v_rls_ours from pyglue.tracked_tables t where t.table_name = p_table;
    v_rls_ours := coalesce(v_rls_ours, not v_had_rls);
    execute format('grant usage on schema %I to pyglue_mapping_reader', v_schema);
    execute format('grant select on %s to pyglue_mapping_reader', p_table);
    execute format('drop policy if exists pyglue_visible on %s', p_table);
    execute format('drop policy if exists pyglue_tenancy_isolation on %s', p_table);
    execute format('create policy pyglue_visible on %s as permissive to %s using (true)',
                   p_table, case when v_rls_ours then 'public' else 'pyglue_mapping_reader' end);
    execute format(
        'create policy pyglue_tenancy_isolation on %s as restrictive to pyglue_mapping_reader'
        ' using (%I = (select pyglue._fetch_tenancy()))', p_table, p_tenancy_column);
    execute format('alter table %s enable row level security', p_table);

    insert into pyglue.tracked_tables (table_name, tenancy_column, key_columns, rls_enabled_by_pyglue)
    values (p_table, p_tenancy_column, v_key, v_rls_ours)
    on conflict (table_name) do update
        set tenancy_column = excluded.tenancy_column, key_columns = excluded.key_columns;
end;
$$;

comment on function pyglue.track_table(regclass, name) is
    'Make a table with a primary key syncable: sequence columns, index, change log and delete triggers. Idempotent.';

-- copied from sql/functions/pyglue.untrack_table.sql
-- pyglue.untrack_table(p_table, p_drop_columns): stop capturing changes of a table.
--
-- Drops the pyglue triggers, the table's change-log function and its entries in
-- pyglue.changed_rows, and the policies (turning row-level security off again if
-- track_table turned it on) and the dependencies declared for it, and forgets the table; with p_drop_columns also drops
-- sequence_id, should_update_sequence_id and their index. Its tombstones stay in
-- pyglue.deleted_rows until purged. Returns false when the table was not tracked.
-- Locks: ACCESS EXCLUSIVE on p_table.
create or replace function pyglue.untrack_table(p_table regclass, p_drop_columns boolean default false)
returns boolean
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_rls_ours boolean;
    v_log_function regprocedure;
begin
    delete from pyglue.tracked_tables t where t.table_name = p_table
    returning t.rls_enabled_by_pyglue into v_rls_ours;
    if not found then
        return false;
    end if;
    perform pyglue.untrack_dependency(d.dependent_table, d.source_table)
    from pyglue.dependencies d where d.source_table = p_table;
    execute format('drop policy if exists pyglue_visible on %s', p_table);
    execute format('drop policy if exists pyglue_tenancy_isolation on %s', p_table);
    if v_rls_ours then
        execute format('alter table %s disable row level security', p_table);
    end if;
    execute format('revoke select on %s from pyglue_mapping_reader', p_table);
    execute format('drop trigger if exists _100_pyglue_flag_change on %s', p_table);
    execute format('drop trigger if exists _900_pyglue_log_delete on %s', p_table);
    execute format('drop trigger if exists _900_pyglue_log_truncate on %s', p_table);
    execute format('drop trigger if exists _900_pyglue_log_key_change on %s', p_table);
    select g.tgfoid::regprocedure into v_log_function
    from pg_trigger g where g.tgrelid = p_table and g.tgname = '_100_pyglue_log_update';
    execute format('drop trigger if exists _100_pyglue_log_insert on %s', p_table);
    execute format('drop trigger if exists _100_pyglue_log_update on %s', p_table);
    if v_log_function is not null then
        execute format('drop function %s', v_log_function);
    end if;
    delete from pyglue.changed_rows l where l.table_name = p_table;
    if p_drop_columns then
        execute format('alter table %s drop column if exists sequence_id,'
                       ' drop column if exists should_update_sequence_id', p_table);
    end if;
    return true;
end;
$$;

comment on function pyglue.untrack_table(regclass, boolean) is
    'Stop change capture on a table (optionally dropping its sequence columns). Returns false if it was not tracked.';

-- copied from sql/functions/pyglue.sequence_changes.sql
-- pyglue.sequence_changes(p_batch_size): one sequencer pass.
--
-- Stamps flagged rows with ids of the global sequence pyglue.change_sequence and clears
-- their flags, tombstones first and then every tracked table, at most p_batch_size rows
-- of each; enqueues one sync request per affected tenancy; all in the caller's
-- transaction. Rows locked by open transactions are skipped (SKIP LOCKED): they keep
-- their flag and get a higher id in a later pass, so the sequencer never waits on the
-- application.
--
-- One snapshot decides what a pass stamps. The pass first lists its candidates, the
-- flagged tombstones and the flagged row versions of every tracked table, in ONE
-- statement, and then stamps only those versions (same ctid and xmin). A table's flagged
-- rows are found through its entries in pyglue.changed_rows, oldest first (since 0025;
-- track_table's log triggers write them in the transaction that flags the row, so an
-- entry is visible exactly when its row version is), not through an index on the flag.
-- Each entry's row is looked up by primary key, in the listing through a lateral subquery
-- with LIMIT 1 and in the delete below through a scalar subquery: neither can be planned as
-- a join that reads the whole table, whatever the statistics say about the log. A tombstone is
-- committed no later than the re-creation of its key, so whenever a re-created row is a
-- candidate its tombstone is one too and gets the lower id; a row version committed after
-- that snapshot (a re-insert, or an update that changed the key back) waits for the next
-- pass, behind its tombstones. Stamping each table in its own statement with its own
-- snapshot (what this function did before 0010) let a delete + re-create that committed
-- between two statements stamp the row before its tombstone, and the target deleted it.
-- When tombstones may be left over (a full batch, or one locked), live rows wait too.
-- The stamping step looks each candidate up by its ctid (a lateral subquery per candidate:
-- its row lock keeps the planner from flattening it), never by the flag: the statistics of
-- a quiet system say almost no row is flagged, and a join of a burst of candidates to the
-- flagged rows was planned as a nested loop of both (5,000 x 5,000 in 4 s; before 0023).
-- The flag needs no second look: the version with that ctid and xmin is the one listed,
-- and a flag only changes with a new version.
-- After a table is stamped, the pass deletes the entries it listed whose row is no longer
-- flagged (stamped, deleted, or its key changed); an entry of a row skipped because it was
-- locked stays for the next pass, and a row flagged again later has an entry of its own.
-- Candidates are listed without locks, so a row locked by an open transaction is skipped
-- in the stamping step, not replaced by another: if a whole batch of one table's
-- candidates is locked (a long transaction updating that many flagged rows), that table
-- waits for it to end; other tables go on. Nothing is lost, only delayed.
--
-- Passes are serialized by the row lock of pyglue.sequencer_lock (a row no mapping fetch
-- may read, so none can take it; an advisory lock key anyone can take was used before
-- 0011): a second caller WAITS for
-- the first to commit, then runs its own pass (it never returns 0 early). Because a pass
-- takes its ids only after the previous pass committed, ids become visible in increasing
-- order, and a reader that remembers the last id it saw never skips a row.
--
-- Each pass that stamps rows records the second it ran in pyglue.sequence_marks (kept 30
-- days), so pyglue.sync_status can tell how long ago the oldest unapplied change was
-- stamped.
--
-- Returns: rows stamped (0 when nothing was flagged or the fusebox switch is off).
-- Errors: 22023 batch size below 1; 25001 not READ COMMITTED (a snapshot taken before
-- the lock would hide the previous pass).
-- Locks: the pyglue.sequencer_lock row (FOR UPDATE); FOR NO KEY UPDATE row locks on
-- stamped rows (so it does not skip rows whose children are being inserted); row locks on
-- the deleted entries of pyglue.changed_rows.
create or replace function pyglue.sequence_changes(p_batch_size integer default 1000)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tables regclass[];
    v_tenancy_columns name[];
    v_matches text[];
    v_candidates text;
    v_kind integer[];
    v_ctid tid[];
    v_xmin xid[];
    v_entry bigint[];
    v_tombstones integer;
    v_i integer;
    v_count bigint;
    v_total bigint := 0;
    v_tenancies uuid[];
    v_all_tenancies uuid[] := '{}';
begin
    if p_batch_size is null or p_batch_size < 1 then
        raise exception 'batch size must be at least 1, got %', p_batch_size using errcode = '22023';
    end if;
    if not (select f.sequencer_enabled from pyglue.fusebox f) then
        return 0;
    end if;
    if current_setting('transaction_isolation') <> 'read committed' then
        raise exception 'pyglue.sequence_changes must run in a READ COMMITTED transaction, not %',
            upper(current_setting('transaction_isolation')) using errcode = '25001';
    end if;

    perform 1 from pyglue.sequencer_lock l for update;

    select coalesce(array_agg(t.table_name order by t.table_name::text), '{}'),
           coalesce(array_agg(t.tenancy_column order by t.table_name::text), '{}'),
           coalesce(array_agg(pyglue._key_match(t.table_name, 'f', 'l') order by t.table_name::text), '{}')
    into v_tables, v_tenancy_columns, v_matches
    from pyglue.tracked_tables t join pg_class c on c.oid = t.table_name;

    -- the candidates, in one statement: kind 0 = tombstones, i = the i-th tracked table,
    -- whose log entries come with the row version they name (none: the row is gone or
    -- no longer flagged, and the entry is only deleted)
    select string_agg(format(
        '(select %s as kind, f.ctid, f.xmin, l.id as entry from pyglue.changed_rows l'
        '  left join lateral (select f.ctid, f.xmin from %s f where %s and f.should_update_sequence_id limit 1) f on true'
        '  where l.table_name = %L::regclass order by l.id limit $1)',
        i, v_tables[i], v_matches[i], v_tables[i]), ' union all ')
    into v_candidates
    from generate_subscripts(v_tables, 1) as i;
    execute 'select coalesce(array_agg(c.kind), ''{}''), coalesce(array_agg(c.ctid), ''{}''),'
            '       coalesce(array_agg(c.xmin), ''{}''), coalesce(array_agg(c.entry), ''{}'') from ('
            '(select 0 as kind, d.ctid, d.xmin, null::bigint as entry from pyglue.deleted_rows d'
            '  where d.should_update_sequence_id order by d.id limit $1)'
            || coalesce(' union all ' || v_candidates, '') || ') c'
    into v_kind, v_ctid, v_xmin, v_entry
    using p_batch_size;

    -- tombstones, in the order they were written
    with candidate as (
        select u.ctid, u.xmin from unnest(v_kind, v_ctid, v_xmin) as u(kind, ctid, xmin) where u.kind = 0
    ), picked as (
        select p.id from candidate c cross join lateral (
            select d.id from pyglue.deleted_rows d
            where d.ctid = c.ctid and d.xmin = c.xmin
            for no key update of d skip locked) p
        order by p.id
    ), numbered as (
        select p.id, nextval('pyglue.change_sequence') as sequence_id from picked p
    ), stamped as (
        update pyglue.deleted_rows d
        set sequence_id = n.sequence_id, should_update_sequence_id = false
        from numbered n where d.id = n.id
        returning d.tenancy_id
    )
    select count(*), coalesce(array_agg(distinct s.tenancy_id), '{}') into v_count, v_tenancies from stamped s;
    v_total := v_total + v_count;
    v_all_tenancies := v_all_tenancies || v_tenancies;
    v_tombstones := (select count(*) from unnest(v_kind) as k where k = 0);

    -- live rows only when no tombstone of this snapshot is left for a later pass
    if v_count = v_tombstones and v_tombstones < p_batch_size then
        -- a loop over tables, not rows: each table is one set-based UPDATE
        for v_i in 1 .. coalesce(array_length(v_tables, 1), 0) loop
            continue when not (v_i = any (v_kind));
            execute format(
                'with stamped as ('
                '  update %1$s t set sequence_id = nextval(''pyglue.change_sequence''), should_update_sequence_id = false'
                '  where t.ctid = any (array('
                '    select p.ctid from unnest($1, $2, $3) as c(kind, ctid, xmin) cross join lateral ('
                '      select f.ctid from %1$s f where f.ctid = c.ctid and f.xmin = c.xmin'
                '      for no key update of f skip locked) p'
                '    where c.kind = $4))'
                '  returning t.%2$I as tenancy_id)'
                ' select count(*), coalesce(array_agg(distinct s.tenancy_id), ''{}'') from stamped s',
                v_tables[v_i], v_tenancy_columns[v_i])
            into v_count, v_tenancies
            using v_kind, v_ctid, v_xmin, v_i;
            v_total := v_total + v_count;
            v_all_tenancies := v_all_tenancies || v_tenancies;
            -- the listed entries whose row is not flagged any more (a new statement: it
            -- sees the stamps above and every commit since the candidates' snapshot)
            execute format(
                'delete from pyglue.changed_rows l'
                ' where l.table_name = $4'
                '   and l.id = any (array(select c.entry from unnest($1, $2) as c(kind, entry) where c.kind = $3))'
                '   and not coalesce((select bool_or(f.should_update_sequence_id) from %s f where %s), false)',
                v_tables[v_i], v_matches[v_i])
            using v_kind, v_entry, v_i, v_tables[v_i];
        end loop;
    end if;

    if v_total > 0 then
        -- when ids were handed out (one row per second), for the age of unapplied changes
        insert into pyglue.sequence_marks as m (stamped_at, last_id)
        values (date_trunc('second', now()), currval('pyglue.change_sequence'))
        on conflict (stamped_at) do update set last_id = greatest(m.last_id, excluded.last_id);
        delete from pyglue.sequence_marks m where m.stamped_at < now() - interval '30 days';
        insert into pyglue.outgoing_requests as r (tenancy_id)
        select distinct t from unnest(v_all_tenancies) as t order by t
        on conflict (tenancy_id) where status = 'pending' do update
            set run_after = least(r.run_after, now())
            where r.attempts = 0;
    end if;
    return v_total;
end;
$$;

comment on function pyglue.sequence_changes(integer) is
    'One serialized sequencer pass: stamp flagged rows and tombstones with increasing ids, enqueue their tenancies. Returns rows stamped.';

-- copied from sql/functions/pyglue.pending_changes.sql
-- pyglue.pending_changes(): rows waiting for the sequencer, per tracked table and for
-- tombstones ('pyglue.deleted_rows'). A table's flagged rows are counted through their
-- entries in pyglue.changed_rows (pyglue._unsequenced_rows), not by scanning the table.
-- Returns: (table_name, pending) for every tracked table, zeros included.
create or replace function pyglue.pending_changes()
returns table (table_name text, pending bigint)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_table regclass;
begin
    table_name := 'pyglue.deleted_rows';
    select count(*) into pending from pyglue.deleted_rows d where d.should_update_sequence_id;
    return next;
    for v_table in
        select t.table_name from pyglue.tracked_tables t join pg_class c on c.oid = t.table_name
        order by t.table_name::text
    loop
        table_name := v_table::text;
        pending := pyglue._unsequenced_rows(v_table, null, null);
        return next;
    end loop;
end;
$$;

comment on function pyglue.pending_changes() is
    'Rows flagged for the sequencer, per tracked table and for tombstones.';

-- copied from sql/functions/pyglue.sync_status.sql
-- pyglue.sync_status(p_tenancy_id): how far each target of a tenancy (or of all
-- tenancies) is, per mapping it syncs (every registered mapping for a target that has not
-- synced yet; a mapping used once with --mappings-dir does not stay in everyone's status).
--
-- pending_rows counts rows, not id differences: rows of the mapping's source table and
-- its tombstones that are past the target's cursor or not yet sequenced (an index scan on
-- (tenancy, sequence_id), and the flagged rows' entries in pyglue.changed_rows). Queue columns describe the
-- tenancy's requests: queue_depth (pending + claimed), dead_requests, and the age of the
-- oldest pending one. failing: the target's last sync failed (last_error and
-- last_error_at stay as history after a success). oldest_unapplied_age: how long ago the
-- oldest change past the target's cursor was sequenced (null when there is none yet),
-- which is the target's lag. Never shows connection strings.
create or replace function pyglue.sync_status(p_tenancy_id uuid default null)
returns table (
    tenancy_id uuid, target_name text, enabled boolean, mapping_name text,
    last_synced_sequence_id bigint, pending_rows bigint, last_success_at timestamptz,
    last_error text, last_error_at timestamptz, retry_after timestamptz,
    queue_depth bigint, dead_requests bigint, oldest_pending_age interval,
    failing boolean, oldest_unapplied_age interval)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_row record;
    v_live bigint;
    v_dead bigint;
    v_oldest bigint;
begin
    for v_row in
        select t.id as target_id, t.tenancy_id, t.name, t.enabled, t.last_success_at, t.last_error,
               t.last_error_at, t.retry_after, t.consecutive_failures > 0 as failing, m.name as mapping_name, m.source_table,
               tt.tenancy_column, coalesce(c.last_synced_sequence_id, 0) as cursor,
               q.depth, q.dead, q.oldest
        from pyglue.sync_targets t
        cross join pyglue.sync_mappings m
        join pyglue.tracked_tables tt on tt.table_name::text = m.source_table
        left join pyglue.sync_cursors c on c.target_id = t.id and c.mapping_name = m.name
        cross join lateral (
            select count(*) filter (where r.status in ('pending', 'claimed')) as depth,
                   count(*) filter (where r.status = 'dead') as dead,
                   now() - min(r.created_at) filter (where r.status = 'pending') as oldest
            from pyglue.outgoing_requests r where r.tenancy_id = t.tenancy_id) q
        where (p_tenancy_id is null or t.tenancy_id = p_tenancy_id)
          -- the mappings this target syncs; every known one until its first sync
          and (c.target_id is not null or not exists (select 1 from pyglue.sync_cursors c2 where c2.target_id = t.id))
        order by t.tenancy_id, t.name, m.name
    loop
        execute format('select count(*) from %s where %I = $1 and sequence_id > $2',
                       v_row.source_table, v_row.tenancy_column)
        into v_live using v_row.tenancy_id, v_row.cursor;
        v_live := v_live + pyglue._unsequenced_rows(v_row.source_table::regclass, v_row.tenancy_id, v_row.cursor);
        select count(*) into v_dead from pyglue.deleted_rows d
        where d.tenancy_id = v_row.tenancy_id and d.table_name = v_row.source_table
          and (d.sequence_id > v_row.cursor or d.should_update_sequence_id);
        execute format('select min(sequence_id) from %s where %I = $1 and sequence_id > $2',
                       v_row.source_table, v_row.tenancy_column)
        into v_oldest using v_row.tenancy_id, v_row.cursor;
        v_oldest := least(v_oldest, (select min(d.sequence_id) from pyglue.deleted_rows d
                                     where d.tenancy_id = v_row.tenancy_id and d.table_name = v_row.source_table
                                       and d.sequence_id > v_row.cursor));
        oldest_unapplied_age := now() - (select m.stamped_at from pyglue.sequence_marks m
                                         where m.last_id >= v_oldest order by m.last_id limit 1);
        failing := v_row.failing;
        tenancy_id := v_row.tenancy_id;
        target_name := v_row.name;
        enabled := v_row.enabled;
        mapping_name := v_row.mapping_name;
        last_synced_sequence_id := v_row.cursor;
        pending_rows := v_live + v_dead;
        last_success_at := v_row.last_success_at;
        last_error := v_row.last_error;
        last_error_at := v_row.last_error_at;
        retry_after := v_row.retry_after;
        queue_depth := v_row.depth;
        dead_requests := v_row.dead;
        oldest_pending_age := v_row.oldest;
        return next;
    end loop;
end;
$$;

comment on function pyglue.sync_status(uuid) is
    'Per sync target and mapping: cursor, pending changes in rows, last success and error, whether failing, lag, queue depth, dead requests.';

-- copied from sql/functions/pyglue.webhook_status.sql
-- pyglue.webhook_status(p_tenancy_id): per webhook endpoint of a tenancy (or of all):
-- state (ok, retrying, parked, disabled), pending_events (rows of its tables and their
-- tombstones past its cursor or not yet sequenced), its cursor, last delivery, last
-- success and failure with the status code, error and a response excerpt, attempts,
-- the next retry, and lag_seconds: how long ago the oldest change it has not received
-- was sequenced (null when it has none). The URL is shown without user:password@; the
-- secret never.
create or replace function pyglue.webhook_status(p_tenancy_id uuid default null)
returns table (
    tenancy_id uuid, name text, url text, tables text[], mappings text[], enabled boolean, state text,
    pending_events bigint, last_delivered_sequence_id bigint, last_delivered_at timestamptz,
    last_success_at timestamptz, last_failure_at timestamptz, last_status integer, last_error text,
    last_response text, attempts integer, retry_after timestamptz, parked_at timestamptz,
    lag_seconds double precision)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
declare
    v_hook record;
    v_table record;
    v_count bigint;
    v_min bigint;
    v_pending bigint;
    v_oldest bigint;
begin
    for v_hook in
        select w.* from pyglue.webhooks w
        where p_tenancy_id is null or w.tenancy_id = p_tenancy_id
        order by w.tenancy_id, w.name
    loop
        v_pending := 0;
        v_oldest := null;
        for v_table in
            select t.table_name, t.tenancy_column from pyglue.tracked_tables t
            where v_hook.tables is null or t.table_name::text = any (v_hook.tables)
        loop
            execute format('select count(*), min(sequence_id) from %s where %I = $1 and sequence_id > $2',
                           v_table.table_name, v_table.tenancy_column)
            into v_count, v_min using v_hook.tenancy_id, v_hook.last_delivered_sequence_id;
            v_pending := v_pending + v_count
                + pyglue._unsequenced_rows(v_table.table_name, v_hook.tenancy_id, v_hook.last_delivered_sequence_id);
            v_oldest := least(v_oldest, v_min);
            select count(*), min(d.sequence_id) filter (where d.sequence_id > v_hook.last_delivered_sequence_id)
            into v_count, v_min
            from pyglue.deleted_rows d
            where d.tenancy_id = v_hook.tenancy_id and d.table_name = v_table.table_name::text
              and (d.sequence_id > v_hook.last_delivered_sequence_id or d.should_update_sequence_id);
            v_pending := v_pending + v_count;
            v_oldest := least(v_oldest, v_min);
        end loop;
        tenancy_id := v_hook.tenancy_id;
        name := v_hook.name;
        url := regexp_replace(v_hook.url, '^([A-Za-z]+://)[^/?#@]*@', '\1');
        tables := v_hook.tables;
        mappings := v_hook.mappings;
        enabled := v_hook.enabled;
        state := case when v_hook.parked_at is not null then 'parked'
                      when not v_hook.enabled then 'disabled'
                      when v_hook.retry_after is not null then 'retrying'
                      else 'ok' end;
        pending_events := v_pending;
        last_delivered_sequence_id := v_hook.last_delivered_sequence_id;
        last_delivered_at := v_hook.last_delivered_at;
        last_success_at := v_hook.last_success_at;
        last_failure_at := v_hook.last_failure_at;
        last_status := v_hook.last_status;
        last_error := v_hook.last_error;
        last_response := v_hook.last_response;
        attempts := v_hook.attempts;
        retry_after := v_hook.retry_after;
        parked_at := v_hook.parked_at;
        lag_seconds := extract(epoch from now() - (select m.stamped_at from pyglue.sequence_marks m
                                                   where m.last_id >= v_oldest order by m.last_id limit 1));
        return next;
    end loop;
end;
$$;

comment on function pyglue.webhook_status(uuid) is
    'Per webhook endpoint: state, pending events, cursor, last success and failure (status, error, response excerpt), retry time, lag in seconds. Never the secret.';

select pyglue.track_table(t.table_name, t.tenancy_column)
from pyglue.tracked_tables t join pg_class c on c.oid = t.table_name
order by t.table_name::text;
