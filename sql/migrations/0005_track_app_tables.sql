-- track the app model: users, contact channels, teams and team members are synced to
-- tenants' databases, so every change to them is captured from now on. Existing rows
-- start flagged and reach the targets with the first sequencer pass.
-- depends: 0004_change_capture_functions

select pyglue.track_table('app.users');
select pyglue.track_table('app.contact_channels');
select pyglue.track_table('app.teams');
select pyglue.track_table('app.team_members');
