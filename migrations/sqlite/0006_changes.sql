-- Every change to what gateways cache (apps, their app-key hashes, signing keys, the root
-- key's hash), recorded by triggers in the same transaction as the change, whoever makes it
-- (a gateway, the CLI, SQL by hand). Each gateway reads the new rows every second and
-- drops what they name from its caches; the janitor deletes rows older than an hour.
-- `subject` is what a change announcement says: 'app APP_ID', 'keys APP_ID' or 'root'.
CREATE TABLE changes (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    subject TEXT NOT NULL,
    at      INTEGER NOT NULL
);

CREATE TRIGGER changes_app_updated AFTER UPDATE ON apps BEGIN
    INSERT INTO changes (subject, at) VALUES ('app ' || NEW.app_id, CAST(strftime('%s', 'now') AS INTEGER));
END;
CREATE TRIGGER changes_app_deleted AFTER DELETE ON apps BEGIN
    INSERT INTO changes (subject, at) VALUES ('app ' || OLD.app_id, CAST(strftime('%s', 'now') AS INTEGER));
END;
CREATE TRIGGER changes_keys_inserted AFTER INSERT ON app_keys BEGIN
    INSERT INTO changes (subject, at) VALUES ('keys ' || NEW.app_id, CAST(strftime('%s', 'now') AS INTEGER));
END;
CREATE TRIGGER changes_keys_updated AFTER UPDATE ON app_keys BEGIN
    INSERT INTO changes (subject, at) VALUES ('keys ' || NEW.app_id, CAST(strftime('%s', 'now') AS INTEGER));
END;
CREATE TRIGGER changes_keys_deleted AFTER DELETE ON app_keys BEGIN
    INSERT INTO changes (subject, at) VALUES ('keys ' || OLD.app_id, CAST(strftime('%s', 'now') AS INTEGER));
END;
CREATE TRIGGER changes_settings_inserted AFTER INSERT ON settings BEGIN
    INSERT INTO changes (subject, at) VALUES ('root', CAST(strftime('%s', 'now') AS INTEGER));
END;
CREATE TRIGGER changes_settings_updated AFTER UPDATE ON settings BEGIN
    INSERT INTO changes (subject, at) VALUES ('root', CAST(strftime('%s', 'now') AS INTEGER));
END;
