-- Failed-login counts and locks per (account, client address), used when `lockout.key` is
-- `account_and_ip`; with the default `account`, the `users` columns hold them and this table
-- stays empty. `client_key` is the address rate limits count by (an IPv4 address, or an IPv6
-- network of `rate_limits.ipv6_prefix` bits). A row is written only while its user's row is
-- locked (FOR UPDATE), so a pair's failures, a login's decision and an unlock of the same
-- account happen one after another, exactly as the `users` columns' do. A success removes
-- its pair's row; an unlock or a new password removes every row of the account.
CREATE TABLE login_failures (
    user_id                uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_key             text NOT NULL,
    failed_login_attempts  integer NOT NULL,
    locked_until           timestamptz,
    updated_at             timestamptz NOT NULL,
    PRIMARY KEY (user_id, client_key)
);
