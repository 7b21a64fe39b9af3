use std::collections::HashMap;
use std::path::Path;

use super::*;

const PK: &str = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
const PIN: &str = "26f2748599c5679b6d2a81738c8f9a23bf467269344cdda839bc269e9c73e08b";

fn minimal() -> String {
    format!(
        r#"
[telemetry_gateway]
mode = "dev"
spectrastrike_ed25519_public_key_b64 = "{PK}"
allowed_service_identities = {{ "spectrastrike-producer" = "{PIN}" }}
operator_tenant_map = {{ "op-001" = "10000000-0000-0000-0000-000000000001" }}

[tls]
server_cert_path = "server.pem"
server_key = "file:server.key"
client_ca_path = "ca.pem"

[audit]
checkpoint_origin = "vvgate.test/audit"
checkpoint_key = "file:checkpoint.pem"
"#
    )
}

fn parse_env(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Config::parse(text, "test.toml", Path::new("/etc/vvgate"), &|k| {
        map.get(k).cloned()
    })
}

fn problems(r: Result<Config, ConfigError>) -> Vec<Problem> {
    match r {
        Err(ConfigError::Invalid(p)) => p,
        Err(e) => panic!("expected validation problems, got {e}"),
        Ok(_) => panic!("expected validation problems, got a valid config"),
    }
}

fn has(problems: &[Problem], key: &str, fragment: &str) -> bool {
    problems
        .iter()
        .any(|p| p.key == key && p.problem.contains(fragment))
}

#[test]
fn minimal_config_gets_the_contract_defaults() {
    let c = parse_env(&minimal(), &[]).unwrap();
    assert_eq!(c.allowed_clock_skew_seconds, 30);
    assert_eq!(c.nonce_ttl_seconds, 120);
    assert_eq!(c.rate_limit_per_minute, 120);
    assert_eq!(c.queue_subject, "vectorvue.telemetry.ingest");
    assert_eq!(c.dlq_subject, "vectorvue.telemetry.dlq");
    assert_eq!(c.limits.max_body_bytes, 1_048_576);
    assert_eq!(c.limits.max_header_bytes, 16_384);
    assert_eq!(c.limits.max_connections, 4096);
    assert_eq!(c.limits.max_new_connections_per_second, 1000);
    assert_eq!(c.limits.new_connection_burst, 1000);
    assert_eq!(c.allowed_schema_versions, vec!["1.0".to_owned()]);
    assert_eq!(c.group_commit_max_requests, 256);
    assert_eq!(c.audit.seal_every, 50);
    assert_eq!(c.federation.allowed_clock_skew_seconds, 300);
    assert_eq!(c.ops_listen.to_string(), "127.0.0.1:9464");
    assert_eq!(c.listen.to_string(), "0.0.0.0:8443");
    assert!(!c.idempotent_retry);
    // Relative paths resolve against the config file's directory.
    assert_eq!(c.tls.server_cert_path, Path::new("/etc/vvgate/server.pem"));
    assert_eq!(
        c.tls.server_key,
        vvgate_hsm::KeyRef::File("/etc/vvgate/server.key".into())
    );
    let pin = crate::ids::parse_hex32(PIN).unwrap();
    assert_eq!(c.identities.by_pin[&pin], "spectrastrike-producer");
    // The federation key falls back to the producer key.
    assert_eq!(c.federation.public_key, c.producer_keys.active);
}

#[test]
fn every_problem_is_reported_with_its_key() {
    let text = minimal()
        .replace("mode = \"dev\"", "mode = \"dev\"\nallowed_clock_skew_seconds = 0\nnonce_ttl_seconds = 5\nrequire_mtls = false\nqueue_subject = \"bad subject\"");
    let p = problems(parse_env(&text, &[]));
    assert!(has(
        &p,
        "telemetry_gateway.allowed_clock_skew_seconds",
        "between 1 and 3600"
    ));
    assert!(has(&p, "telemetry_gateway.nonce_ttl_seconds", "between 30"));
    assert!(has(&p, "telemetry_gateway.require_mtls", "refused"));
    assert!(has(
        &p,
        "telemetry_gateway.queue_subject",
        "not a NATS subject"
    ));
    assert_eq!(p.len(), 4, "{p:?}");
    let msg = ConfigError::Invalid(p).to_string();
    assert!(
        msg.starts_with("invalid configuration (4 problems):"),
        "{msg}"
    );
}

#[test]
fn environment_overrides_name_the_variable() {
    let c = parse_env(
        &minimal(),
        &[
            ("VV_TG_ALLOWED_CLOCK_SKEW_SECONDS", "45"),
            ("VV_TG_IDEMPOTENT_RETRY", "yes"),
            ("VV_TG_ALLOWED_SCHEMA_VERSIONS", "1.0, 2.0,1.0"),
            ("VV_TG_REDIS_URL", "redis://x"),
        ],
    )
    .unwrap();
    assert_eq!(c.allowed_clock_skew_seconds, 45);
    assert!(c.idempotent_retry);
    assert_eq!(c.allowed_schema_versions, vec!["1.0", "2.0"]);
    assert!(c.warnings.iter().any(|w| w.contains("VV_TG_REDIS_URL")));

    let p = problems(parse_env(
        &minimal(),
        &[
            ("VV_TG_ALLOWED_CLOCK_SKEW_SECONDS", "abc"),
            ("VV_TG_ENFORCE_SCHEMA_VERSION", "maybe"),
            ("VV_TG_OPERATOR_TENANT_MAP", "[1]"),
        ],
    ));
    assert!(has(
        &p,
        "VV_TG_ALLOWED_CLOCK_SKEW_SECONDS (telemetry_gateway.allowed_clock_skew_seconds)",
        "integer"
    ));
    assert!(has(
        &p,
        "VV_TG_ENFORCE_SCHEMA_VERSION (telemetry_gateway.enforce_schema_version)",
        "1 true yes on"
    ));
    assert!(has(
        &p,
        "VV_TG_OPERATOR_TENANT_MAP (telemetry_gateway.operator_tenant_map)",
        "JSON object"
    ));
}

#[test]
fn upstream_variable_names_map_onto_vvgate_keys() {
    let c = parse_env(
        &minimal(),
        &[
            (
                "VV_TG_ALLOWED_SERVICE_IDENTITIES_JSON",
                &format!(r#"{{"svc-a":"{}"}}"#, PIN.to_uppercase()),
            ),
            ("VV_TAMPER_LOG_SEAL_EVERY", "10"),
        ],
    )
    .unwrap();
    assert!(c.identities.pins.contains_key("svc-a"));
    assert!(!c.identities.pins.contains_key("spectrastrike-producer"));
    assert_eq!(c.audit.seal_every, 10);
}

#[test]
fn pins_placeholders_colons_and_sharing() {
    assert!(validate::parse_pin(&"a".repeat(64))
        .unwrap_err()
        .contains("placeholder"));
    let colons: Vec<String> = PIN
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8(c.to_vec()).unwrap().to_uppercase())
        .collect();
    assert_eq!(
        validate::parse_pin(&colons.join(":")).unwrap(),
        crate::ids::parse_hex32(PIN).unwrap()
    );
    assert!(validate::parse_pin("ab:cd").is_err());
    let text = minimal().replace(
        &format!("{{ \"spectrastrike-producer\" = \"{PIN}\" }}"),
        &format!("{{ \"a\" = \"{PIN}\", \"b\" = [\"{PIN}\"] }}"),
    );
    let p = problems(parse_env(&text, &[]));
    assert!(has(
        &p,
        "telemetry_gateway.allowed_service_identities.b",
        "already pinned"
    ));
}

#[test]
fn producer_keys_are_checked_as_points() {
    for bad in [
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        "QUFB",
        "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg",
        "A6EHv-POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
    ] {
        assert!(validate::parse_ed25519_public(bad).is_err(), "{bad}");
    }
    // Some 32-byte strings are not curve points at all.
    let invalid = (0u8..=255)
        .map(|b| {
            let mut k = [b; 32];
            k[31] &= 0x7f;
            k
        })
        .find(|k| {
            curve25519_dalek::edwards::CompressedEdwardsY(*k)
                .decompress()
                .is_none()
        })
        .unwrap();
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, invalid);
    assert!(validate::parse_ed25519_public(&b64)
        .unwrap_err()
        .contains("not a valid Ed25519 point"));
    assert!(validate::parse_ed25519_public(PK).is_ok());
}

#[test]
fn production_refuses_file_keys_and_unknown_keys_are_syntax_errors() {
    let text = minimal().replace("mode = \"dev\"", "mode = \"production\"");
    let p = problems(parse_env(&text, &[]));
    assert!(has(&p, "tls.server_key", "refused in production"));
    assert!(has(&p, "audit.checkpoint_key", "refused in production"));

    let text = minimal().replace("mode = \"dev\"", "mode = \"dev\"\nallowed_clock_skew = 3");
    match parse_env(&text, &[]) {
        Err(ConfigError::Syntax { detail, .. }) => {
            assert!(detail.contains("allowed_clock_skew"), "{detail}")
        }
        other => panic!("expected a syntax error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn required_keys_are_named() {
    let p = problems(parse_env("[telemetry_gateway]\nmode = \"dev\"\n", &[]));
    for key in [
        "telemetry_gateway.allowed_service_identities",
        "telemetry_gateway.spectrastrike_ed25519_public_key_b64",
        "tls.server_cert_path",
        "tls.server_key",
        "tls.client_ca_path",
        "audit.checkpoint_origin",
        "audit.checkpoint_key",
    ] {
        assert!(has(&p, key, "required"), "{key} missing from {p:?}");
    }
}

#[test]
fn tenant_map_values_must_be_canonical_uuids() {
    let text = minimal().replace(
        "\"10000000-0000-0000-0000-000000000001\"",
        "\"10000000-0000-0000-0000-00000000000G\"",
    );
    let p = problems(parse_env(&text, &[]));
    assert!(has(
        &p,
        "telemetry_gateway.operator_tenant_map.op-001",
        "canonical"
    ));
}

#[test]
fn producer_key_rotation_windows() {
    let keys = ProducerKeys {
        active: [1; 32],
        active_not_after: Some(100),
        next: Some(([2; 32], Some(50))),
    };
    assert_eq!(keys.valid_at(10).count(), 1);
    assert_eq!(keys.valid_at(60).count(), 2);
    assert_eq!(keys.valid_at(101).collect::<Vec<_>>(), vec![&[2u8; 32]]);
}

#[test]
fn every_key_and_variable_is_documented() {
    let doc = include_str!("../../../docs/config.md");
    for (key, _) in env::GATEWAY_KEYS {
        assert!(
            doc.contains(&format!("| `{key}` |")),
            "docs/config.md lacks {key}"
        );
    }
    for (var, section, key, _) in env::ALIASES {
        assert!(
            doc.contains(&format!("| `{var}` | `{section}.{key}` |")),
            "docs/config.md lacks {var}"
        );
    }
}

fn pkcs11_config(keystore: &str) -> String {
    minimal()
        .replace("mode = \"dev\"", "mode = \"production\"")
        .replace("file:server.key", "pkcs11:0101")
        .replace("file:checkpoint.pem", "pkcs11:0201")
        + keystore
}

#[test]
fn pkcs11_key_store_is_configured_by_label_or_serial() {
    let c = parse_env(
        &pkcs11_config("[keystore]\ntoken_label = \"vvgate\"\npin_file = \"hsm-pin\"\n"),
        &[],
    )
    .unwrap();
    assert_eq!(
        c.keystore.backend,
        KeystoreBackend::Pkcs11,
        "production default"
    );
    let p = c.keystore.pkcs11.unwrap();
    assert_eq!(p.module, Path::new(DEFAULT_PKCS11_MODULE));
    assert_eq!(
        p.token,
        vvgate_hsm::pkcs11::TokenSelector::Label("vvgate".into())
    );
    assert_eq!(p.pin_file, Path::new("/etc/vvgate/hsm-pin"));
    assert_eq!(
        c.tls.server_key,
        vvgate_hsm::KeyRef::Pkcs11 { id: vec![1, 1] }
    );

    let c = parse_env(
        &pkcs11_config(
            "[keystore]\nbackend = \"pkcs11\"\nmodule = \"/opt/hsm/lib.so\"\ntoken_serial = \"4f2a\"\npin_file = \"/run/credentials/vvgated.service/hsm-pin\"\n",
        ),
        &[("VVGATE_PKCS11_MODULE", "/usr/lib/vendor/pkcs11.so")],
    )
    .unwrap();
    let p = c.keystore.pkcs11.unwrap();
    assert_eq!(
        p.module,
        Path::new("/usr/lib/vendor/pkcs11.so"),
        "the variable wins"
    );
    assert_eq!(
        p.token,
        vvgate_hsm::pkcs11::TokenSelector::Serial("4f2a".into())
    );
}

#[test]
fn pkcs11_problems_name_their_keys() {
    let p = problems(parse_env(&pkcs11_config("[keystore]\n"), &[]));
    assert!(has(&p, "keystore.token_label", "required"), "{p:?}");
    assert!(has(&p, "keystore.pin_file", "required"), "{p:?}");

    let p = problems(parse_env(
        &pkcs11_config("[keystore]\ntoken_label = \"a\"\ntoken_serial = \"b\"\npin_file = \"p\"\n"),
        &[],
    ));
    assert!(has(&p, "keystore.token_serial", "not both"), "{p:?}");

    let long = "x".repeat(33);
    let p = problems(parse_env(
        &pkcs11_config(&format!(
            "[keystore]\ntoken_label = \"{long}\"\npin_file = \"p\"\n"
        )),
        &[],
    ));
    assert!(has(&p, "keystore.token_label", "1–32 bytes"), "{p:?}");

    // Keys of the wrong purpose or shape.
    let text = pkcs11_config("[keystore]\ntoken_label = \"t\"\npin_file = \"p\"\n")
        .replace("pkcs11:0201", "pkcs11:0301")
        .replace("pkcs11:0101", "pkcs11:01");
    let p = problems(parse_env(&text, &[]));
    assert!(
        has(&p, "audit.checkpoint_key", "is a feedback key"),
        "{p:?}"
    );
    assert!(has(&p, "tls.server_key", "two bytes"), "{p:?}");
    assert_eq!(p.len(), 2, "{p:?}");
}

#[test]
fn key_references_must_belong_to_the_key_store() {
    // A file key with the PKCS#11 store (dev mode, where file keys are otherwise allowed).
    let text =
        minimal() + "[keystore]\nbackend = \"pkcs11\"\ntoken_label = \"t\"\npin_file = \"p\"\n";
    let p = problems(parse_env(&text, &[]));
    assert!(has(&p, "tls.server_key", "backend is \"pkcs11\""), "{p:?}");
    assert!(has(&p, "audit.checkpoint_key", "file key"), "{p:?}");
    // A PKCS#11 key with the file store.
    let text = minimal().replace("file:checkpoint.pem", "pkcs11:0201");
    let p = problems(parse_env(&text, &[]));
    assert!(
        has(&p, "audit.checkpoint_key", "backend is \"file\""),
        "{p:?}"
    );
    assert_eq!(p.len(), 1, "{p:?}");
    // The file store in production.
    let text = pkcs11_config("[keystore]\nbackend = \"file\"\n");
    let p = problems(parse_env(&text, &[]));
    assert!(has(&p, "keystore.backend", "development only"), "{p:?}");
    // PKCS#11 settings with the file store are ignored with a warning.
    let c = parse_env(&(minimal() + "[keystore]\npin_file = \"p\"\n"), &[]).unwrap();
    assert!(c.keystore.pkcs11.is_none());
    assert!(
        c.warnings.iter().any(|w| w.contains("keystore.pin_file")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn every_keystore_key_is_documented() {
    let doc = include_str!("../../../docs/config.md");
    let section = doc
        .split("## `[keystore]`")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("docs/config.md has a [keystore] section");
    for key in [
        "backend",
        "module",
        "token_label",
        "token_serial",
        "pin_file",
    ] {
        assert!(
            section.contains(&format!("| `{key}` |")),
            "docs/config.md [keystore] lacks {key}"
        );
    }
}

#[test]
fn rearm_officers_need_two_distinct_valid_verifiers() {
    let v = |secret: &[u8]| {
        crate::killswitch::OfficerVerifier::create(secret, 10_000)
            .unwrap()
            .to_string()
    };
    let (a, b) = (v(b"secret-a"), v(b"secret-b"));
    let ok = format!(
        "{}\n[control]\nrearm_officers = {{ alice = \"{a}\", bob = \"{b}\" }}\n",
        minimal()
    );
    let c = parse_env(&ok, &[]).unwrap();
    assert_eq!(c.control.rearm_officers.len(), 2);
    assert!(c.control.rearm_officers["bob"].verify(b"secret-b"));
    assert!(parse_env(&minimal(), &[])
        .unwrap()
        .control
        .rearm_officers
        .is_empty());

    let one = format!(
        "{}\n[control]\nrearm_officers = {{ alice = \"{a}\" }}\n",
        minimal()
    );
    assert!(has(
        &problems(parse_env(&one, &[])),
        "control.rearm_officers",
        "needs two"
    ));
    let bad = format!(
        "{}\n[control]\nrearm_officers = {{ alice = \"{a}\", bob = \"{a}\", carol = \"sha256:00\", \"a,b\" = \"{b}\" }}\n",
        minimal()
    );
    let p = problems(parse_env(&bad, &[]));
    assert!(
        has(&p, "control.rearm_officers.bob", "same verifier"),
        "{p:?}"
    );
    assert!(
        has(&p, "control.rearm_officers.carol", "pbkdf2-sha256"),
        "{p:?}"
    );
    assert!(
        has(&p, "control.rearm_officers.a,b", "officer names"),
        "{p:?}"
    );
}

#[test]
fn signature_verification_mode() {
    let c = parse_env(&minimal(), &[]).unwrap();
    assert_eq!(c.signature_verification, SignatureVerification::Batch);
    let text = minimal().replace(
        "mode = \"dev\"",
        "mode = \"dev\"\nsignature_verification = \"single\"",
    );
    let c = parse_env(&text, &[]).unwrap();
    assert_eq!(c.signature_verification, SignatureVerification::Single);
    let c = parse_env(&minimal(), &[("VV_TG_SIGNATURE_VERIFICATION", "single")]).unwrap();
    assert_eq!(c.signature_verification, SignatureVerification::Single);
    let p = problems(parse_env(
        &minimal(),
        &[("VV_TG_SIGNATURE_VERIFICATION", "fast")],
    ));
    assert!(
        p.iter().any(
            |p| p.key.contains("telemetry_gateway.signature_verification")
                && p.problem.contains("must be batch or single")
        ),
        "{p:?}"
    );
}

#[test]
fn nats_url_is_one_node_or_a_list_and_every_entry_is_checked() {
    let nats = |url: &str| {
        minimal().replace(
            "[tls]",
            &format!("queue_backend = \"nats\"\nnats_url = {url}\n\n[nats]\nca_path = \"ca.pem\"\ncert_path = \"c.pem\"\nkey = \"file:c.key\"\n\n[tls]"),
        )
    };
    let c = parse_env(&nats("\"tls://q1:4222\""), &[]).unwrap();
    assert_eq!(c.nats.urls, ["tls://q1:4222"]);
    let c = parse_env(&nats("[\"tls://q1:4222\", \"tls://q2:4222\"]"), &[]).unwrap();
    assert_eq!(c.nats.urls, ["tls://q1:4222", "tls://q2:4222"]);
    // The environment takes a comma list (or one URL).
    let c = parse_env(
        &nats("\"tls://q1:4222\""),
        &[("VV_TG_NATS_URL", "tls://q3:4222,tls://q4:4222")],
    )
    .unwrap();
    assert_eq!(c.nats.urls, ["tls://q3:4222", "tls://q4:4222"]);
    // Each bad entry is named by its position; an empty list is refused.
    let p = problems(parse_env(
        &nats("[\"tls://q1:4222\", \"nats://q2:4222\", \"tls://q3\"]"),
        &[],
    ));
    assert!(
        has(&p, "telemetry_gateway.nats_url[1]", "tls://host:port"),
        "{p:?}"
    );
    assert!(
        has(&p, "telemetry_gateway.nats_url[2]", "tls://host:port"),
        "{p:?}"
    );
    assert!(!has(&p, "telemetry_gateway.nats_url[0]", ""), "{p:?}");
    let p = problems(parse_env(&nats("[]"), &[]));
    assert!(
        has(&p, "telemetry_gateway.nats_url", "is required"),
        "{p:?}"
    );
    let p = problems(parse_env(&nats("\"nats://q1:4222\""), &[]));
    assert!(has(&p, "telemetry_gateway.nats_url", "always TLS"), "{p:?}");
}

#[test]
fn new_connection_rate_and_burst_are_bounded_and_named() {
    let with =
        |lines: &str| minimal().replace("mode = \"dev\"", &format!("mode = \"dev\"\n{lines}"));
    // The burst defaults to the rate.
    let c = parse_env(&with("max_new_connections_per_second = 20"), &[]).unwrap();
    assert_eq!(c.limits.max_new_connections_per_second, 20);
    assert_eq!(c.limits.new_connection_burst, 20);
    let c = parse_env(
        &with("max_new_connections_per_second = 20\nnew_connection_burst = 5"),
        &[],
    )
    .unwrap();
    assert_eq!(c.limits.new_connection_burst, 5);
    for (rate, burst, key, fragment) in [
        ("0", "1", "max_new_connections_per_second", "(got 0)"),
        ("-5", "1", "max_new_connections_per_second", "(got -5)"),
        (
            "1000001",
            "1",
            "max_new_connections_per_second",
            "(got 1000001)",
        ),
        ("10", "0", "new_connection_burst", "(got 0)"),
        ("10", "-1", "new_connection_burst", "(got -1)"),
        (
            "10",
            "99999999999",
            "new_connection_burst",
            "(got 99999999999)",
        ),
    ] {
        let p = problems(parse_env(
            &with(&format!(
                "max_new_connections_per_second = {rate}\nnew_connection_burst = {burst}"
            )),
            &[],
        ));
        let key = format!("telemetry_gateway.{key}");
        assert!(has(&p, &key, "must be between 1 and 1000000"), "{p:?}");
        assert!(has(&p, &key, fragment), "{p:?}");
        assert_eq!(p.len(), 1, "{p:?}");
    }
    // A fraction is a type error naming the key.
    let e = parse_env(&with("max_new_connections_per_second = 2.5"), &[]).unwrap_err();
    assert!(
        e.to_string().contains("max_new_connections_per_second"),
        "{e}"
    );
    // The environment overrides, named by variable and key.
    let c = parse_env(
        &minimal(),
        &[
            ("VV_TG_MAX_NEW_CONNECTIONS_PER_SECOND", "300"),
            ("VV_TG_NEW_CONNECTION_BURST", "600"),
        ],
    )
    .unwrap();
    assert_eq!(c.limits.max_new_connections_per_second, 300);
    assert_eq!(c.limits.new_connection_burst, 600);
    let p = problems(parse_env(
        &minimal(),
        &[("VV_TG_MAX_NEW_CONNECTIONS_PER_SECOND", "0")],
    ));
    assert!(
        has(
            &p,
            "telemetry_gateway.max_new_connections_per_second",
            "(got 0)"
        ),
        "{p:?}"
    );
}
