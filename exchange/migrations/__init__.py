"""SQL migrations, applied in file-name order by exchange.store.Store.migrate()."""
