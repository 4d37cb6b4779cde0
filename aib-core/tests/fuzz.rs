//! Property test: mutated corpus templates never make the parser panic, and whatever it
//! accepts serializes back to something it accepts again.

use aib_core::template::{Document, ImageTemplate};
use proptest::prelude::*;
use serde_json::{Value, json};
use std::path::Path;

static CORPUS: std::sync::LazyLock<Vec<Value>> = std::sync::LazyLock::new(load);

fn corpus() -> &'static [Value] {
    &CORPUS
}

fn load() -> Vec<Value> {
    let mut out = Vec::new();
    for dir in ["quickstarts", "rest-api-examples"] {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(dir);
        let mut files: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files {
            out.push(serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap());
        }
    }
    out
}

/// Every path (as indices into objects/arrays) of a value.
fn paths(v: &Value, prefix: Vec<usize>, out: &mut Vec<Vec<usize>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => m.values().enumerate().for_each(|(i, c)| {
            let mut p = prefix.clone();
            p.push(i);
            paths(c, p, out)
        }),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, c)| {
            let mut p = prefix.clone();
            p.push(i);
            paths(c, p, out)
        }),
        _ => {}
    }
}

fn node<'a>(v: &'a mut Value, path: &[usize]) -> &'a mut Value {
    match path.split_first() {
        None => v,
        Some((i, rest)) => match v {
            Value::Object(m) => {
                let k = m.keys().nth(*i).cloned().unwrap();
                node(m.get_mut(&k).unwrap(), rest)
            }
            Value::Array(a) => node(&mut a[*i], rest),
            _ => unreachable!(),
        },
    }
}

fn replacement(choice: u8, s: String) -> Value {
    match choice % 14 {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(-1),
        3 => json!(2147483648i64),
        4 => json!(1.5),
        5 => json!(s),
        6 => json!([s]),
        7 => json!({"type": s}),
        8 => json!([]),
        9 => json!({}),
        10 => json!("[parameters('x')]"),
        11 => json!("<placeholder>"),
        12 => {
            // Deep nesting.
            let mut v = json!(s);
            for _ in 0..40 {
                v = json!({"properties": {"source": [v]}});
            }
            v
        }
        _ => json!(u64::MAX),
    }
}

fn mutate(mut v: Value, ops: &[(usize, u8, String)]) -> Value {
    for (pick, choice, s) in ops {
        let mut ps = Vec::new();
        paths(&v, Vec::new(), &mut ps);
        let path = ps[pick % ps.len()].clone();
        let target = node(&mut v, &path);
        match choice % 4 {
            // Drop a key of an object.
            0 if target.as_object().is_some_and(|m| !m.is_empty()) => {
                let m = target.as_object_mut().unwrap();
                let k = m.keys().nth(*pick % m.len()).cloned().unwrap();
                m.remove(&k);
            }
            // Rename a key (case flips and typos).
            1 if target.as_object().is_some_and(|m| !m.is_empty()) => {
                let m = target.as_object_mut().unwrap();
                let k = m.keys().nth(*pick % m.len()).cloned().unwrap();
                let val = m.remove(&k).unwrap();
                m.insert(if s.is_empty() { k.to_uppercase() } else { s.clone() }, val);
            }
            _ => *target = replacement(*choice / 4, s.clone()),
        }
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_templates_never_panic(
        file in 0usize..44,
        ops in proptest::collection::vec((any::<usize>(), any::<u8>(), "\\PC{0,12}"), 1..6),
    ) {
        let corpus = corpus();
        let v = mutate(corpus[file % corpus.len()].clone(), &ops);
        let text = v.to_string();
        let doc = Document::parse(&text);
        if !doc.diagnostics.has_errors()
            && let Ok(parsed) = ImageTemplate::from_document(doc) {
                let again = Document::parse(&parsed.template.to_json_pretty());
                let _ = again.diagnostics.has_errors();
                let _ = parsed.template.normalized();
                let _ = parsed.template.expressions();
            }
    }

    #[test]
    fn damaged_bytes_never_panic(file in 0usize..44, cut in any::<usize>(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8)) {
        let corpus = corpus();
        let mut bytes = serde_json::to_vec(&corpus[file % corpus.len()]).unwrap();
        for (at, b) in flips {
            let n = bytes.len();
            bytes[at % n] = b;
        }
        bytes.truncate(cut % (bytes.len() + 1));
        let text = String::from_utf8_lossy(&bytes);
        let _ = Document::parse(&text);
    }
}

#[test]
fn pathological_inputs() {
    for text in [
        "".to_string(),
        "null".into(),
        "[".repeat(100_000),
        format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)),
        format!("{{\"properties\": {{\"customize\": [{}]}}}}", vec!["{\"type\": \"Shell\"}"; 50_000].join(",")),
        "\u{feff}{}".into(),
    ] {
        let doc = Document::parse(&text);
        assert!(doc.diagnostics.has_errors(), "{}", &text[..text.len().min(40)]);
    }
}
