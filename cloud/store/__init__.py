"""Durable state: the relational database (SQLite or PostgreSQL) and the blob store."""
