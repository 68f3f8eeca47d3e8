-- Bench schema step 3: a data backfill that touches every row.
UPDATE documents SET tag = substr(title, 1, 3) WHERE tag IS NULL;
INSERT OR IGNORE INTO tags (name) SELECT DISTINCT tag FROM documents;
