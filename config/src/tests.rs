use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::Path;

use clap::Parser;

use crate::{Cli, ConfigError, LogFormat, MatrixRtcSettings, Settings};

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

/// The cores available to this process, as the automatic
/// `rtc.media_threads` counts them.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
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
    assert_eq!(s.rtc.media_threads, cores());
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
fn bandwidth_estimation_is_on_unless_turned_off() {
    assert!(load_ok(&["--dev"], &[], None).rtc.bandwidth_estimation);
    let s = load_ok(
        &["--dev"],
        &[],
        Some("[rtc]\nbandwidth_estimation = false\n"),
    );
    assert!(!s.rtc.bandwidth_estimation);
    let s = load_ok(
        &["--dev"],
        &[("SWITCHBOARD_RTC__BANDWIDTH_ESTIMATION", "false")],
        None,
    );
    assert!(!s.rtc.bandwidth_estimation);
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
media_threads = 3
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
    assert_eq!(s.rtc.media_threads, 3);
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
        "room: unknown section in config file \
         (expected one of: http, rtc, keys, rooms, matrixrtc, log)"
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
fn media_threads_default_to_one_per_available_core() {
    let s = load_ok(&["--dev"], &[], None);
    assert_eq!(s.rtc.media_threads, cores());
    assert!(s.rtc.media_threads >= 1);
    // The fallback when the core count cannot be known, and the cap.
    let unknown = Err(io::Error::new(io::ErrorKind::Unsupported, "no count"));
    assert_eq!(crate::one_per_core(unknown), 1);
    assert_eq!(crate::one_per_core(Ok(NonZeroUsize::new(8).unwrap())), 8);
    assert_eq!(
        crate::one_per_core(Ok(NonZeroUsize::new(1000).unwrap())),
        256
    );
}

#[test]
fn media_threads_flag_beats_environment_and_file() {
    let file = "[rtc]\nmedia_threads = 3\n";
    let vars = [("SWITCHBOARD_RTC__MEDIA_THREADS", "5")];
    assert_eq!(load_ok(&["--dev"], &[], Some(file)).rtc.media_threads, 3);
    assert_eq!(load_ok(&["--dev"], &vars, Some(file)).rtc.media_threads, 5);
    let s = load_ok(&["--dev", "--media-threads", "7"], &vars, Some(file));
    assert_eq!(s.rtc.media_threads, 7);
}

#[test]
fn media_threads_zero_means_one_per_core() {
    let s = load_ok(&["--dev"], &[], Some("[rtc]\nmedia_threads = 0\n"));
    assert_eq!(s.rtc.media_threads, cores());
    let s = load_ok(&["--dev"], &[("SWITCHBOARD_RTC__MEDIA_THREADS", "0")], None);
    assert_eq!(s.rtc.media_threads, cores());
    // 0 at a higher level replaces a count given lower down.
    let s = load_ok(
        &["--dev"],
        &[("SWITCHBOARD_RTC__MEDIA_THREADS", "0")],
        Some("[rtc]\nmedia_threads = 9\n"),
    );
    assert_eq!(s.rtc.media_threads, cores());
    let s = load_ok(
        &["--dev", "--media-threads", "0"],
        &[("SWITCHBOARD_RTC__MEDIA_THREADS", "9")],
        None,
    );
    assert_eq!(s.rtc.media_threads, cores());
}

#[test]
fn media_threads_must_be_between_1_and_256() {
    for ok in ["1", "256"] {
        let s = load_ok(&["--dev"], &[("SWITCHBOARD_RTC__MEDIA_THREADS", ok)], None);
        assert_eq!(s.rtc.media_threads, ok.parse::<usize>().unwrap());
    }
    const EXPECTED: &str = "expected a number of threads from 1 to 256, or 0 for one per core";
    let err = load_err(&["--dev", "--media-threads", "300"], &[], None);
    assert_eq!(
        err,
        format!("rtc.media_threads: invalid value 300 in --media-threads: {EXPECTED}")
    );
    for bad in ["257", "-1", "four", "2.5", ""] {
        let err = load_err(&["--dev"], &[("SWITCHBOARD_RTC__MEDIA_THREADS", bad)], None);
        assert_eq!(
            err,
            format!(
                "rtc.media_threads: invalid value {bad:?} in SWITCHBOARD_RTC__MEDIA_THREADS: \
                 {EXPECTED}"
            )
        );
    }
    for (bad, shown) in [
        ("257", "257"),
        ("-1", "-1"),
        ("\"4\"", "\"4\""),
        ("2.5", "2.5"),
    ] {
        let file = format!("[rtc]\nmedia_threads = {bad}\n");
        let err = load_err(&["--dev"], &[], Some(&file));
        assert_eq!(
            err,
            format!("rtc.media_threads: invalid value {shown} in config file: {EXPECTED}")
        );
    }
    // A flag that is not a number is refused by the command-line parser.
    for bad in ["four", "-1", "2.5"] {
        assert!(Cli::try_parse_from(["switchboard", "--media-threads", bad]).is_err());
    }
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
        ("SWITCHBOARD_RTC__MEDIA_THREADS", " 5 "),
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
    assert_eq!(s.rtc.media_threads, 5);
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
        ("LIVEKIT_JWT_BIND", ":8080"),
        ("LIVEKIT_LOG_LEVEL", "debug"),
        ("LIVEKIT_LOCAL_HOMESERVERS", "example.org"),
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
        "--media-threads",
        "4",
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
    assert_eq!(c.media_threads, Some(4));
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

// ---- MatrixRTC authorisation ----------------------------------------------

const FULL_ACCESS_REQUIRED: &str = "matrixrtc.full_access_homeservers: required when MatrixRTC \
     authorisation is enabled (server names, or [\"*\"]); set it in the config file, \
     SWITCHBOARD_MATRIXRTC__FULL_ACCESS_HOMESERVERS or LIVEKIT_FULL_ACCESS_HOMESERVERS";

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn matrixrtc_is_off_by_default_outside_dev() {
    let s = load_ok(&[], &[], Some(KEY_FILE));
    assert_eq!(
        s.matrixrtc,
        MatrixRtcSettings {
            enabled: false,
            full_access_homeservers: Vec::new(),
            public_url: "ws://127.0.0.1:7880".into(),
            homeserver_urls: BTreeMap::new(),
        }
    );
    assert!(s.rooms.auto_create);
}

#[test]
fn dev_enables_matrixrtc_for_every_homeserver_and_keeps_auto_create() {
    let s = load_ok(&["--dev"], &[], None);
    assert!(s.matrixrtc.enabled);
    assert_eq!(s.matrixrtc.full_access_homeservers, names(&["*"]));
    assert!(s.matrixrtc.is_full_access("anywhere.example"));
    assert_eq!(s.matrixrtc.public_url, "ws://127.0.0.1:7880");
    assert!(s.matrixrtc.homeserver_urls.is_empty());
    assert!(s.rooms.auto_create);
}

#[test]
fn public_url_defaults_to_the_http_listener_websocket_url() {
    let s = load_ok(
        &["--dev", "--bind", "192.0.2.1", "--port", "9000"],
        &[],
        None,
    );
    assert_eq!(s.matrixrtc.public_url, "ws://192.0.2.1:9000");
    assert_eq!(s.matrixrtc.public_url, s.ws_url());
    let s = load_ok(&["--dev", "--bind", "::"], &[], None);
    assert_eq!(s.matrixrtc.public_url, "ws://[::1]:7880");
}

#[test]
fn full_matrixrtc_file_section_is_read() {
    let file = r#"
[keys]
k = "s"
[matrixrtc]
enabled = true
full_access_homeservers = ["example.org", " other.example:8448 ", "example.org"]
public_url = "wss://rtc.example.org"
[matrixrtc.homeserver_urls]
"example.org" = "https://matrix.example.org/"
"other.example:8448" = "http://127.0.0.1:8008"
"#;
    let s = load_ok(&[], &[], Some(file));
    assert!(s.matrixrtc.enabled);
    // Trimmed, duplicates dropped, order kept.
    assert_eq!(
        s.matrixrtc.full_access_homeservers,
        names(&["example.org", "other.example:8448"])
    );
    assert_eq!(s.matrixrtc.public_url, "wss://rtc.example.org");
    // Trailing slashes are removed from base URLs.
    assert_eq!(
        s.matrixrtc.homeserver_urls,
        env(&[
            ("example.org", "https://matrix.example.org"),
            ("other.example:8448", "http://127.0.0.1:8008"),
        ])
    );
}

#[test]
fn homeserver_urls_can_be_an_inline_table() {
    let file = "[matrixrtc]\nhomeserver_urls = { \"a.org\" = \"https://hs.a.org:8448/prefix\" }\n";
    let s = load_ok(&["--dev"], &[], Some(file));
    assert_eq!(
        s.matrixrtc.homeserver_urls,
        env(&[("a.org", "https://hs.a.org:8448/prefix")])
    );
}

#[test]
fn matrixrtc_env_vars_set_every_setting() {
    let vars = [
        ("SWITCHBOARD_MATRIXRTC__ENABLED", "1"),
        (
            "SWITCHBOARD_MATRIXRTC__FULL_ACCESS_HOMESERVERS",
            " a.org, b.org ,,",
        ),
        (
            "SWITCHBOARD_MATRIXRTC__PUBLIC_URL",
            " https://rtc.a.org/sfu ",
        ),
        (
            "SWITCHBOARD_MATRIXRTC__HOMESERVER_URLS",
            "a.org = http://127.0.0.1:8008, b.org=https://[2001:db8::1]:8448/,",
        ),
    ];
    let s = load_ok(&[], &vars, Some(KEY_FILE));
    assert!(s.matrixrtc.enabled);
    assert_eq!(
        s.matrixrtc.full_access_homeservers,
        names(&["a.org", "b.org"])
    );
    assert_eq!(s.matrixrtc.public_url, "https://rtc.a.org/sfu");
    assert_eq!(
        s.matrixrtc.homeserver_urls,
        env(&[
            ("a.org", "http://127.0.0.1:8008"),
            ("b.org", "https://[2001:db8::1]:8448"),
        ])
    );
}

#[test]
fn matrixrtc_env_beats_file_and_file_beats_dev() {
    let file = "[matrixrtc]\nfull_access_homeservers = [\"file.org\"]\n\
                public_url = \"wss://file.example\"\n\
                [matrixrtc.homeserver_urls]\n\"file.org\" = \"https://hs.file.org\"\n";
    let s = load_ok(&["--dev"], &[], Some(file));
    assert_eq!(s.matrixrtc.full_access_homeservers, names(&["file.org"]));
    assert!(!s.matrixrtc.is_full_access("other.org"));
    assert_eq!(s.matrixrtc.public_url, "wss://file.example");

    let vars = [
        ("SWITCHBOARD_MATRIXRTC__ENABLED", "false"),
        ("SWITCHBOARD_MATRIXRTC__PUBLIC_URL", "wss://env.example"),
        ("SWITCHBOARD_MATRIXRTC__HOMESERVER_URLS", ""),
    ];
    let s = load_ok(&["--dev"], &vars, Some(file));
    assert!(!s.matrixrtc.enabled);
    assert_eq!(s.matrixrtc.public_url, "wss://env.example");
    // An empty variable gives an empty map, replacing the file's.
    assert!(s.matrixrtc.homeserver_urls.is_empty());
}

#[test]
fn enabling_matrixrtc_without_full_access_homeservers_is_an_error() {
    let err = load_err(
        &[],
        &[],
        Some("[matrixrtc]\nenabled = true\n[keys]\na = \"b\"\n"),
    );
    assert_eq!(err, FULL_ACCESS_REQUIRED);
    assert!(matches!(
        load(
            &[],
            &[
                ("SWITCHBOARD_MATRIXRTC__ENABLED", "true"),
                ("LIVEKIT_KEYS", "a: b")
            ],
            None
        ),
        Err(ConfigError::Required { .. })
    ));
    // An explicitly empty list also replaces the --dev default ["*"].
    let err = load_err(
        &["--dev"],
        &[],
        Some("[matrixrtc]\nfull_access_homeservers = []\n"),
    );
    assert_eq!(err, FULL_ACCESS_REQUIRED);
    let err = load_err(
        &["--dev"],
        &[("SWITCHBOARD_MATRIXRTC__FULL_ACCESS_HOMESERVERS", " , ")],
        None,
    );
    assert_eq!(err, FULL_ACCESS_REQUIRED);
}

#[test]
fn disabled_matrixrtc_accepts_an_empty_full_access_list() {
    let file = "[matrixrtc]\nenabled = false\nfull_access_homeservers = []\n";
    let s = load_ok(&["--dev"], &[], Some(file));
    assert!(!s.matrixrtc.enabled);
    assert!(s.matrixrtc.full_access_homeservers.is_empty());
    assert!(!s.matrixrtc.is_full_access("example.org"));
}

#[test]
fn enabling_matrixrtc_outside_dev_turns_auto_create_off_by_default() {
    let file = "[keys]\na = \"b\"\n[matrixrtc]\nenabled = true\n\
                full_access_homeservers = [\"example.org\"]\n";
    let s = load_ok(&[], &[], Some(file));
    assert!(s.matrixrtc.enabled);
    assert!(!s.rooms.auto_create);
}

#[test]
fn explicit_auto_create_beats_the_matrixrtc_default() {
    let file = "[keys]\na = \"b\"\n[matrixrtc]\nenabled = true\n\
                full_access_homeservers = [\"*\"]\n[rooms]\nauto_create = true\n";
    let s = load_ok(&[], &[], Some(file));
    assert!(s.matrixrtc.enabled);
    assert!(s.rooms.auto_create);
    let vars = [
        ("LIVEKIT_KEYS", "a: b"),
        ("LIVEKIT_FULL_ACCESS_HOMESERVERS", "*"),
        ("SWITCHBOARD_ROOMS__AUTO_CREATE", "1"),
    ];
    let s = load_ok(&[], &vars, None);
    assert!(s.matrixrtc.enabled);
    assert!(s.rooms.auto_create);
}

#[test]
fn dev_keeps_auto_create_when_matrixrtc_is_enabled_explicitly() {
    let file = "[matrixrtc]\nenabled = true\nfull_access_homeservers = [\"example.org\"]\n";
    let s = load_ok(&["--dev"], &[], Some(file));
    assert!(s.matrixrtc.enabled);
    assert!(s.rooms.auto_create);
    // Explicitly off in --dev still wins.
    let s = load_ok(
        &["--dev"],
        &[("SWITCHBOARD_ROOMS__AUTO_CREATE", "false")],
        Some(file),
    );
    assert!(!s.rooms.auto_create);
}

#[test]
fn livekit_full_access_homeservers_sets_the_list_and_enables_matrixrtc() {
    let vars = [
        ("LIVEKIT_KEY", "k"),
        ("LIVEKIT_SECRET", "s"),
        ("LIVEKIT_URL", "wss://rtc.example.org"),
        ("LIVEKIT_FULL_ACCESS_HOMESERVERS", "example.org, other.org"),
    ];
    let s = load_ok(&[], &vars, None);
    assert!(s.matrixrtc.enabled);
    assert_eq!(
        s.matrixrtc.full_access_homeservers,
        names(&["example.org", "other.org"])
    );
    assert_eq!(s.matrixrtc.public_url, "wss://rtc.example.org");
    assert!(s.matrixrtc.is_full_access("other.org"));
    assert!(!s.matrixrtc.is_full_access("elsewhere.org"));
    // lk-jwt-service deployment: rooms are created for full-access users only.
    assert!(!s.rooms.auto_create);

    let s = load_ok(
        &[],
        &[
            ("LIVEKIT_KEYS", "k: s"),
            ("LIVEKIT_FULL_ACCESS_HOMESERVERS", "*"),
        ],
        None,
    );
    assert!(s.matrixrtc.enabled);
    assert_eq!(s.matrixrtc.full_access_homeservers, names(&["*"]));
}

#[test]
fn explicit_enabled_false_beats_livekit_full_access_homeservers() {
    let vars = [
        ("LIVEKIT_KEYS", "k: s"),
        ("LIVEKIT_FULL_ACCESS_HOMESERVERS", "example.org"),
    ];
    let s = load_ok(&[], &vars, Some("[matrixrtc]\nenabled = false\n"));
    assert!(!s.matrixrtc.enabled);
    assert_eq!(s.matrixrtc.full_access_homeservers, names(&["example.org"]));
    assert!(s.rooms.auto_create);
    let mut vars = vars.to_vec();
    vars.push(("SWITCHBOARD_MATRIXRTC__ENABLED", "0"));
    assert!(!load_ok(&[], &vars, None).matrixrtc.enabled);
}

#[test]
fn switchboard_full_access_variable_does_not_enable_matrixrtc_by_itself() {
    let vars = [
        ("LIVEKIT_KEYS", "k: s"),
        (
            "SWITCHBOARD_MATRIXRTC__FULL_ACCESS_HOMESERVERS",
            "example.org",
        ),
    ];
    let s = load_ok(&[], &vars, None);
    assert!(!s.matrixrtc.enabled);
    assert!(s.rooms.auto_create);
}

#[test]
fn empty_livekit_full_access_homeservers_enables_matrixrtc_and_fails() {
    let vars = [
        ("LIVEKIT_KEYS", "k: s"),
        ("LIVEKIT_FULL_ACCESS_HOMESERVERS", ""),
    ];
    assert_eq!(load_err(&[], &vars, None), FULL_ACCESS_REQUIRED);
}

#[test]
fn livekit_url_sets_public_url_without_enabling_matrixrtc() {
    let s = load_ok(
        &[],
        &[("LIVEKIT_KEYS", "k: s"), ("LIVEKIT_URL", "ws://x")],
        None,
    );
    assert!(!s.matrixrtc.enabled);
    assert_eq!(s.matrixrtc.public_url, "ws://x");
    assert!(s.rooms.auto_create);
}

#[test]
fn switchboard_and_livekit_variables_with_different_values_are_an_error() {
    let vars = [
        ("SWITCHBOARD_MATRIXRTC__PUBLIC_URL", "wss://a.example"),
        ("LIVEKIT_URL", "wss://b.example"),
    ];
    let err = load_err(&["--dev"], &vars, None);
    assert_eq!(
        err,
        "matrixrtc.public_url: SWITCHBOARD_MATRIXRTC__PUBLIC_URL and LIVEKIT_URL are both set, \
         to different values; set only one"
    );
    assert!(matches!(
        load(&["--dev"], &vars, None),
        Err(ConfigError::ConflictingEnvValues { .. })
    ));
    let vars = [
        ("SWITCHBOARD_MATRIXRTC__FULL_ACCESS_HOMESERVERS", "a.org"),
        ("LIVEKIT_FULL_ACCESS_HOMESERVERS", "*"),
    ];
    let err = load_err(&["--dev"], &vars, None);
    assert_eq!(
        err,
        "matrixrtc.full_access_homeservers: SWITCHBOARD_MATRIXRTC__FULL_ACCESS_HOMESERVERS and \
         LIVEKIT_FULL_ACCESS_HOMESERVERS are both set, to different values; set only one"
    );
}

#[test]
fn switchboard_and_livekit_variables_with_equal_values_are_accepted() {
    let vars = [
        ("SWITCHBOARD_MATRIXRTC__PUBLIC_URL", "wss://a.example"),
        ("LIVEKIT_URL", " wss://a.example "),
        (
            "SWITCHBOARD_MATRIXRTC__FULL_ACCESS_HOMESERVERS",
            "a.org,b.org",
        ),
        ("LIVEKIT_FULL_ACCESS_HOMESERVERS", "b.org, a.org"),
        ("LIVEKIT_KEYS", "k: s"),
    ];
    let s = load_ok(&[], &vars, None);
    assert_eq!(s.matrixrtc.public_url, "wss://a.example");
    assert_eq!(s.matrixrtc.full_access_homeservers.len(), 2);
    assert!(s.matrixrtc.enabled);
}

#[test]
fn full_access_entries_must_be_non_empty_and_without_spaces() {
    let err = load_err(
        &["--dev"],
        &[],
        Some("[matrixrtc]\nfull_access_homeservers = [\"a.org\", \"\"]\n"),
    );
    assert_eq!(
        err,
        "matrixrtc.full_access_homeservers: invalid value [\"a.org\", \"\"] in config file: \
         expected a list of Matrix server names without spaces, or [\"*\"] alone for every \
         server (comma separated in the environment)"
    );
    let err = load_err(
        &["--dev"],
        &[],
        Some("[matrixrtc]\nfull_access_homeservers = [\"exa mple.org\"]\n"),
    );
    assert!(
        err.starts_with("matrixrtc.full_access_homeservers: invalid value [\"exa mple.org\"]"),
        "{err}"
    );
    let err = load_err(
        &["--dev"],
        &[(
            "SWITCHBOARD_MATRIXRTC__FULL_ACCESS_HOMESERVERS",
            "a.org, b org",
        )],
        None,
    );
    assert!(
        err.starts_with(
            "matrixrtc.full_access_homeservers: invalid value \"a.org, b org\" in \
             SWITCHBOARD_MATRIXRTC__FULL_ACCESS_HOMESERVERS"
        ),
        "{err}"
    );
    let err = load_err(
        &["--dev"],
        &[],
        Some("[matrixrtc]\nfull_access_homeservers = [\"a.org\", 5]\n"),
    );
    assert!(
        err.starts_with("matrixrtc.full_access_homeservers: invalid value [\"a.org\", 5]"),
        "{err}"
    );
}

#[test]
fn star_is_only_accepted_alone() {
    let err = load_err(
        &["--dev"],
        &[],
        Some("[matrixrtc]\nfull_access_homeservers = [\"*\", \"a.org\"]\n"),
    );
    assert!(
        err.starts_with("matrixrtc.full_access_homeservers: invalid value [\"*\", \"a.org\"]"),
        "{err}"
    );
    let err = load_err(
        &["--dev"],
        &[("LIVEKIT_FULL_ACCESS_HOMESERVERS", "a.org,*")],
        None,
    );
    assert!(
        err.starts_with(
            "matrixrtc.full_access_homeservers: invalid value \"a.org,*\" in \
             LIVEKIT_FULL_ACCESS_HOMESERVERS: expected"
        ),
        "{err}"
    );
    // A repeated star is still a star alone.
    let s = load_ok(
        &["--dev"],
        &[("LIVEKIT_FULL_ACCESS_HOMESERVERS", "*, *")],
        None,
    );
    assert_eq!(s.matrixrtc.full_access_homeservers, names(&["*"]));
}

#[test]
fn public_url_needs_a_websocket_or_http_scheme_and_a_host() {
    for good in [
        "wss://rtc.example.org",
        "ws://127.0.0.1:7880",
        "ws://[::1]:7880/",
        "http://rtc.example.org/livekit/sfu",
        "https://rtc.example.org:443",
        "WSS://RTC.EXAMPLE.ORG",
    ] {
        let s = load_ok(&["--dev"], &[("LIVEKIT_URL", good)], None);
        assert_eq!(s.matrixrtc.public_url, good);
    }
    for bad in [
        "rtc.example.org",
        "ftp://rtc.example.org",
        "wss://",
        "wss:///path",
        "wss://:443",
        "wss://rtc.example.org:0",
        "wss://rtc.example.org:65536",
        "wss://rtc.example.org:",
        "wss://rtc.example.org:x",
        "wss://rtc.example.org?a=b",
        "wss://rtc.example.org/#x",
        "wss://user@rtc.example.org",
        "wss://rtc example.org",
        "wss://[::1",
        "wss://[nonsense]",
        "wss://::1",
        "",
    ] {
        let err = load_err(
            &["--dev"],
            &[("SWITCHBOARD_MATRIXRTC__PUBLIC_URL", bad)],
            None,
        );
        assert_eq!(
            err,
            format!(
                "matrixrtc.public_url: invalid value {bad:?} in \
                 SWITCHBOARD_MATRIXRTC__PUBLIC_URL: expected a ws://, wss://, http:// or \
                 https:// URL with a host (and optionally a port and a path)"
            )
        );
    }
    let err = load_err(&["--dev"], &[("LIVEKIT_URL", "rtc.example.org")], None);
    assert!(
        err.starts_with("matrixrtc.public_url: invalid value \"rtc.example.org\" in LIVEKIT_URL"),
        "{err}"
    );
    let err = load_err(&["--dev"], &[], Some("[matrixrtc]\npublic_url = 5\n"));
    assert!(
        err.starts_with("matrixrtc.public_url: invalid value 5 in config file"),
        "{err}"
    );
}

#[test]
fn homeserver_urls_need_http_urls_and_non_empty_names() {
    let err = load_err(
        &["--dev"],
        &[],
        Some("[matrixrtc.homeserver_urls]\n\"a.org\" = \"wss://hs.a.org\"\n"),
    );
    assert_eq!(
        err,
        "matrixrtc.homeserver_urls: invalid value { \"a.org\" = \"wss://hs.a.org\" } in config \
         file: expected server names mapped to http:// or https:// URLs with a host (and \
         optionally a port and a path); comma separated name=url pairs in the environment"
    );
    for file in [
        "[matrixrtc.homeserver_urls]\n\"\" = \"https://hs.a.org\"\n",
        "[matrixrtc.homeserver_urls]\n\"a org\" = \"https://hs.a.org\"\n",
        "[matrixrtc.homeserver_urls]\n\"a.org\" = 8008\n",
        "[matrixrtc.homeserver_urls]\n\"a.org\" = \"https://\"\n",
        "[matrixrtc]\nhomeserver_urls = \"a.org=https://hs.a.org\"\n",
    ] {
        let err = load_err(&["--dev"], &[], Some(file));
        assert!(
            err.starts_with("matrixrtc.homeserver_urls: invalid value "),
            "{file}: {err}"
        );
    }
    for bad in [
        "a.org",
        "=http://hs",
        "a.org=",
        "a.org=hs.a.org",
        "a.org=http://hs?x=1",
        "a.org=http://one, a.org=http://two",
    ] {
        let err = load_err(
            &["--dev"],
            &[("SWITCHBOARD_MATRIXRTC__HOMESERVER_URLS", bad)],
            None,
        );
        assert!(
            err.starts_with(&format!(
                "matrixrtc.homeserver_urls: invalid value {bad:?} in \
                 SWITCHBOARD_MATRIXRTC__HOMESERVER_URLS: expected"
            )),
            "{err}"
        );
    }
    // The same name twice with the same URL is fine.
    let s = load_ok(
        &["--dev"],
        &[(
            "SWITCHBOARD_MATRIXRTC__HOMESERVER_URLS",
            "a.org=http://hs, a.org=http://hs/",
        )],
        None,
    );
    assert_eq!(s.matrixrtc.homeserver_urls, env(&[("a.org", "http://hs")]));
}

#[test]
fn wrongly_typed_matrixrtc_values_name_the_setting() {
    let err = load_err(&["--dev"], &[], Some("[matrixrtc]\nenabled = \"yes\"\n"));
    assert_eq!(
        err,
        "matrixrtc.enabled: invalid value \"yes\" in config file: \
         expected true or false (1 or 0 in the environment)"
    );
    let err = load_err(
        &["--dev"],
        &[],
        Some("[matrixrtc]\nfull_access_homeservers = \"*\"\n"),
    );
    assert!(
        err.starts_with("matrixrtc.full_access_homeservers: invalid value \"*\" in config file"),
        "{err}"
    );
    let err = load_err(
        &["--dev"],
        &[("SWITCHBOARD_MATRIXRTC__ENABLED", "on")],
        None,
    );
    assert!(
        err.starts_with(
            "matrixrtc.enabled: invalid value \"on\" in SWITCHBOARD_MATRIXRTC__ENABLED"
        ),
        "{err}"
    );
    let err = load_err(&["--dev"], &[], Some("matrixrtc = true\n"));
    assert!(
        err.starts_with("matrixrtc: invalid value true in config file: expected a table"),
        "{err}"
    );
}

#[test]
fn unknown_matrixrtc_key_is_named_in_error() {
    let err = load_err(&["--dev"], &[], Some("[matrixrtc]\nenable = true\n"));
    assert_eq!(
        err,
        "matrixrtc.enable: unknown key in config file \
         (expected one of: enabled, full_access_homeservers, public_url, homeserver_urls)"
    );
    let err = load_err(
        &["--dev"],
        &[],
        Some("[matrixrtc.homeservers]\n\"a\" = \"b\"\n"),
    );
    assert!(
        err.starts_with("matrixrtc.homeservers: unknown key in config file"),
        "{err}"
    );
}

#[test]
fn unknown_matrixrtc_env_var_gets_a_hint() {
    let err = load_err(&["--dev"], &[("SWITCHBOARD_MATRIXRTC_ENABLED", "1")], None);
    assert_eq!(
        err,
        "SWITCHBOARD_MATRIXRTC_ENABLED: unknown environment variable \
         (did you mean SWITCHBOARD_MATRIXRTC__ENABLED?)"
    );
    let err = load_err(
        &["--dev"],
        &[("SWITCHBOARD_MATRIXRTC__URL", "ws://x")],
        None,
    );
    assert_eq!(
        err,
        "SWITCHBOARD_MATRIXRTC__URL: unknown environment variable (known in this section: \
         SWITCHBOARD_MATRIXRTC__ENABLED, SWITCHBOARD_MATRIXRTC__FULL_ACCESS_HOMESERVERS, \
         SWITCHBOARD_MATRIXRTC__PUBLIC_URL, SWITCHBOARD_MATRIXRTC__HOMESERVER_URLS)"
    );
}

#[test]
fn is_full_access_matches_exact_names_or_star() {
    let mut m = MatrixRtcSettings {
        enabled: true,
        full_access_homeservers: names(&["example.org", "other.org:8448"]),
        public_url: "wss://rtc.example.org".into(),
        homeserver_urls: BTreeMap::new(),
    };
    assert!(m.is_full_access("example.org"));
    assert!(m.is_full_access("other.org:8448"));
    assert!(!m.is_full_access("other.org"));
    assert!(!m.is_full_access("sub.example.org"));
    assert!(!m.is_full_access("Example.org"));
    assert!(!m.is_full_access(""));
    m.full_access_homeservers = names(&["*"]);
    assert!(m.is_full_access("anything.example"));
    m.full_access_homeservers.clear();
    assert!(!m.is_full_access("example.org"));
}

#[test]
fn debug_output_shows_matrixrtc_settings() {
    let s = load_ok(
        &["--dev"],
        &[("LIVEKIT_URL", "wss://rtc.example.org")],
        None,
    );
    let text = format!("{s:?}");
    assert!(text.contains("matrixrtc: MatrixRtcSettings"), "{text}");
    assert!(text.contains("wss://rtc.example.org"), "{text}");
}

#[test]
fn toml_examples_in_configuration_docs_load() {
    let doc = include_str!("../../docs/configuration.md");
    let mut count = 0;
    for block in doc.split("```toml\n").skip(1) {
        let example = block.split("```").next().unwrap();
        load_ok(&["--dev"], &[], Some(example));
        count += 1;
    }
    assert!(count >= 3, "found {count} examples");
}
