-- Each run starts from an empty database (left in place afterwards, for inspection).
drop database if exists {database} with (force)
