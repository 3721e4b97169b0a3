-- Gateway_Rust schema, version 1: the seed's PostgreSQL design
-- (shared/seeds/003, section "PostgreSQL relational design"), table for table.
-- Deviations (extensions, gateway ids, event ids, extra protocol kinds)
-- are applied by later migrations and listed in docs/sinks/postgres.md.
-- Omitted from the seed's section 1: CREATE DATABASE (the operator's job),
-- the extensions (gen_random_uuid() is built into PostgreSQL >= 13, and
-- CREATE EXTENSION needs a superuser) and SET timezone (a session setting).

-- Protocol kinds
CREATE TYPE protocol_kind AS ENUM (
    'ModbusTcp',
    'ModbusRtu',
    'OpcUa',
    'Mqtt',
    'Custom'
);

-- Device status
CREATE TYPE device_status AS ENUM (
    'Online',
    'Offline',
    'Error',
    'Maintenance',
    'Unknown'
);

-- Devices
CREATE TABLE devices (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL UNIQUE,
    description TEXT,
    protocol protocol_kind NOT NULL,
    location VARCHAR(255),
    endpoint VARCHAR(255) NOT NULL,
    config JSONB NOT NULL DEFAULT '{}',
    enabled BOOLEAN NOT NULL DEFAULT true,
    status device_status NOT NULL DEFAULT 'Unknown',
    last_seen TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    created_by VARCHAR(255),
    updated_by VARCHAR(255),

    -- Constraints
    CONSTRAINT devices_name_not_empty CHECK (LENGTH(TRIM(name)) > 0),
    CONSTRAINT devices_endpoint_not_empty CHECK (LENGTH(TRIM(endpoint)) > 0)
);

-- Indexes
CREATE INDEX idx_devices_protocol ON devices(protocol);
CREATE INDEX idx_devices_status ON devices(status);
CREATE INDEX idx_devices_enabled ON devices(enabled);
CREATE INDEX idx_devices_created_at ON devices(created_at);
CREATE INDEX idx_devices_location ON devices(location) WHERE location IS NOT NULL;
CREATE INDEX idx_devices_config_gin ON devices USING gin(config);

-- Tag data types
CREATE TYPE tag_data_type AS ENUM (
    'Boolean',
    'Int8',
    'UInt8',
    'Int16',
    'UInt16',
    'Int32',
    'UInt32',
    'Int64',
    'UInt64',
    'Float',
    'Double',
    'String',
    'DateTime',
    'ByteArray'
);

-- Tag access
CREATE TYPE tag_access AS ENUM (
    'Read',
    'Write',
    'ReadWrite'
);

-- Tags
CREATE TABLE tags (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    device_id UUID NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    name VARCHAR(255) NOT NULL,
    description TEXT,
    address VARCHAR(255) NOT NULL,
    data_type tag_data_type NOT NULL,
    access_type tag_access NOT NULL DEFAULT 'Read',
    unit VARCHAR(50),
    scaling DOUBLE PRECISION DEFAULT 1.0,
    tag_offset DOUBLE PRECISION DEFAULT 0.0,
    min_value DOUBLE PRECISION,
    max_value DOUBLE PRECISION,
    deadband DOUBLE PRECISION,
    scan_rate INTEGER, -- milliseconds
    enabled BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),

    -- Constraints
    CONSTRAINT tags_device_name_unique UNIQUE(device_id, name),
    CONSTRAINT tags_name_not_empty CHECK (LENGTH(TRIM(name)) > 0),
    CONSTRAINT tags_address_not_empty CHECK (LENGTH(TRIM(address)) > 0),
    CONSTRAINT tags_scaling_positive CHECK (scaling > 0),
    CONSTRAINT tags_scan_rate_positive CHECK (scan_rate IS NULL OR scan_rate > 0),
    CONSTRAINT tags_min_max_order CHECK (min_value IS NULL OR max_value IS NULL OR min_value <= max_value)
);

-- Indexes
CREATE INDEX idx_tags_device_id ON tags(device_id);
CREATE INDEX idx_tags_data_type ON tags(data_type);
CREATE INDEX idx_tags_enabled ON tags(enabled);
CREATE INDEX idx_tags_address ON tags(device_id, address);
CREATE INDEX idx_tags_scan_rate ON tags(scan_rate) WHERE scan_rate IS NOT NULL;

-- Comparison operators
CREATE TYPE compare_op AS ENUM (
    'GT',   -- Greater Than
    'LT',   -- Less Than
    'GTE',  -- Greater Than or Equal
    'LTE',  -- Less Than or Equal
    'EQ',   -- Equal
    'NE',   -- Not Equal
    'BETWEEN',
    'NOT_BETWEEN'
);

-- Alert levels
CREATE TYPE alert_level AS ENUM (
    'INFO',
    'WARNING',
    'CRITICAL',
    'FATAL'
);

-- Alert status
CREATE TYPE alert_status AS ENUM (
    'ACTIVE',
    'ACKNOWLEDGED',
    'RESOLVED',
    'SUPPRESSED'
);

-- Alert rules
CREATE TABLE alert_rules (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL UNIQUE,
    description TEXT,
    device_id UUID REFERENCES devices(id) ON DELETE CASCADE,
    tag_id UUID REFERENCES tags(id) ON DELETE CASCADE,
    condition_expression TEXT NOT NULL, -- may be a complex expression
    op compare_op NOT NULL,
    threshold_value DOUBLE PRECISION,
    threshold_high DOUBLE PRECISION, -- for BETWEEN
    threshold_low DOUBLE PRECISION,  -- for BETWEEN
    level alert_level NOT NULL,
    eval_interval INTERVAL NOT NULL DEFAULT '1 minute',
    eval_duration INTERVAL, -- how long the condition must hold
    cooldown_duration INTERVAL DEFAULT '5 minutes',
    enabled BOOLEAN NOT NULL DEFAULT true,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    created_by VARCHAR(255),

    -- Constraints
    CONSTRAINT alert_rules_name_not_empty CHECK (LENGTH(TRIM(name)) > 0),
    CONSTRAINT alert_rules_threshold_check CHECK (
        (op IN ('BETWEEN', 'NOT_BETWEEN') AND threshold_high IS NOT NULL AND threshold_low IS NOT NULL) OR
        (op NOT IN ('BETWEEN', 'NOT_BETWEEN') AND threshold_value IS NOT NULL)
    )
);

-- Alert history
CREATE TABLE alert_history (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    rule_id UUID NOT NULL REFERENCES alert_rules(id) ON DELETE CASCADE,
    device_id UUID REFERENCES devices(id),
    tag_id UUID REFERENCES tags(id),
    fired_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    resolved_at TIMESTAMPTZ,
    acknowledged_at TIMESTAMPTZ,
    acknowledged_by VARCHAR(255),
    triggered_value DOUBLE PRECISION,
    threshold_value DOUBLE PRECISION,
    level alert_level NOT NULL,
    status alert_status NOT NULL DEFAULT 'ACTIVE',
    message TEXT NOT NULL,
    details JSONB DEFAULT '{}',
    duration INTERVAL,

    -- Constraints
    CONSTRAINT alert_history_resolved_after_fired CHECK (resolved_at IS NULL OR resolved_at >= fired_at),
    CONSTRAINT alert_history_ack_after_fired CHECK (acknowledged_at IS NULL OR acknowledged_at >= fired_at)
);

-- Indexes
CREATE INDEX idx_alert_rules_device_tag ON alert_rules(device_id, tag_id);
CREATE INDEX idx_alert_rules_enabled ON alert_rules(enabled);
CREATE INDEX idx_alert_rules_level ON alert_rules(level);
CREATE INDEX idx_alert_history_rule_id ON alert_history(rule_id);
CREATE INDEX idx_alert_history_fired_at ON alert_history(fired_at);
CREATE INDEX idx_alert_history_status ON alert_history(status);
CREATE INDEX idx_alert_history_level ON alert_history(level);
CREATE INDEX idx_alert_history_device_time ON alert_history(device_id, fired_at);

-- Driver status
CREATE TYPE driver_status AS ENUM (
    'LOADED',
    'RUNNING',
    'STOPPED',
    'ERROR',
    'UNLOADED'
);

-- Driver registry
CREATE TABLE driver_registry (
    protocol protocol_kind PRIMARY KEY,
    name VARCHAR(255) NOT NULL,
    version VARCHAR(50) NOT NULL,
    description TEXT,
    file_path TEXT,
    file_hash VARCHAR(128),
    api_version INTEGER NOT NULL DEFAULT 1,
    metadata JSONB DEFAULT '{}',
    capabilities JSONB DEFAULT '[]',
    status driver_status NOT NULL DEFAULT 'LOADED',
    loaded_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    error_message TEXT,

    CONSTRAINT driver_registry_name_not_empty CHECK (LENGTH(TRIM(name)) > 0),
    CONSTRAINT driver_registry_version_not_empty CHECK (LENGTH(TRIM(version)) > 0)
);

-- Driver configs
CREATE TABLE driver_configs (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name VARCHAR(255) NOT NULL UNIQUE,
    description TEXT,
    protocol VARCHAR(50) NOT NULL,
    connection_type VARCHAR(50) NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT true,
    config JSONB NOT NULL DEFAULT '{}',

    -- Performance
    scan_interval INTEGER NOT NULL DEFAULT 1000, -- milliseconds
    timeout INTEGER NOT NULL DEFAULT 5000, -- milliseconds
    max_concurrent INTEGER NOT NULL DEFAULT 10,
    batch_size INTEGER NOT NULL DEFAULT 100,

    -- Retry policy
    max_retries INTEGER NOT NULL DEFAULT 3,
    retry_interval INTEGER NOT NULL DEFAULT 1000, -- milliseconds
    exponential_backoff BOOLEAN NOT NULL DEFAULT true,
    max_retry_interval INTEGER NOT NULL DEFAULT 30000, -- milliseconds

    -- Logging
    log_level VARCHAR(20) NOT NULL DEFAULT 'INFO',
    enable_request_log BOOLEAN NOT NULL DEFAULT false,
    enable_response_log BOOLEAN NOT NULL DEFAULT false,
    max_log_size INTEGER NOT NULL DEFAULT 1000000, -- bytes

    -- SSL/TLS
    enable_ssl BOOLEAN NOT NULL DEFAULT false,
    verify_certificate BOOLEAN NOT NULL DEFAULT true,
    client_cert_path TEXT,
    client_key_path TEXT,
    ca_cert_path TEXT,

    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),

    -- Constraints
    CONSTRAINT driver_configs_name_not_empty CHECK (LENGTH(TRIM(name)) > 0),
    CONSTRAINT driver_configs_scan_interval_positive CHECK (scan_interval > 0),
    CONSTRAINT driver_configs_timeout_positive CHECK (timeout > 0),
    CONSTRAINT driver_configs_max_concurrent_positive CHECK (max_concurrent > 0),
    CONSTRAINT driver_configs_batch_size_positive CHECK (batch_size > 0)
);

-- Indexes
CREATE INDEX idx_driver_configs_protocol ON driver_configs(protocol);
CREATE INDEX idx_driver_configs_enabled ON driver_configs(enabled);
CREATE INDEX idx_driver_configs_connection_type ON driver_configs(connection_type);

-- User roles
CREATE TYPE user_role AS ENUM (
    'ADMIN',
    'OPERATOR',
    'VIEWER',
    'MAINTENANCE'
);

-- User status
CREATE TYPE user_status AS ENUM (
    'ACTIVE',
    'INACTIVE',
    'LOCKED',
    'EXPIRED'
);

-- Users
CREATE TABLE users (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    username VARCHAR(255) NOT NULL UNIQUE,
    email VARCHAR(255) UNIQUE,
    password_hash VARCHAR(255) NOT NULL,
    salt VARCHAR(255),
    full_name VARCHAR(255),
    role user_role NOT NULL DEFAULT 'VIEWER',
    status user_status NOT NULL DEFAULT 'ACTIVE',
    last_login TIMESTAMPTZ,
    failed_login_attempts INTEGER NOT NULL DEFAULT 0,
    locked_until TIMESTAMPTZ,
    password_expires_at TIMESTAMPTZ,
    must_change_password BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    created_by UUID REFERENCES users(id),

    -- Constraints
    CONSTRAINT users_username_not_empty CHECK (LENGTH(TRIM(username)) > 0),
    CONSTRAINT users_email_format CHECK (email IS NULL OR email ~* '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$'),
    CONSTRAINT users_failed_attempts_non_negative CHECK (failed_login_attempts >= 0)
);

-- User sessions
CREATE TABLE user_sessions (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash VARCHAR(255) NOT NULL UNIQUE,
    refresh_token_hash VARCHAR(255),
    ip_address INET,
    user_agent TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    expires_at TIMESTAMPTZ NOT NULL,
    last_activity TIMESTAMPTZ NOT NULL DEFAULT NOW(),
    is_active BOOLEAN NOT NULL DEFAULT true,

    -- Constraints
    CONSTRAINT user_sessions_expires_after_created CHECK (expires_at > created_at)
);

-- Audit log
CREATE TABLE audit_logs (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id UUID REFERENCES users(id),
    action VARCHAR(100) NOT NULL,
    resource_type VARCHAR(100),
    resource_id UUID,
    details JSONB DEFAULT '{}',
    ip_address INET,
    user_agent TEXT,
    success BOOLEAN NOT NULL,
    error_message TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT NOW(),

    -- Constraints
    CONSTRAINT audit_logs_action_not_empty CHECK (LENGTH(TRIM(action)) > 0)
);

-- Indexes
CREATE INDEX idx_users_username ON users(username);
CREATE INDEX idx_users_email ON users(email) WHERE email IS NOT NULL;
CREATE INDEX idx_users_role ON users(role);
CREATE INDEX idx_users_status ON users(status);
CREATE INDEX idx_user_sessions_user_id ON user_sessions(user_id);
CREATE INDEX idx_user_sessions_token ON user_sessions(token_hash);
CREATE INDEX idx_user_sessions_active ON user_sessions(is_active, expires_at);
CREATE INDEX idx_audit_logs_user_action ON audit_logs(user_id, action);
CREATE INDEX idx_audit_logs_created_at ON audit_logs(created_at);
CREATE INDEX idx_audit_logs_resource ON audit_logs(resource_type, resource_id);

-- updated_at maintenance
CREATE OR REPLACE FUNCTION update_updated_at_column()
RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at = NOW();
    RETURN NEW;
END;
$$ language 'plpgsql';

-- ... on every table that has updated_at
CREATE TRIGGER update_devices_updated_at
    BEFORE UPDATE ON devices
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_tags_updated_at
    BEFORE UPDATE ON tags
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_alert_rules_updated_at
    BEFORE UPDATE ON alert_rules
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_driver_configs_updated_at
    BEFORE UPDATE ON driver_configs
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

CREATE TRIGGER update_users_updated_at
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

-- Sets a device's status and last_seen
CREATE OR REPLACE FUNCTION update_device_status(
    device_uuid UUID,
    new_status device_status,
    last_seen_time TIMESTAMPTZ DEFAULT NOW()
)
RETURNS VOID AS $$
BEGIN
    UPDATE devices
    SET
        status = new_status,
        last_seen = last_seen_time,
        updated_at = NOW()
    WHERE id = device_uuid;

    IF NOT FOUND THEN
        RAISE EXCEPTION 'Device with ID % not found', device_uuid;
    END IF;
END;
$$ LANGUAGE plpgsql;

-- Resolves ACTIVE alerts older than 24 hours
CREATE OR REPLACE FUNCTION auto_resolve_expired_alerts()
RETURNS INTEGER AS $$
DECLARE
    resolved_count INTEGER;
BEGIN
    UPDATE alert_history
    SET
        status = 'RESOLVED',
        resolved_at = NOW(),
        duration = NOW() - fired_at
    WHERE
        status = 'ACTIVE'
        AND fired_at < NOW() - INTERVAL '24 hours';

    GET DIAGNOSTICS resolved_count = ROW_COUNT;

    RETURN resolved_count;
END;
$$ LANGUAGE plpgsql;

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
    COUNT(t.id) as tag_count,
    COUNT(CASE WHEN t.enabled THEN 1 END) as enabled_tag_count,
    COUNT(ah.id) as active_alert_count
FROM devices d
LEFT JOIN tags t ON d.id = t.device_id
LEFT JOIN alert_history ah ON d.id = ah.device_id AND ah.status = 'ACTIVE'
GROUP BY d.id, d.name, d.description, d.protocol, d.location, d.status, d.last_seen, d.enabled;

CREATE VIEW alert_statistics AS
SELECT
    DATE_TRUNC('hour', fired_at) as hour,
    level,
    COUNT(*) as alert_count,
    COUNT(CASE WHEN status = 'ACTIVE' THEN 1 END) as active_count,
    COUNT(CASE WHEN status = 'RESOLVED' THEN 1 END) as resolved_count,
    AVG(EXTRACT(EPOCH FROM duration)) as avg_duration_seconds
FROM alert_history
WHERE fired_at >= NOW() - INTERVAL '24 hours'
GROUP BY DATE_TRUNC('hour', fired_at), level
ORDER BY hour DESC, level;

