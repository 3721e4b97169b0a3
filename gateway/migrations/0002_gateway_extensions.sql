-- Gateway_Rust schema, version 2: what the gateway needs beyond the seed.
-- Every change is listed, with its reason, in docs/sinks/postgres.md
-- ("Deviations from the seed").

-- Protocol kinds the seed lacks. (Usable once this migration committed;
-- nothing below uses them.)
ALTER TYPE protocol_kind ADD VALUE IF NOT EXISTS 'ModbusRtuOverTcp';
ALTER TYPE protocol_kind ADD VALUE IF NOT EXISTS 'Simulator';

-- Several gateways may share one database: the rows a gateway owns carry
-- its `gateway_id`, and names are unique per gateway instead of globally.
ALTER TABLE devices ADD COLUMN gateway_id VARCHAR(255) NOT NULL DEFAULT 'default';
ALTER TABLE devices DROP CONSTRAINT devices_name_key;
ALTER TABLE devices ADD CONSTRAINT devices_gateway_name_unique UNIQUE (gateway_id, name);

ALTER TABLE alert_rules ADD COLUMN gateway_id VARCHAR(255) NOT NULL DEFAULT 'default';
ALTER TABLE alert_rules DROP CONSTRAINT alert_rules_name_key;
ALTER TABLE alert_rules ADD CONSTRAINT alert_rules_gateway_name_unique UNIQUE (gateway_id, name);

ALTER TABLE driver_configs ADD COLUMN gateway_id VARCHAR(255) NOT NULL DEFAULT 'default';
ALTER TABLE driver_configs DROP CONSTRAINT driver_configs_name_key;
ALTER TABLE driver_configs ADD CONSTRAINT driver_configs_gateway_name_unique UNIQUE (gateway_id, name);
-- Which device a driver config belongs to (one per device file).
ALTER TABLE driver_configs ADD COLUMN device_id UUID REFERENCES devices(id) ON DELETE CASCADE;

ALTER TABLE driver_registry ADD COLUMN gateway_id VARCHAR(255) NOT NULL DEFAULT 'default';
ALTER TABLE driver_registry DROP CONSTRAINT driver_registry_pkey;
ALTER TABLE driver_registry ADD CONSTRAINT driver_registry_pkey PRIMARY KEY (gateway_id, protocol);

-- Idempotent alert writes: the id of the ALERT_FIRED event that opened the
-- row. A frame replayed after a crash finds its row and changes nothing.
ALTER TABLE alert_history ADD COLUMN event_id VARCHAR(128);
ALTER TABLE alert_history ADD CONSTRAINT alert_history_event_id_unique UNIQUE (event_id);

-- Audit rows written from bus events: idempotent by event id, with the
-- gateway, who acted (the gateway has no user accounts of its own, so
-- `user_id` stays NULL) and the resource's name (resources are named, the
-- seed's `resource_id` is a UUID and is set when the resource has a row).
ALTER TABLE audit_logs ADD COLUMN gateway_id VARCHAR(255);
ALTER TABLE audit_logs ADD COLUMN event_id VARCHAR(128);
ALTER TABLE audit_logs ADD CONSTRAINT audit_logs_event_id_unique UNIQUE (event_id);
ALTER TABLE audit_logs ADD COLUMN actor VARCHAR(255);
ALTER TABLE audit_logs ADD COLUMN resource_name TEXT;

-- The seed's view joins tags and active alerts in one GROUP BY, so every
-- count is multiplied by the other (3 tags and 2 active alerts report 6
-- and 6). Counting distinct ids gives the numbers the columns promise; the
-- gateway id is added at the end.
DROP VIEW device_overview;
CREATE VIEW device_overview AS
SELECT
    d.id,
    d.name,
    d.description,
    d.protocol,
    d.location,
    d.status,
    d.last_seen,
    d.enabled,
    COUNT(DISTINCT t.id) AS tag_count,
    COUNT(DISTINCT t.id) FILTER (WHERE t.enabled) AS enabled_tag_count,
    COUNT(DISTINCT ah.id) AS active_alert_count,
    d.gateway_id
FROM devices d
LEFT JOIN tags t ON d.id = t.device_id
LEFT JOIN alert_history ah ON d.id = ah.device_id AND ah.status = 'ACTIVE'
GROUP BY d.id, d.name, d.description, d.protocol, d.location, d.status, d.last_seen, d.enabled, d.gateway_id;
