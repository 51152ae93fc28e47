-- The record of every revocation, so that Redis can be rebuilt from Postgres when it loses
-- its data. Ended sessions are already recorded (`sessions.revoked_at`); what was not is the
-- per-user "not before" time (logout-all, password reset, role change, deactivation), which
-- also refuses tokens of sessions Postgres never ended (a login racing the change).

-- The latest not-before time of each user: tokens issued earlier are refused. Only ever
-- raised. A row older than the access-token lifetime refuses nothing that has not expired.
-- No foreign key to users: the revocation is recorded on a connection of its own while the
-- change that causes it may hold the user's row locked (FOR UPDATE), and a foreign key's
-- check would wait on that lock for a transaction that waits on this write. A row left by a
-- deleted user names nobody and refuses nothing.
CREATE TABLE token_not_before (
    user_id     uuid PRIMARY KEY,
    not_before  timestamptz NOT NULL
);
CREATE INDEX token_not_before_idx ON token_not_before (not_before);

-- The rebuild reads the sessions ended within the last access-token lifetime.
CREATE INDEX sessions_revoked_at_idx ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;
