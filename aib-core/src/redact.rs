//! Secrets that travel inside URLs: a SAS token's signature (`sig=`), and any query, never
//! reach a log, an event, an error or a report.
//!
//! ```
//! use aib_core::redact;
//! let uri = "https://acct.blob.core.windows.net/c/app.zip?sv=2024&sig=abc%2Bdef&se=2026";
//! assert_eq!(redact::url(uri), "https://acct.blob.core.windows.net/c/app.zip?…");
//! assert_eq!(redact::signatures(&format!("GET {uri} failed")),
//!            "GET https://acct.blob.core.windows.net/c/app.zip?sv=2024&sig=REDACTED&se=2026 failed");
//! ```

/// `uri` without its query and fragment, shown as `?…` when there was one: how aib renders
/// every URI it names (a SAS is a query).
pub fn url(uri: &str) -> String {
    match uri.find(['?', '#']) {
        Some(i) if uri[i..].starts_with('?') => format!("{}?…", &uri[..i]),
        Some(i) => uri[..i].to_string(),
        None => uri.to_string(),
    }
}

/// `text` with the value of every `sig=` parameter replaced by `REDACTED`: applied to every
/// line, notice and error a run emits, whoever wrote it (a guest printing a SAS URL included).
pub fn signatures(text: &str) -> String {
    if !text.contains("sig=") {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("sig=") {
        out.push_str(&rest[..i + 4]);
        out.push_str("REDACTED");
        rest = &rest[i + 4..];
        let end = rest.find(|c: char| c == '&' || c == '"' || c == '\'' || c.is_whitespace()).unwrap_or(rest.len());
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_query_and_fragment() {
        assert_eq!(url("https://h/p?sv=1&sig=x"), "https://h/p?…");
        assert_eq!(url("https://h/p#frag"), "https://h/p");
        assert_eq!(url("file:///etc/x"), "file:///etc/x");
    }

    #[test]
    fn every_signature_in_a_text_is_redacted() {
        let t = "copy from http://h/c/b.vhd?sv=1&sig=abc%2B=&se=2 failed: x-ms-copy-source:https://a/b?sig=zz\nnext";
        assert_eq!(
            signatures(t),
            "copy from http://h/c/b.vhd?sv=1&sig=REDACTED&se=2 failed: x-ms-copy-source:https://a/b?sig=REDACTED\nnext"
        );
        assert_eq!(signatures("nothing secret"), "nothing secret");
    }
}
