"""Give every user a display name, backfilled from the local part of their e-mail.

A data backfill is easier to get right in Python than in SQL: `alice.smith@x` becomes
`Alice Smith`. Runs inside the reconciler's transaction: do not commit here.
"""

import sqlite3


def migrate(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE users ADD COLUMN display_name TEXT")
    rows = conn.execute("SELECT id, email FROM users").fetchall()
    for user_id, email in rows:
        local = email.split("@", 1)[0]
        name = " ".join(part.capitalize() for part in local.replace("_", ".").split(".") if part)
        conn.execute("UPDATE users SET display_name = ? WHERE id = ?", (name or email, user_id))
