-- Each app's request quota on the endpoints its app key authenticates: requests a second on
-- average (0: no limit) and at once. Counted in each gateway's memory; stored here so that
-- every gateway applies the same settings.
ALTER TABLE apps ADD COLUMN requests_per_second BIGINT NOT NULL DEFAULT 0
    CHECK (requests_per_second >= 0);
ALTER TABLE apps ADD COLUMN requests_burst BIGINT NOT NULL DEFAULT 0
    CHECK (requests_burst >= 0);
