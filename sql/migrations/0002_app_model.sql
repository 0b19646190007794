-- app model: the reference multi-tenant tables. Every table is keyed by tenancy_id first
-- so each tenancy's rows cluster in every index; deleting a user or a team cascades to
-- what hangs off it, so change capture sees the children go too.
-- depends: 0001_schemas

create table if not exists app.projects (
    id           text primary key check (id ~ '^[A-Za-z0-9_-]{1,64}$'),
    display_name text not null,
    created_at   timestamptz not null default now()
);
insert into app.projects (id, display_name) values ('internal', 'Internal')
on conflict (id) do nothing;

create table if not exists app.tenancies (
    id         uuid primary key default gen_random_uuid(),
    project_id text not null references app.projects (id) on delete cascade,
    branch_id  text not null default 'main',
    created_at timestamptz not null default now(),
    unique (project_id, branch_id)
);

create table if not exists app.users (
    tenancy_id                uuid not null references app.tenancies (id) on delete cascade,
    id                        uuid not null default gen_random_uuid(),
    display_name              text,
    profile_image_url         text,
    is_anonymous              boolean not null default false,
    signed_up_at              timestamptz not null default now(),
    last_active_at            timestamptz,
    created_at                timestamptz not null default now(),
    client_metadata           jsonb,
    client_read_only_metadata jsonb,
    server_metadata           jsonb,
    primary key (tenancy_id, id)
);
-- keyset pagination of the user list: sign-up time, then id
create index if not exists users_tenancy_signed_up_idx on app.users (tenancy_id, signed_up_at, id);
create index if not exists users_tenancy_last_active_idx on app.users (tenancy_id, last_active_at);

create table if not exists app.contact_channels (
    tenancy_id    uuid not null,
    id            uuid not null default gen_random_uuid(),
    user_id       uuid not null,
    type          text not null check (type in ('email', 'phone')),
    value         text not null,
    is_primary    boolean not null default false,
    is_verified   boolean not null default false,
    used_for_auth boolean not null default false,
    created_at    timestamptz not null default now(),
    primary key (tenancy_id, id),
    foreign key (tenancy_id, user_id) references app.users (tenancy_id, id) on delete cascade
);
create index if not exists contact_channels_user_idx on app.contact_channels (tenancy_id, user_id);
-- at most one primary channel of each type per user
create unique index if not exists contact_channels_one_primary_idx
    on app.contact_channels (tenancy_id, user_id, type) where is_primary;
-- an auth channel value belongs to one user of a tenancy
create unique index if not exists contact_channels_auth_value_idx
    on app.contact_channels (tenancy_id, type, value) where used_for_auth;

create table if not exists app.teams (
    tenancy_id                uuid not null references app.tenancies (id) on delete cascade,
    id                        uuid not null default gen_random_uuid(),
    display_name              text not null,
    profile_image_url         text,
    created_at                timestamptz not null default now(),
    client_metadata           jsonb,
    client_read_only_metadata jsonb,
    server_metadata           jsonb,
    primary key (tenancy_id, id)
);

create table if not exists app.team_members (
    tenancy_id        uuid not null,
    team_id           uuid not null,
    user_id           uuid not null,
    display_name      text,
    profile_image_url text,
    created_at        timestamptz not null default now(),
    primary key (tenancy_id, team_id, user_id),
    foreign key (tenancy_id, team_id) references app.teams (tenancy_id, id) on delete cascade,
    foreign key (tenancy_id, user_id) references app.users (tenancy_id, id) on delete cascade
);
create index if not exists team_members_user_idx on app.team_members (tenancy_id, user_id);

create table if not exists app.auth_methods (
    tenancy_id uuid not null,
    id         uuid not null default gen_random_uuid(),
    user_id    uuid not null,
    kind       text not null check (kind in ('password', 'otp', 'passkey', 'oauth')),
    provider   text,
    created_at timestamptz not null default now(),
    primary key (tenancy_id, id),
    foreign key (tenancy_id, user_id) references app.users (tenancy_id, id) on delete cascade,
    check ((kind = 'oauth') = (provider is not null))
);
create index if not exists auth_methods_user_idx on app.auth_methods (tenancy_id, user_id);

-- events are a log: they outlive the users and teams they mention, so no foreign keys.
create table if not exists app.events (
    tenancy_id   uuid not null references app.tenancies (id) on delete cascade,
    id           uuid not null default gen_random_uuid(),
    event_type   text not null,
    user_id      uuid,
    team_id      uuid,
    occurred_at  timestamptz not null default now(),
    country_code text check (country_code ~ '^[A-Z]{2}$'),
    data         jsonb not null default '{}',
    primary key (tenancy_id, id)
);
create index if not exists events_type_time_idx on app.events (tenancy_id, event_type, occurred_at);
create index if not exists events_user_time_idx on app.events (tenancy_id, user_id, occurred_at) where user_id is not null;
