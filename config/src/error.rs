//! Errors reported while loading settings.

use std::fmt;
use std::path::PathBuf;

/// Where a setting value came from; used in error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueSource {
    /// A command-line flag, e.g. `--port`.
    Flag(&'static str),
    /// An environment variable, e.g. `SWITCHBOARD_HTTP__PORT`.
    Env(String),
    /// A file named by an environment variable (`LIVEKIT_KEY_FILE`,
    /// `LIVEKIT_KEY_FROM_FILE`, `LIVEKIT_SECRET_FROM_FILE`).
    EnvFile {
        /// The environment variable that names the file.
        var: String,
        /// The file's path as given in the variable.
        path: PathBuf,
    },
    /// The TOML config file (`path` is `None` when the text was passed in
    /// directly, as [`Settings::from_sources`](crate::Settings::from_sources)
    /// does).
    File(Option<PathBuf>),
}

impl fmt::Display for ValueSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueSource::Flag(flag) => f.write_str(flag),
            ValueSource::Env(var) => f.write_str(var),
            ValueSource::EnvFile { var, path } => {
                write!(f, "file {} (named by {var})", path.display())
            }
            ValueSource::File(Some(path)) => write!(f, "config file {}", path.display()),
            ValueSource::File(None) => f.write_str("config file"),
        }
    }
}

/// An error in the configuration. Its `Display` is a single line that starts
/// with the setting concerned (e.g. `rtc.udp_port`, `keys`, or the variable or
/// flag name) and says what is wrong. Secrets are never included.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file named by `--config` could not be read.
    #[error("--config {}: cannot read file: {source}", path.display())]
    ReadConfigFile {
        /// Path given to `--config`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// The config file is not valid TOML.
    #[error("{origin}: TOML syntax error at line {line}, column {column}: {message}")]
    TomlSyntax {
        /// The config file.
        origin: ValueSource,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The parser's message, on one line.
        message: String,
    },

    /// The config file contains a section or key this version does not know
    /// (typo protection).
    #[error("{key}: unknown {kind} in {origin} (expected one of: {expected})")]
    UnknownFileKey {
        /// Dotted name of the unknown item, e.g. `http.prot` or `htp`.
        key: String,
        /// `"section"` or `"key"`.
        kind: &'static str,
        /// The config file.
        origin: ValueSource,
        /// The names allowed at that place, comma separated.
        expected: String,
    },

    /// An environment variable starting with `SWITCHBOARD_` is not a known
    /// setting (typo protection).
    #[error("{var}: unknown environment variable ({hint})")]
    UnknownEnvVar {
        /// The variable's name.
        var: String,
        /// What was expected, or the likely intended name.
        hint: String,
    },

    /// A relevant environment variable's value is not valid UTF-8.
    #[error("{var}: value is not valid UTF-8")]
    NonUnicodeEnv {
        /// The variable's name.
        var: String,
    },

    /// A setting has a value of the wrong type or out of range.
    #[error("{setting}: invalid value {value} in {origin}: expected {expected}")]
    InvalidValue {
        /// Dotted setting name, e.g. `rtc.udp_port`.
        setting: String,
        /// The offending value as written (strings quoted).
        value: String,
        /// Where the value came from.
        origin: ValueSource,
        /// What an acceptable value looks like.
        expected: String,
    },

    /// A file named by an environment variable (`LIVEKIT_KEY_FILE`,
    /// `LIVEKIT_KEY_FROM_FILE`, `LIVEKIT_SECRET_FROM_FILE`) could not be read.
    #[error("keys: cannot read {} (named by {var}): {source}", path.display())]
    ReadEnvFile {
        /// The environment variable naming the file.
        var: String,
        /// The file's path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },

    /// Only one half of an API key / secret pair was given in the environment
    /// (e.g. `LIVEKIT_KEY` without `LIVEKIT_SECRET`).
    #[error("keys: {present} is set but {missing} is not; set both")]
    IncompleteKeyPair {
        /// The variable that is set.
        present: String,
        /// The variable(s) that would complete the pair.
        missing: String,
    },

    /// Two environment variables that exclude each other are both set.
    #[error("keys: {first} and {second} are both set; use only one")]
    ConflictingEnv {
        /// One variable.
        first: String,
        /// The other variable.
        second: String,
    },

    /// A setting is given by both its `SWITCHBOARD_*` variable and an
    /// lk-jwt-service variable (`LIVEKIT_FULL_ACCESS_HOMESERVERS`,
    /// `LIVEKIT_URL`), with different values.
    #[error("{setting}: {first} and {second} are both set, to different values; set only one")]
    ConflictingEnvValues {
        /// Dotted setting name, e.g. `matrixrtc.public_url`.
        setting: String,
        /// The `SWITCHBOARD_*` variable.
        first: String,
        /// The lk-jwt-service variable.
        second: String,
    },

    /// A setting that another setting makes necessary has no usable value
    /// (e.g. `matrixrtc.full_access_homeservers` is empty while MatrixRTC
    /// authorisation is enabled).
    #[error("{setting}: required when {condition} ({expected}); {hint}")]
    Required {
        /// Dotted setting name, e.g. `matrixrtc.full_access_homeservers`.
        setting: String,
        /// What makes it necessary.
        condition: String,
        /// What an acceptable value looks like.
        expected: String,
        /// How to fix it (where to set it).
        hint: String,
    },

    /// An API key entry is malformed: empty key name, empty secret, or an
    /// entry of a `key: secret` list without a colon.
    #[error("keys{}: {problem} in {origin}", key.as_ref().map(|k| format!(".{k}")).unwrap_or_default())]
    InvalidKey {
        /// The API key concerned, when known.
        key: Option<String>,
        /// What is wrong.
        problem: String,
        /// Where the entry came from.
        origin: ValueSource,
    },

    /// The same API key was given two different secrets in the environment.
    #[error(
        "keys.{key}: two different secrets given ({})",
        describe_pair(first, second)
    )]
    DuplicateKey {
        /// The API key.
        key: String,
        /// Where the first secret came from.
        first: ValueSource,
        /// Where the second secret came from.
        second: ValueSource,
    },

    /// No API key is configured and `--dev` is not set.
    #[error(
        "keys: no API key configured; set [keys] in the config file, LIVEKIT_KEYS, or \
         LIVEKIT_KEY/LIVEKIT_SECRET, or run with --dev"
    )]
    NoKeys,
}

fn describe_pair(first: &ValueSource, second: &ValueSource) -> String {
    if first == second {
        format!("twice in {first}")
    } else {
        format!("in {first} and in {second}")
    }
}
