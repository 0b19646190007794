drop index if exists app.users_display_name_trgm_idx;
drop index if exists app.contact_channels_value_trgm_idx
