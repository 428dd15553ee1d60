"""PostgreSQL access: connection pools and the numbered SQL migrations."""
