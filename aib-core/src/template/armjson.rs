//! What ARM's template engine reads beyond strict JSON: `//` and `/* */` comments and
//! trailing commas. They are blanked out (newlines kept), so every line and column of the
//! relaxed text is the line and column of the original.

/// Where the first of each extension is, 1-based `(line, column)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Extensions {
    pub(crate) comment: Option<(usize, usize)>,
    pub(crate) trailing_comma: Option<(usize, usize)>,
}

impl Extensions {
    pub(crate) fn any(&self) -> bool {
        self.comment.is_some() || self.trailing_comma.is_some()
    }

    /// "a comment at line 3, column 5 and a trailing comma at line 9, column 2".
    pub(crate) fn describe(&self) -> String {
        let at = |(l, c): (usize, usize)| format!("line {l}, column {c}");
        match (self.comment, self.trailing_comma) {
            (Some(a), Some(b)) => format!("comments (first at {}) and trailing commas (first at {})", at(a), at(b)),
            (Some(a), None) => format!("comments (first at {})", at(a)),
            (None, Some(b)) => format!("trailing commas (first at {})", at(b)),
            (None, None) => "nothing".into(),
        }
    }
}

/// `text` with comments and trailing commas blanked, and where they were.
pub(crate) fn relax(text: &str) -> (String, Extensions) {
    let b = text.as_bytes();
    let mut out = b.to_vec();
    let mut ext = Extensions::default();
    let pos = |i: usize| {
        let before = &text[..i];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        (line, col)
    };
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' && *c != b'\r' {
                *c = b' ';
            }
        }
    };
    // Commas seen outside strings, not yet followed by a value: a closing bracket next makes
    // them trailing.
    let mut pending_comma: Option<usize> = None;
    let (mut i, mut in_string) = (0, false);
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_string = true;
                pending_comma = None;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                let end = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
                ext.comment.get_or_insert(pos(i));
                blank(&mut out, i, end);
                i = end;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                // An unterminated comment runs to the end (the parser then says what is missing).
                let end = text[i + 2..].find("*/").map_or(b.len(), |n| i + 2 + n + 2);
                ext.comment.get_or_insert(pos(i));
                blank(&mut out, i, end);
                i = end;
                continue;
            }
            b',' => pending_comma = Some(i),
            b'}' | b']' => {
                if let Some(at) = pending_comma.take() {
                    ext.trailing_comma.get_or_insert(pos(at));
                    out[at] = b' ';
                }
            }
            c if c.is_ascii_whitespace() => {}
            _ => pending_comma = None,
        }
        i += 1;
    }
    // Only ASCII bytes were replaced by ASCII spaces: still UTF-8.
    (String::from_utf8(out).unwrap_or_else(|_| text.to_string()), ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_and_trailing_commas_are_blanked_in_place() {
        let text = "{\n  // a note, with \"quotes\"\n  \"a\": \"x // not a comment\", /* b */ \"b\": [1, 2,],\n}";
        let (relaxed, ext) = relax(text);
        let v: serde_json::Value = serde_json::from_str(&relaxed).unwrap();
        assert_eq!(v, serde_json::json!({"a": "x // not a comment", "b": [1, 2]}));
        assert_eq!(relaxed.len(), text.len());
        assert_eq!(relaxed.lines().count(), text.lines().count());
        assert_eq!(ext.comment, Some((2, 3)));
        assert_eq!(ext.trailing_comma, Some((3, 48)));
        assert!(ext.describe().contains("line 2, column 3"));
    }

    #[test]
    fn strict_json_is_left_alone() {
        let text = r#"{"a": "/* no */", "b": ["\"", ","], "c": {}}"#;
        let (relaxed, ext) = relax(text);
        assert_eq!((relaxed.as_str(), ext.any()), (text, false));
        // A comma before a value that is missing is not a trailing one: the parser refuses it.
        let (relaxed, _) = relax("[1,,]");
        assert!(serde_json::from_str::<serde_json::Value>(&relaxed).is_err());
    }
}
