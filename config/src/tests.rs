use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::path::Path;

use clap::Parser;

use crate::{Cli, ConfigError, LogFormat, Settings};

fn no_files(path: &Path) -> io::Result<String> {
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no such file: {}", path.display()),
    ))
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn cli(args: &[&str]) -> Cli {
    Cli::try_parse_from(std::iter::once("switchboard").chain(args.iter().copied()))
        .expect("valid command line")
}

fn load(args: &[&str], vars: &[(&str, &str)], file: Option<&str>) -> Result<Settings, ConfigError> {
    Settings::from_sources(&cli(args), &env(vars), file, &no_files)
}

fn load_ok(args: &[&str], vars: &[(&str, &str)], file: Option<&str>) -> Settings {
    load(args, vars, file).unwrap_or_else(|e| panic!("expected success, got: {e}"))
}

fn load_err(args: &[&str], vars: &[(&str, &str)], file: Option<&str>) -> String {
    match load(args, vars, file) {
        Ok(s) => panic!("expected an error, got {s:?}"),
        Err(e) => {
            let text = e.to_string();
            assert!(!text.contains('\n'), "error is not one line: {text}");
            text
        }
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn keys(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    env(pairs)
}

const KEY_FILE: &str = "[keys]\nprodkey = \"prodsecret\"\n";

// ---- defaults -------------------------------------------------------------

#[test]
fn built_in_defaults_apply_when_only_keys_are_given() {
    let s = load_ok(&[], &[], Some(KEY_FILE));
    assert!(!s.dev);
    assert_eq!(s.http.bind, ip("0.0.0.0"));
    assert_eq!(s.http.port, 7880);
    assert_eq!(s.rtc.udp_port, 7882);
    assert_eq!(s.rtc.bind, ip("0.0.0.0"));
    assert!(s.rtc.node_ips.is_empty());
    assert!(!s.rtc.include_loopback);
    assert!(s.rtc.v1_enabled);
    assert_eq!(s.rtc.max_signal_message_bytes, 1_048_576);
    assert_eq!(s.keys, keys(&[("prodkey", "prodsecret")]));
    assert!(s.rooms.auto_create);
    assert_eq!(s.log.format, LogFormat::Text);
}

#[test]
fn missing_keys_outside_dev_is_an_error() {
    let err = load_err(&[], &[], None);
    assert_eq!(
        err,
        "keys: no API key configured; set [keys] in the config file, LIVEKIT_KEYS, or \
         LIVEKIT_KEY/LIVEKIT_SECRET, or run with --dev"
    );
    assert!(matches!(load(&[], &[], None), Err(ConfigError::NoKeys)));
}

#[test]
fn empty_keys_section_counts_as_no_keys() {
    let err = load_err(&[], &[], Some("[keys]\n"));
    assert!(err.starts_with("keys: no API key configured"), "{err}");
}

#[test]
fn dev_defaults_bind_loopback_with_devkey() {
    let s = load_ok(&["--dev"], &[], None);
    assert!(s.dev);
    assert_eq!(s.http.bind, ip("127.0.0.1"));
    assert_eq!(s.http.port, 7880);
    assert_eq!(s.rtc.bind, ip("0.0.0.0"));
    assert!(s.rtc.include_loopback);
    assert!(s.rooms.auto_create);
    assert_eq!(s.keys, keys(&[("devkey", "secret")]));
    assert_eq!(s.ws_url(), "ws://127.0.0.1:7880");
}

#[test]
fn file_overrides_dev_defaults() {
    let file = "[http]\nbind = \"0.0.0.0\"\n[rooms]\nauto_create = false\n\
                [rtc]\ninclude_loopback = false\n";
    let s = load_ok(&["--dev"], &[], Some(file));
    assert_eq!(s.http.bind, ip("0.0.0.0"));
    assert!(!s.rooms.auto_create);
    assert!(!s.rtc.include_loopback);
    assert_eq!(s.keys, keys(&[("devkey", "secret")]));
}

// ---- precedence -----------------------------------------------------------

#[test]
fn flag_beats_environment_and_file() {
    let file = "[http]\nport = 1000\nbind = \"10.0.0.1\"\n[rtc]\nudp_port = 1001\n\
                [log]\nformat = \"text\"\n[keys]\na = \"b\"\n";
    let vars = [
        ("SWITCHBOARD_HTTP__PORT", "2000"),
        ("SWITCHBOARD_RTC__UDP_PORT", "2001"),
        ("SWITCHBOARD_LOG__FORMAT", "text"),
    ];
    let s = load_ok(
        &[
            "--port",
            "3000",
            "--udp-port",
            "3001",
            "--log-format",
            "json",
        ],
        &vars,
        Some(file),
    );
    assert_eq!(s.http.port, 3000);
    assert_eq!(s.rtc.udp_port, 3001);
    assert_eq!(s.log.format, LogFormat::Json);
    // Not given by flag or environment: the file wins.
    assert_eq!(s.http.bind, ip("10.0.0.1"));
}

#[test]
fn environment_beats_file() {
    let file = "[http]\nport = 1000\n[rooms]\nauto_create = true\n[keys]\na = \"b\"\n";
    let vars = [
        ("SWITCHBOARD_HTTP__PORT", "2000"),
        ("SWITCHBOARD_ROOMS__AUTO_CREATE", "0"),
    ];
    let s = load_ok(&[], &vars, Some(file));
    assert_eq!(s.http.port, 2000);
    assert!(!s.rooms.auto_create);
}

#[test]
fn flag_beats_dev_default() {
    let s = load_ok(&["--dev", "--bind", "::"], &[], None);
    assert_eq!(s.http.bind, ip("::"));
    assert_eq!(s.ws_url(), "ws://[::1]:7880");
}

#[test]
fn env_keys_replace_file_keys() {
    let s = load_ok(
        &[],
        &[("LIVEKIT_KEYS", "envkey: envsecret")],
        Some(KEY_FILE),
    );
    assert_eq!(s.keys, keys(&[("envkey", "envsecret")]));
}

#[test]
fn configured_keys_replace_dev_key() {
    let s = load_ok(&["--dev"], &[], Some(KEY_FILE));
    assert_eq!(s.keys, keys(&[("prodkey", "prodsecret")]));
    let s = load_ok(
        &["--dev"],
        &[("LIVEKIT_KEY", "k"), ("LIVEKIT_SECRET", "s")],
        None,
    );
    assert_eq!(s.keys, keys(&[("k", "s")]));
}

#[test]
fn env_key_sources_are_merged() {
    let vars = [
        ("LIVEKIT_KEYS", "a: 1"),
        ("LIVEKIT_KEY", "b"),
        ("LIVEKIT_SECRET", "2"),
        ("SWITCHBOARD_KEYS__c", "3"),
    ];
    let s = load_ok(&[], &vars, None);
    assert_eq!(s.keys, keys(&[("a", "1"), ("b", "2"), ("c", "3")]));
}

#[test]
fn same_key_with_different_secrets_in_env_is_an_error() {
    let vars = [("LIVEKIT_KEYS", "a: one"), ("SWITCHBOARD_KEYS__a", "two")];
    let err = load_err(&[], &vars, None);
    assert_eq!(
        err,
        "keys.a: two different secrets given (in SWITCHBOARD_KEYS__a and in LIVEKIT_KEYS)"
    );
    assert!(!err.contains("one") && !err.contains("two ("), "{err}");
    // Same secret twice is fine.
    let vars = [("LIVEKIT_KEYS", "a: one"), ("SWITCHBOARD_KEYS__a", "one")];
    assert_eq!(load_ok(&[], &vars, None).keys, keys(&[("a", "one")]));
}

#[test]
fn disable_rtc_v1_flag_turns_v1_off() {
    let s = load_ok(&["--dev", "--disable-rtc-v1"], &[], None);
    assert!(!s.rtc.v1_enabled);
    let s = load_ok(&["--dev"], &[], Some("[rtc]\nv1_enabled = false\n"));
    assert!(!s.rtc.v1_enabled);
    let s = load_ok(
        &["--dev"],
        &[("SWITCHBOARD_RTC__V1_ENABLED", "false")],
        None,
    );
    assert!(!s.rtc.v1_enabled);
}

#[test]
fn node_ip_flags_replace_env_list() {
    let s = load_ok(
        &[
            "--dev",
            "--node-ip",
            "192.0.2.1",
            "--node-ip",
            "2001:db8::1",
        ],
        &[("SWITCHBOARD_RTC__NODE_IPS", "198.51.100.1")],
        None,
    );
    assert_eq!(s.rtc.node_ips, vec![ip("192.0.2.1"), ip("2001:db8::1")]);
}

#[test]
fn rtc_bind_flag_sets_media_bind_only() {
    let s = load_ok(&["--dev", "--rtc-bind", "192.0.2.7"], &[], None);
    assert_eq!(s.rtc.bind, ip("192.0.2.7"));
    assert_eq!(s.http.bind, ip("127.0.0.1"));
}

// ---- file -----------------------------------------------------------------

#[test]
fn full_file_is_read() {
    let file = r#"
[http]
bind = "127.0.0.1"
port = 8080
[rtc]
udp_port = 50000
bind = "0.0.0.0"
node_ips = ["203.0.113.5", "2001:db8::5"]
v1_enabled = false
max_signal_message_bytes = 2048
include_loopback = true
[keys]
devkey = "secret"
other = "another-secret"
[rooms]
auto_create = false
[log]
format = "json"
"#;
    let s = load_ok(&[], &[], Some(file));
    assert_eq!(s.http.bind, ip("127.0.0.1"));
    assert_eq!(s.http.port, 8080);
    assert_eq!(s.rtc.udp_port, 50000);
    assert_eq!(s.rtc.node_ips, vec![ip("203.0.113.5"), ip("2001:db8::5")]);
    assert!(!s.rtc.v1_enabled);
    assert!(s.rtc.include_loopback);
    assert_eq!(s.rtc.max_signal_message_bytes, 2048);
    assert_eq!(
        s.keys,
        keys(&[("devkey", "secret"), ("other", "another-secret")])
    );
    assert!(!s.rooms.auto_create);
    assert_eq!(s.log.format, LogFormat::Json);
}

#[test]
fn unknown_file_key_is_named_in_error() {
    let err = load_err(&["--dev"], &[], Some("[http]\nprot = 7880\n"));
    assert_eq!(
        err,
        "http.prot: unknown key in config file (expected one of: bind, port)"
    );
}

#[test]
fn unknown_file_section_is_named_in_error() {
    let err = load_err(&["--dev"], &[], Some("[room]\nauto_create = true\n"));
    assert_eq!(
        err,
        "room: unknown section in config file (expected one of: http, rtc, keys, rooms, log)"
    );
    let err = load_err(&["--dev"], &[], Some("port = 1\n"));
    assert!(err.starts_with("port: unknown section"), "{err}");
}

#[test]
fn wrongly_typed_file_value_names_setting() {
    let err = load_err(&["--dev"], &[], Some("[http]\nport = \"abc\"\n"));
    assert_eq!(
        err,
        "http.port: invalid value \"abc\" in config file: expected a port number 1-65535"
    );
    let err = load_err(&["--dev"], &[], Some("[rooms]\nauto_create = \"yes\"\n"));
    assert!(
        err.starts_with("rooms.auto_create: invalid value \"yes\""),
        "{err}"
    );
    let err = load_err(&["--dev"], &[], Some("[log]\nformat = \"xml\"\n"));
    assert!(
        err.starts_with("log.format: invalid value \"xml\""),
        "{err}"
    );
    let err = load_err(&["--dev"], &[], Some("http = 5\n"));
    assert!(
        err.starts_with("http: invalid value 5 in config file"),
        "{err}"
    );
}

#[test]
fn toml_syntax_error_gives_line_and_column() {
    let err = load_err(&["--dev"], &[], Some("[http]\nport = = 1\n"));
    assert!(
        err.starts_with("config file: TOML syntax error at line 2, column "),
        "{err}"
    );
}

#[test]
fn load_names_config_file_path_in_errors() {
    let dir = std::env::temp_dir().join(format!("switchboard-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, "[http]\nprot = 1\n").unwrap();
    let cli = Cli {
        dev: true,
        config: Some(path.clone()),
        ..Cli::default()
    };
    let err = Settings::load(&cli).unwrap_err().to_string();
    assert!(
        err.contains(&format!("in config file {}", path.display())),
        "{err}"
    );

    let missing = dir.join("missing.toml");
    let cli = Cli {
        config: Some(missing.clone()),
        ..Cli::default()
    };
    let err = Settings::load(&cli).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("--config {}: cannot read file", missing.display())),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn file_secret_must_be_non_empty_string() {
    let err = load_err(&[], &[], Some("[keys]\nk = \"\"\n"));
    assert_eq!(err, "keys.k: empty secret in config file");
    let err = load_err(&[], &[], Some("[keys]\nk = 12345\n"));
    assert_eq!(
        err,
        "keys.k: secret must be a string, not an integer in config file"
    );
    assert!(!err.contains("12345"));
    let err = load_err(&[], &[], Some("[keys]\n\"\" = \"s\"\n"));
    assert_eq!(err, "keys: empty API key name in config file");
}

// ---- validation -----------------------------------------------------------

#[test]
fn port_zero_is_rejected_everywhere() {
    let err = load_err(&["--dev", "--port", "0"], &[], None);
    assert_eq!(
        err,
        "http.port: invalid value 0 in --port: expected a port number 1-65535"
    );
    let err = load_err(&["--dev", "--udp-port", "0"], &[], None);
    assert!(
        err.starts_with("rtc.udp_port: invalid value 0 in --udp-port"),
        "{err}"
    );
    let err = load_err(&["--dev"], &[("SWITCHBOARD_HTTP__PORT", "0")], None);
    assert!(err.starts_with("http.port: invalid value \"0\" in SWITCHBOARD_HTTP__PORT"));
    let err = load_err(&["--dev"], &[], Some("[rtc]\nudp_port = 0\n"));
    assert!(
        err.starts_with("rtc.udp_port: invalid value 0 in config file"),
        "{err}"
    );
    let err = load_err(&["--dev"], &[], Some("[rtc]\nudp_port = 70000\n"));
    assert!(
        err.starts_with("rtc.udp_port: invalid value 70000"),
        "{err}"
    );
}

#[test]
fn bad_port_in_env_names_variable() {
    let err = load_err(&["--dev"], &[("SWITCHBOARD_RTC__UDP_PORT", "abc")], None);
    assert_eq!(
        err,
        "rtc.udp_port: invalid value \"abc\" in SWITCHBOARD_RTC__UDP_PORT: \
         expected a port number 1-65535"
    );
}

#[test]
fn max_signal_message_bytes_must_be_between_1_kib_and_64_mib() {
    for ok in ["1024", "67108864"] {
        let s = load_ok(
            &["--dev"],
            &[("SWITCHBOARD_RTC__MAX_SIGNAL_MESSAGE_BYTES", ok)],
            None,
        );
        assert_eq!(s.rtc.max_signal_message_bytes, ok.parse::<usize>().unwrap());
    }
    for bad in ["1023", "67108865", "-1", "1MiB"] {
        let err = load_err(
            &["--dev"],
            &[("SWITCHBOARD_RTC__MAX_SIGNAL_MESSAGE_BYTES", bad)],
            None,
        );
        assert!(
            err.starts_with("rtc.max_signal_message_bytes: invalid value"),
            "{err}"
        );
        assert!(err.contains("from 1024 to 67108864"), "{err}");
    }
    let err = load_err(
        &["--dev"],
        &[],
        Some("[rtc]\nmax_signal_message_bytes = 100\n"),
    );
    assert!(err.contains("in config file"), "{err}");
}

#[test]
fn unspecified_node_ip_is_rejected() {
    let err = load_err(&["--dev", "--node-ip", "0.0.0.0"], &[], None);
    assert!(
        err.starts_with("rtc.node_ips: invalid value 0.0.0.0 in --node-ip"),
        "{err}"
    );
    let err = load_err(&["--dev"], &[("SWITCHBOARD_RTC__NODE_IPS", "::")], None);
    assert!(
        err.starts_with("rtc.node_ips: invalid value \"::\""),
        "{err}"
    );
}

#[test]
fn short_secrets_are_allowed() {
    let s = load_ok(&[], &[("LIVEKIT_KEYS", "k: s")], None);
    assert_eq!(s.keys, keys(&[("k", "s")]));
}

// ---- environment ----------------------------------------------------------

#[test]
fn switchboard_env_vars_set_every_setting() {
    let vars = [
        ("SWITCHBOARD_HTTP__BIND", "::1"),
        ("SWITCHBOARD_HTTP__PORT", "9000"),
        ("SWITCHBOARD_RTC__UDP_PORT", "9001"),
        ("SWITCHBOARD_RTC__BIND", "192.0.2.1"),
        (
            "SWITCHBOARD_RTC__NODE_IPS",
            " 192.0.2.1, 2001:db8::1 ,192.0.2.1,",
        ),
        ("SWITCHBOARD_RTC__INCLUDE_LOOPBACK", "TRUE"),
        ("SWITCHBOARD_RTC__V1_ENABLED", "0"),
        ("SWITCHBOARD_RTC__MAX_SIGNAL_MESSAGE_BYTES", "4096"),
        ("SWITCHBOARD_ROOMS__AUTO_CREATE", "false"),
        ("SWITCHBOARD_LOG__FORMAT", "JSON"),
        ("SWITCHBOARD_KEYS__MyKey", "my-secret"),
    ];
    let s = load_ok(&[], &vars, None);
    assert_eq!(s.http.bind, ip("::1"));
    assert_eq!(s.http.port, 9000);
    assert_eq!(s.rtc.udp_port, 9001);
    assert_eq!(s.rtc.bind, ip("192.0.2.1"));
    assert_eq!(s.rtc.node_ips, vec![ip("192.0.2.1"), ip("2001:db8::1")]);
    assert!(s.rtc.include_loopback);
    assert!(!s.rtc.v1_enabled);
    assert_eq!(s.rtc.max_signal_message_bytes, 4096);
    assert!(!s.rooms.auto_create);
    assert_eq!(s.log.format, LogFormat::Json);
    assert_eq!(s.keys, keys(&[("MyKey", "my-secret")]));
    assert_eq!(s.ws_url(), "ws://[::1]:9000");
}

#[test]
fn empty_node_ips_env_clears_file_list() {
    let s = load_ok(
        &["--dev"],
        &[("SWITCHBOARD_RTC__NODE_IPS", "")],
        Some("[rtc]\nnode_ips = [\"192.0.2.1\"]\n"),
    );
    assert!(s.rtc.node_ips.is_empty());
}

#[test]
fn bad_bool_in_env_names_variable() {
    let err = load_err(&["--dev"], &[("SWITCHBOARD_RTC__V1_ENABLED", "yes")], None);
    assert_eq!(
        err,
        "rtc.v1_enabled: invalid value \"yes\" in SWITCHBOARD_RTC__V1_ENABLED: \
         expected true or false (1 or 0 in the environment)"
    );
}

#[test]
fn unknown_switchboard_env_var_is_an_error() {
    let err = load_err(&["--dev"], &[("SWITCHBOARD_HTTP_PORT", "1")], None);
    assert_eq!(
        err,
        "SWITCHBOARD_HTTP_PORT: unknown environment variable \
         (did you mean SWITCHBOARD_HTTP__PORT?)"
    );
    let err = load_err(&["--dev"], &[("SWITCHBOARD_HTTP__PROT", "1")], None);
    assert!(
        err.contains("known in this section: SWITCHBOARD_HTTP__BIND, SWITCHBOARD_HTTP__PORT"),
        "{err}"
    );
    let err = load_err(&["--dev"], &[("SWITCHBOARD_FOO", "1")], None);
    assert!(
        err.starts_with("SWITCHBOARD_FOO: unknown environment variable"),
        "{err}"
    );
}

#[test]
fn unrelated_env_vars_are_ignored() {
    let vars = [
        ("PATH", "/bin"),
        ("LIVEKIT_URL", "ws://x"),
        ("SWITCHBOARDX", "1"),
    ];
    load_ok(&["--dev"], &vars, None);
}

#[test]
fn livekit_keys_env_parses_several_pairs() {
    let vars = [(
        "LIVEKIT_KEYS",
        "key1: secret1\n  key2:secret2 ,key3 :  \"se:cret3\"\n# comment\n\n",
    )];
    let s = load_ok(&[], &vars, None);
    assert_eq!(
        s.keys,
        keys(&[
            ("key1", "secret1"),
            ("key2", "secret2"),
            ("key3", "se:cret3")
        ])
    );
}

#[test]
fn malformed_livekit_keys_is_an_error_without_echoing_secret() {
    let err = load_err(&[], &[("LIVEKIT_KEYS", "a: b, topsecretvalue")], None);
    assert_eq!(
        err,
        "keys: entry 2 is not of the form \"key: secret\" in LIVEKIT_KEYS"
    );
    let err = load_err(&[], &[("LIVEKIT_KEYS", "  ")], None);
    assert_eq!(err, "keys: no \"key: secret\" entry in LIVEKIT_KEYS");
    let err = load_err(&[], &[("LIVEKIT_KEYS", "k:")], None);
    assert_eq!(err, "keys.k: empty secret in LIVEKIT_KEYS");
    let err = load_err(&[], &[("LIVEKIT_KEYS", ": s")], None);
    assert_eq!(err, "keys: empty API key name in LIVEKIT_KEYS");
}

#[test]
fn livekit_key_and_secret_env_form_a_pair() {
    let s = load_ok(
        &[],
        &[("LIVEKIT_KEY", " lk "), ("LIVEKIT_SECRET", "lksecret\n")],
        None,
    );
    assert_eq!(s.keys, keys(&[("lk", "lksecret")]));
}

#[test]
fn livekit_key_without_secret_is_an_error() {
    let err = load_err(&["--dev"], &[("LIVEKIT_KEY", "k")], None);
    assert_eq!(
        err,
        "keys: LIVEKIT_KEY is set but LIVEKIT_SECRET (or LIVEKIT_SECRET_FROM_FILE) is not; \
         set both"
    );
    let err = load_err(&["--dev"], &[("LIVEKIT_SECRET", "s")], None);
    assert_eq!(
        err,
        "keys: LIVEKIT_SECRET is set but LIVEKIT_KEY (or LIVEKIT_KEY_FROM_FILE) is not; \
         set both"
    );
}

#[test]
fn empty_livekit_secret_is_an_error() {
    let err = load_err(&[], &[("LIVEKIT_KEY", "k"), ("LIVEKIT_SECRET", "")], None);
    assert_eq!(err, "keys.k: empty secret in LIVEKIT_SECRET");
    let err = load_err(&[], &[("SWITCHBOARD_KEYS__", "s")], None);
    assert_eq!(err, "keys: empty API key name in SWITCHBOARD_KEYS__");
}

fn fake_files(path: &Path) -> io::Result<String> {
    match path.to_str() {
        Some("/run/secrets/key") => Ok("  filekey \n".into()),
        Some("/run/secrets/secret") => Ok("filesecret\n\n".into()),
        Some("/run/secrets/keys.yaml") => Ok("# LiveKit key file\na: one\nb: 'two'\n".into()),
        _ => no_files(path),
    }
}

fn load_with_files(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
    Settings::from_sources(&Cli::default(), &env(vars), None, &fake_files)
}

#[test]
fn key_from_file_env_reads_and_trims() {
    let s = load_with_files(&[
        ("LIVEKIT_KEY_FROM_FILE", "/run/secrets/key"),
        ("LIVEKIT_SECRET_FROM_FILE", "/run/secrets/secret"),
    ])
    .unwrap();
    assert_eq!(s.keys, keys(&[("filekey", "filesecret")]));
    // Mixed: direct key, secret from a file.
    let s = load_with_files(&[
        ("LIVEKIT_KEY", "direct"),
        ("LIVEKIT_SECRET_FROM_FILE", "/run/secrets/secret"),
    ])
    .unwrap();
    assert_eq!(s.keys, keys(&[("direct", "filesecret")]));
}

#[test]
fn key_file_env_reads_livekit_key_file() {
    let s = load_with_files(&[("LIVEKIT_KEY_FILE", "/run/secrets/keys.yaml")]).unwrap();
    assert_eq!(s.keys, keys(&[("a", "one"), ("b", "two")]));
}

#[test]
fn unreadable_env_file_names_variable_and_path() {
    let err = load_with_files(&[("LIVEKIT_KEY", "k"), ("LIVEKIT_SECRET_FROM_FILE", "/nope")])
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "keys: cannot read /nope (named by LIVEKIT_SECRET_FROM_FILE): no such file: /nope"
    );
}

#[test]
fn conflicting_livekit_key_variables_are_an_error() {
    let err = load_with_files(&[
        ("LIVEKIT_KEY", "k"),
        ("LIVEKIT_KEY_FROM_FILE", "/run/secrets/key"),
        ("LIVEKIT_SECRET", "s"),
    ])
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "keys: LIVEKIT_KEY and LIVEKIT_KEY_FROM_FILE are both set; use only one"
    );
    let err = load_with_files(&[
        ("LIVEKIT_KEY_FILE", "/run/secrets/keys.yaml"),
        ("LIVEKIT_KEY", "k"),
        ("LIVEKIT_SECRET", "s"),
    ])
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "keys: LIVEKIT_KEY_FILE and LIVEKIT_KEY are both set; use only one"
    );
}

#[test]
fn empty_secret_from_file_names_the_file() {
    let read = |path: &Path| -> io::Result<String> {
        match path.to_str() {
            Some("/empty") => Ok(" \n".into()),
            _ => no_files(path),
        }
    };
    let err = Settings::from_sources(
        &Cli::default(),
        &env(&[("LIVEKIT_KEY", "k"), ("LIVEKIT_SECRET_FROM_FILE", "/empty")]),
        None,
        &read,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        err,
        "keys.k: empty secret in file /empty (named by LIVEKIT_SECRET_FROM_FILE)"
    );
}

// ---- command line, ws_url, Debug ------------------------------------------

#[test]
fn cli_parses_every_flag() {
    let c = cli(&[
        "--dev",
        "--config",
        "/etc/switchboard.toml",
        "--bind",
        "::",
        "--port",
        "1",
        "--rtc-bind",
        "10.0.0.1",
        "--udp-port",
        "2",
        "--node-ip",
        "192.0.2.1",
        "--node-ip",
        "192.0.2.2",
        "--log-format",
        "json",
        "--disable-rtc-v1",
    ]);
    assert!(c.dev);
    assert_eq!(
        c.config.as_deref(),
        Some(Path::new("/etc/switchboard.toml"))
    );
    assert_eq!(c.bind, Some(ip("::")));
    assert_eq!(c.port, Some(1));
    assert_eq!(c.rtc_bind, Some(ip("10.0.0.1")));
    assert_eq!(c.udp_port, Some(2));
    assert_eq!(c.node_ips, vec![ip("192.0.2.1"), ip("192.0.2.2")]);
    assert_eq!(c.log_format, Some(LogFormat::Json));
    assert!(c.disable_rtc_v1);
    assert!(Cli::try_parse_from(["switchboard", "--log-format", "xml"]).is_err());
}

#[test]
fn cli_definition_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn ws_url_maps_unspecified_to_loopback() {
    let mut s = load_ok(&["--dev"], &[], None);
    s.http.bind = ip("0.0.0.0");
    s.http.port = 443;
    assert_eq!(s.ws_url(), "ws://127.0.0.1:443");
    s.http.bind = ip("192.0.2.9");
    assert_eq!(s.ws_url(), "ws://192.0.2.9:443");
    s.http.bind = ip("2001:db8::9");
    assert_eq!(s.ws_url(), "ws://[2001:db8::9]:443");
}

#[test]
fn debug_output_hides_secrets() {
    let s = load_ok(&[], &[("LIVEKIT_KEYS", "visiblekey: hiddensecret")], None);
    let text = format!("{s:?}");
    assert!(text.contains("visiblekey"), "{text}");
    assert!(!text.contains("hiddensecret"), "{text}");
}

#[test]
fn log_format_deserializes_lowercase() {
    #[derive(serde::Deserialize)]
    struct W {
        f: LogFormat,
    }
    let w: W = toml::from_str("f = \"json\"").unwrap();
    assert_eq!(w.f, LogFormat::Json);
    assert_eq!(LogFormat::Text.to_string(), "text");
}
