-- A counter every change that must end what was read before it bumps: a new password, a
-- role change, an activation change. A login (or password change) that verified a password
-- commits only while the counter is still the one it read, with the row locked, so nothing
-- it decided on can have changed under it.
ALTER TABLE users ADD COLUMN security_version bigint NOT NULL DEFAULT 0;
