-- Bench schema step 2: tag every document, keep the known tags, list a tag's documents
-- newest first without a table scan.
ALTER TABLE documents ADD COLUMN tag TEXT;
CREATE TABLE tags (name TEXT PRIMARY KEY, created_at TEXT NOT NULL DEFAULT '1970-01-01');
CREATE INDEX documents_by_tag ON documents (tag, created_at DESC);
