"""Persistence: the PostgreSQL store and its table groups, the CDR writer, embedded PostgreSQL."""
