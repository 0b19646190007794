-- billing.regen_subscriptions_step(p_project_id, p_after_tenancy_id, p_after_subscription_id,
-- p_walk): one resumable step of billing.regen_subscriptions_to_latest. Walks the next
-- p_walk subscriptions of the project's tenancies in key order (tenancy_id, id) after the
-- given one (nulls: from the start) and moves the stale ones among them (live, not on their
-- product's current version) to the current version.
--
-- A caller commits after each step and passes the returned key back, so a run of many
-- steps reads each subscription once (`pyglue billing regen` does this); after a crash it
-- starts again from the beginning and moves only what is still stale.
-- Each move is logged in billing.subscription_moves (from, to, when; never updated), and a
-- Stripe-backed move queues a row in billing.stripe_outbox asking for the new version id in
-- the Stripe subscription's metadata (pyglue_product_version_id), in the same statement; a
-- subscription with an undelivered row gets its metadata replaced and is due at once. The
-- copies of the version's product_line / is_add_on / stackable follow the version (a
-- foreign key holds them equal). Rows already current are read, not written.
-- Two statements per tenancy: the walk (by primary key) reads the rows and their versions;
-- the UPDATE moves those still on the version the walk saw (joined by primary key, so a row
-- another run moved meanwhile is re-checked after its lock is released and skipped, and
-- the log's from-version is always the one the row left).
-- Returns: moved (subscriptions moved), walked (subscriptions read), and the key of the
-- last one read (last_tenancy_id, last_subscription_id; null when walked = 0: done).
-- Errors: 22023 bad walk size; P0002 unknown project; 23505 a move that would give a
-- customer two live plans in one product line, naming the project.
-- Locks: the moved rows; the products of each tenancy with something to move (FOR SHARE:
-- billing.upsert_product of them waits until the step commits); the undelivered outbox
-- rows it replaces.
create or replace function billing.regen_subscriptions_step(p_project_id text, p_after_tenancy_id uuid,
                                                            p_after_subscription_id uuid,
                                                            p_walk integer default 10000)
returns table (moved bigint, walked bigint, last_tenancy_id uuid, last_subscription_id uuid)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    v_tenancy_id uuid;
    v_after uuid;
    v_from jsonb;  -- {subscription id: version} of the stale rows walked
    v_last uuid;
    v_walked bigint;
    v_moved bigint;
    v_detail text;
begin
    if p_walk is null or p_walk < 1 then
        raise exception 'walk size must be at least 1, got %', coalesce(p_walk::text, 'null') using errcode = '22023';
    end if;
    if not exists (select 1 from app.projects pr where pr.id = p_project_id) then
        raise exception 'no project %', coalesce(quote_literal(p_project_id), 'null') using errcode = 'P0002';
    end if;
    moved := 0;
    walked := 0;
    begin
        for v_tenancy_id in
            select tn.id from app.tenancies tn
            where tn.project_id = p_project_id and (p_after_tenancy_id is null or tn.id >= p_after_tenancy_id)
              and exists (select 1 from billing.products p where p.tenancy_id = tn.id)
            order by tn.id
        loop
            v_after := case when v_tenancy_id = p_after_tenancy_id and p_after_subscription_id is not null
                            then p_after_subscription_id else '00000000-0000-0000-0000-000000000000' end;
            -- the walk: next rows by primary key; the stale ones with the version they are on
            select count(*), (array_agg(w.id order by w.id desc))[1],
                   jsonb_object_agg(w.id, w.product_version_id) filter (where w.stale)
            into v_walked, v_last, v_from
            from (
                select s.id, s.product_version_id,
                       s.ended_at is null and s.product_version_id <> p.current_version_id as stale
                from billing.subscriptions s
                join billing.products p on p.tenancy_id = s.tenancy_id and p.product_id = s.product_id
                -- a range the primary key index can start from (an "is null or" could not)
                where s.tenancy_id = v_tenancy_id and s.id >= v_after and s.id is distinct from p_after_subscription_id
                order by s.id
                limit p_walk - walked
            ) w;
            continue when v_walked = 0;
            walked := walked + v_walked;
            last_tenancy_id := v_tenancy_id;
            last_subscription_id := v_last;
            if v_from is not null then
                -- the products stay as they are until we commit (taken only when there is
                -- something to move: a run that moves nothing writes nothing, not even a
                -- lock); the UPDATE reads the current versions after this
                perform 1 from billing.products p where p.tenancy_id = v_tenancy_id for share;
                with moving as (
                    update billing.subscriptions s
                    set product_version_id = v.id, product_line = v.product_line, is_add_on = v.is_add_on,
                        stackable = v.stackable
                    from billing.products p join billing.product_versions v on v.id = p.current_version_id
                    -- the walked range of the primary key finds the rows; the version the walk
                    -- saw is looked up in a jsonb object by id (no join with a list of them: the
                    -- planner, blind to its size, ran one as a nested loop over the list per row)
                    where s.tenancy_id = v_tenancy_id and s.id >= v_after and s.id <= v_last
                      and s.product_version_id = v_from ->> s.id::text
                      and s.ended_at is null and p.tenancy_id = s.tenancy_id and p.product_id = s.product_id
                      and v.id <> s.product_version_id
                    returning s.id, v_from ->> s.id::text as from_version_id, v.id as to_version_id,
                              s.stripe_subscription_id
                ), logged as (
                    insert into billing.subscription_moves (tenancy_id, subscription_id, from_version_id, to_version_id)
                    select v_tenancy_id, m.id, m.from_version_id, m.to_version_id from moving m
                ), queued as (
                    insert into billing.stripe_outbox (tenancy_id, subscription_id, stripe_subscription_id, metadata)
                    select v_tenancy_id, m.id, m.stripe_subscription_id,
                           jsonb_build_object('pyglue_product_version_id', m.to_version_id)
                    from moving m where m.stripe_subscription_id is not null
                    on conflict (tenancy_id, subscription_id) where delivered_at is null
                    do update set metadata = excluded.metadata, next_attempt_at = now()
                )
                select count(*) into v_moved from moving;
                moved := moved + v_moved;
            end if;
            exit when walked >= p_walk;
        end loop;
    exception when unique_violation then
        get stacked diagnostics v_detail = pg_exception_detail;
        raise exception 'regen of project % would give a customer two live plans in one product line in tenancy %: %',
            p_project_id, v_tenancy_id, v_detail using errcode = '23505';
    end;
    return next;
end;
$$;

comment on function billing.regen_subscriptions_step(text, uuid, uuid, integer) is
    'One resumable step of the regen: walk the next p_walk subscriptions of the project after the given key, move the stale ones. Returns moved, walked and the last key read.';
