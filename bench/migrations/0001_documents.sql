-- Bench schema step 1: the documents table (tenants that predate versioning have it).
CREATE TABLE IF NOT EXISTS documents (
    id         INTEGER PRIMARY KEY,
    title      TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at TEXT NOT NULL
);
