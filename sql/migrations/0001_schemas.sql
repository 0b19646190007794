-- schemas: one per concern (pyglue machinery, the app model, billing state), so every
-- name in the code reads schema.name. Billing stays empty until its tables arrive.
-- depends:

create schema if not exists pyglue;
comment on schema pyglue is 'pyglue machinery: change tracking, deleted-row log, sequencer, request queue, sync targets, fusebox, cache';

create schema if not exists app;
comment on schema app is 'The reference multi-tenant model: projects, tenancies, users, contact channels, teams, members, auth methods, events';

create schema if not exists billing;
comment on schema billing is 'Products, versions, subscriptions, purchases and the item ledger';
