//! What host tools started for a build inherit: the environment they need to run and reach a
//! package mirror, and nothing else — no cloud credentials (`AZURE_CLIENT_SECRET`,
//! `AZURE_STORAGE_KEY`, a SAS token), whatever the builder's own environment holds.
//!
//! ```
//! let mut cmd = std::process::Command::new("true");
//! cmd.env_clear().envs(aib_core::boundary::tool_env());
//! assert!(aib_core::boundary::tool_env().all(|(k, _)| !k.starts_with("AZURE_")));
//! ```

/// The variables host tools keep (qemu-img, qemu, mmdebstrap and apt, sfdisk): the search
/// path, locale and time zone, temp directory, home, and the proxies a mirror may need.
pub const TOOL_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "TERM",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
];

/// The builder's values of [`TOOL_ENV`], for `Command::env_clear().envs(..)`.
pub fn tool_env() -> impl Iterator<Item = (String, String)> {
    TOOL_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
}
