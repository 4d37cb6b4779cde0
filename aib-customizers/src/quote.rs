//! Quoting for the shells commands run in: nothing the template says is ever spliced into a
//! command line unquoted.

/// Quotes `s` for a POSIX shell: `'it'\''s'`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Quotes `s` as a PowerShell single-quoted string: `'it''s'`.
pub fn ps_quote(s: &str) -> String {
    // PowerShell also treats the typographic single quotes as quote characters.
    let escaped: String = s
        .chars()
        .flat_map(|c| if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') { vec![c, c] } else { vec![c] })
        .collect();
    format!("'{escaped}'")
}

/// True for a name usable as an environment variable.
pub fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(ps_quote("it's"), "'it''s'");
        assert_eq!(ps_quote("a\u{2019}b"), "'a\u{2019}\u{2019}b'");
        assert!(is_env_name("HTTP_PROXY") && !is_env_name("1A") && !is_env_name("A-B") && !is_env_name(""));
    }
}
