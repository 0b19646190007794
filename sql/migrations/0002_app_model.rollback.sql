drop table if exists app.events, app.auth_methods, app.team_members, app.teams,
    app.contact_channels, app.users, app.tenancies, app.projects;
