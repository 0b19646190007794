select pyglue.untrack_table('app.team_members', true);
select pyglue.untrack_table('app.teams', true);
select pyglue.untrack_table('app.contact_channels', true);
select pyglue.untrack_table('app.users', true);
