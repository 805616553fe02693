-- Every change to what gateways cache (apps, their app-key hashes, signing keys, the root
-- key's hash), recorded by triggers in the same transaction as the change, whoever makes it
-- (a gateway, the CLI, SQL by hand). Each gateway reads the new rows every second and
-- drops what they name from its caches (beside NOTIFY keygate_changes, which is faster);
-- the janitor deletes rows older than an hour. `subject` is what a change announcement
-- says: 'app APP_ID', 'keys APP_ID' or 'root'.
CREATE TABLE changes (
    seq     BIGSERIAL PRIMARY KEY,
    subject TEXT NOT NULL,
    at      BIGINT NOT NULL
);

CREATE FUNCTION keygate_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    row_app TEXT;
BEGIN
    IF TG_TABLE_NAME = 'settings' THEN
        INSERT INTO changes (subject, at) VALUES ('root', extract(epoch FROM now())::bigint);
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN
        row_app := OLD.app_id;
    ELSE
        row_app := NEW.app_id;
    END IF;
    INSERT INTO changes (subject, at) VALUES (
        CASE WHEN TG_TABLE_NAME = 'apps' THEN 'app ' ELSE 'keys ' END || row_app,
        extract(epoch FROM now())::bigint);
    RETURN NULL;
END;
$$;

CREATE TRIGGER changes_apps AFTER UPDATE OR DELETE ON apps
    FOR EACH ROW EXECUTE FUNCTION keygate_record_change();
CREATE TRIGGER changes_app_keys AFTER INSERT OR UPDATE OR DELETE ON app_keys
    FOR EACH ROW EXECUTE FUNCTION keygate_record_change();
CREATE TRIGGER changes_settings AFTER INSERT OR UPDATE ON settings
    FOR EACH ROW EXECUTE FUNCTION keygate_record_change();
