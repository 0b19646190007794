-- pyglue demo --reset: the demo projects go, their tenancies and every row of them by cascade.
delete from app.projects where id = any (%(projects)s::text[]) returning id
