-- Bench schema step 2: list a tag's documents newest first without a table scan.
CREATE INDEX documents_by_tag ON documents (tag, created_at DESC);
