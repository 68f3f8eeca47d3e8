-- Let users pin notes, and list a user's notes newest first without a table scan.
ALTER TABLE notes ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0 CHECK (pinned IN (0, 1));

CREATE INDEX notes_by_user ON notes (user_id, pinned DESC, created_at DESC);
