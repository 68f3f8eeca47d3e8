-- Bench schema step 1: tag every document and keep a table of known tags.
ALTER TABLE documents ADD COLUMN tag TEXT;
CREATE TABLE tags (name TEXT PRIMARY KEY, created_at TEXT NOT NULL DEFAULT '1970-01-01');
