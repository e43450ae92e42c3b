-- Push tokens: where to reach a device that is not connected. A token belongs to one device
-- (a token seen again moves to the device that registered it last), and a device has at most
-- one token per provider (a refreshed token replaces the old one). Removed with the device.

CREATE TABLE push_tokens (
    provider   TEXT NOT NULL,
    token      TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    app_id     TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    PRIMARY KEY (provider, token),
    UNIQUE (user_id, device_id, provider),
    FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
) WITHOUT ROWID;
