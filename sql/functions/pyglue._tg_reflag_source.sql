-- pyglue._tg_reflag_source(source_table, columns, source_columns): trigger installed by
-- pyglue.track_dependency on a table a mapping reads beside its source table.
--
-- Flags the source rows that the changed rows lead to (source_columns = columns), old
-- and new versions alike. In two statements: rows already flagged are only locked (FOR
-- NO KEY UPDATE; no new row version), the others are flagged, which locks them too. The
-- lock lasts until the writing transaction ends, so the sequencer (SKIP LOCKED) cannot
-- stamp such a row and a sync read it without this transaction's change; a row the
-- sequencer is stamping right now is waited for, then flagged again.
-- Statement level (INSERT, DELETE): the rows come from the transition table
-- pyglue_dependent_rows. Row level (UPDATE): OLD and NEW.
-- SECURITY DEFINER: a role allowed to write the dependent table need not be allowed to
-- update the source table.
create or replace function pyglue._tg_reflag_source()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    v_source regclass := tg_argv[0]::regclass;
    v_columns name[] := tg_argv[1]::name[];
    v_source_columns name[] := tg_argv[2]::name[];
    v_rows text;
    v_match text;
    v_lock text;
    v_flag text;
begin
    v_rows := format('select distinct %s from %s',
                     (select string_agg(format('r.%I', c), ', ') from unnest(v_columns) as c),
                     case when tg_level = 'ROW' then 'unnest(array[$1, $2]) as r' else 'pyglue_dependent_rows r' end);
    v_match := (select string_agg(format('s.%I = k.%I', s, c), ' and ')
                from unnest(v_source_columns, v_columns) as x(s, c));
    v_lock := format('select 1 from %s s join (%s) k on %s where s.should_update_sequence_id'
                     ' for no key update of s', v_source, v_rows, v_match);
    v_flag := format('update %s s set should_update_sequence_id = true from (%s) k'
                     ' where %s and not s.should_update_sequence_id', v_source, v_rows, v_match);
    if tg_level = 'ROW' then
        execute v_lock using old, new;
        execute v_flag using old, new;
    else
        execute v_lock;
        execute v_flag;
    end if;
    return null;
end;
$$;

comment on function pyglue._tg_reflag_source() is
    'Trigger installed by pyglue.track_dependency: flag (and lock) the source rows a changed dependent row leads to.';
