-- Health gate for v3: every user has a display name after the backfill.
SELECT id, email FROM users WHERE display_name IS NULL OR display_name = '' LIMIT 1;
