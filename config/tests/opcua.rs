//! OPC UA device files: what loads, the defaults filled in (PKI directory,
//! application URI), and refusals naming file, line, column and key.

use std::path::Path;

use config::{
    AcquisitionMode, Config, ConfigErrors, DeadbandType, DriverOptions, Namespace, NodeAddress, SecurityMode,
    SecurityPolicy, TagOptions,
};

const GATEWAY: &str = "gateway_id = \"gw-7\"\ndata_dir = \"data\"\n";

const DEVICE: &str = concat!(
    "name = \"line1\"\n",                            // 1
    "protocol = \"opcua\"\n",                        // 2
    "endpoint = \"opc.tcp://127.0.0.1:4840/plc\"\n", // 3
    "security_policy = \"Aes256_Sha256_RsaPss\"\n",  // 4
    "username = \"op\"\n",                           // 5
    "password = \"${PW}\"\n",                        // 6
    "\n",                                            // 7
    "[[tags]]\n",                                    // 8
    "name = \"temp\"\n",                             // 9
    "address = \"ns=2;s=Machine/Temp\"\n",           // 10
    "data_type = \"Double\"\n",                      // 11
    "deadband_type = \"percent\"\n",                 // 12
    "deadband_value = 2.5\n",                        // 13
    "\n",                                            // 14
    "[[tags]]\n",                                    // 15
    "name = \"count\"\n",                            // 16
    "address = \"nsu=urn:plant:line1;i=1001\"\n",    // 17
    "data_type = \"UInt32\"\n",                      // 18
    "mode = \"poll\"\n",                             // 19
);

fn load(gateway: &str, device: &str) -> Result<Config, ConfigErrors> {
    load_two(gateway, device, None)
}

fn load_two(gateway: &str, device: &str, second: Option<&str>) -> Result<Config, ConfigErrors> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("devices")).unwrap();
    std::fs::write(dir.path().join("gateway.toml"), gateway).unwrap();
    std::fs::write(dir.path().join("devices/line1.toml"), device).unwrap();
    if let Some(d) = second {
        std::fs::write(dir.path().join("devices/line2.toml"), d).unwrap();
    }
    let r = config::load_with_env(&dir.path().join("gateway.toml"), &|v| {
        (v == "PW").then(|| "s3cret".to_string())
    });
    drop(dir);
    r
}

#[track_caller]
fn errors(device: &str) -> ConfigErrors {
    match load(GATEWAY, device) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e,
    }
}

#[track_caller]
fn expect(errs: &ConfigErrors, key: &str, line: usize, fragment: &str) {
    let found = errs.iter().any(|e| {
        e.key == key
            && Path::new(&e.file).ends_with("line1.toml")
            && e.line == Some(line)
            && e.message.contains(fragment)
    });
    assert!(
        found,
        "no error `{key}` on line {line} containing {fragment:?}; got:\n{errs}"
    );
}

#[test]
fn a_device_file_loads_with_gateway_defaults() {
    let c = load(GATEWAY, DEVICE).unwrap();
    let d = &c.devices[0];
    let DriverOptions::Opcua(o) = &d.driver else {
        panic!("not OPC UA: {:?}", d.driver)
    };
    assert_eq!(o.security_policy, SecurityPolicy::Aes256Sha256RsaPss);
    assert_eq!(
        o.mode_of_security(),
        SecurityMode::SignAndEncrypt,
        "default with a policy"
    );
    assert_eq!(o.password.as_deref(), Some("s3cret"));
    assert!(o.pki_dir.as_ref().unwrap().ends_with("data/pki/opcua"));
    assert_eq!(o.application_uri.as_deref(), Some("urn:gateway-rust:gw-7"));
    let TagOptions::Opcua(t) = &d.tags[0].driver else {
        panic!()
    };
    assert_eq!(
        (t.deadband_type, t.deadband_value),
        (DeadbandType::Percent, Some(2.5))
    );
    let TagOptions::Opcua(t) = &d.tags[1].driver else {
        panic!()
    };
    assert_eq!(t.mode, Some(AcquisitionMode::Poll));
    let a = NodeAddress::parse(&d.tags[1].address).unwrap();
    assert_eq!(a.namespace, Namespace::Uri("urn:plant:line1".into()));
}

#[test]
fn refusals_name_the_line_and_the_key() {
    let bad = DEVICE
        .replace("ns=2;s=Machine/Temp", "ns=2;q=Machine/Temp")
        .replace("deadband_value = 2.5", "deadband_value = 250.0")
        .replace("mode = \"poll\"", "mode = \"poll\"\nqueue_size = 5");
    let e = errors(&bad);
    expect(&e, "tags[0].address", 10, "unknown identifier type");
    expect(&e, "tags[0].deadband_value", 13, "at most 100");
    expect(
        &e,
        "tags[1].queue_size",
        20,
        "only applies to mode = \"subscription\"",
    );

    let e = errors(&DEVICE.replace(
        "security_policy = \"Aes256_Sha256_RsaPss\"",
        "security_policy = \"None\"\nsecurity_mode = \"Sign\"",
    ));
    expect(&e, "security_mode", 5, "needs a security_policy other than None");

    let e = errors(&DEVICE.replace("password = \"${PW}\"\n", ""));
    expect(&e, "username", 5, "needs a password");

    let e = errors(&DEVICE.replace("opc.tcp://127.0.0.1:4840/plc", "http://127.0.0.1:4840"));
    expect(&e, "endpoint", 3, "starts with opc.tcp://");

    let e = errors(&DEVICE.replace(
        "security_policy = \"Aes256_Sha256_RsaPss\"",
        "security_policy = \"Basic128Rsa15\"",
    ));
    expect(&e, "security_policy", 4, "unknown variant");

    let e = errors(&DEVICE.replace(
        "username = \"op\"",
        "session_timeout = \"30s\"\nkeep_alive_interval = \"20s\"\nusername = \"op\"",
    ));
    expect(&e, "keep_alive_interval", 6, "at most half of session_timeout");

    let e = errors(&DEVICE.replace(
        "username = \"op\"\npassword = \"${PW}\"",
        "user_cert_file = \"user.crt\"\nuser_key_file = \"user.key\"",
    ));
    expect(&e, "user_cert_file", 5, "must end in .der or .pem");
    expect(&e, "user_key_file", 6, "must end in .pem");

    let e = errors(&DEVICE.replace("data_type = \"Double\"", "data_type = \"String\""));
    expect(&e, "tags[0].deadband_type", 12, "needs a numeric data_type");
}

#[test]
fn devices_sharing_a_pki_dir_share_the_application_uri() {
    let second = DEVICE.replace("name = \"line1\"", "name = \"line2\"").replace(
        "username = \"op\"",
        "application_uri = \"urn:other\"\nusername = \"op\"",
    );
    let e = match load_two(GATEWAY, DEVICE, Some(&second)) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    };
    assert!(
        e.iter().any(|e| e.key == "application_uri"
            && Path::new(&e.file).ends_with("line2.toml")
            && e.line == Some(5)
            && e.message.contains("device \"line1\"")),
        "{e}"
    );
    // Its own pki_dir is fine.
    let own = second.replace("application_uri", "pki_dir = \"pki2\"\napplication_uri");
    assert!(load_two(GATEWAY, DEVICE, Some(&own)).is_ok());
}
