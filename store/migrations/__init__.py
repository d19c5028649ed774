"""SQL migrations, applied in file-name order by store.database.Store.migrate()."""
