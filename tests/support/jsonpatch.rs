//! A minimal RFC 6902 JSONPatch applier (`add`, `replace`) for checking the patches berth's
//! admission webhook returns; shared by the webhook tests.

use serde_json::Value;

fn unescape(seg: &str) -> String {
    seg.replace("~1", "/").replace("~0", "~")
}

/// RFC 6902 `add` and `replace`, the operations a mutating webhook needs here.
pub fn apply_patch(doc: &mut Value, patch: &Value) {
    for op in patch.as_array().expect("patch is a JSON array") {
        let path = op["path"].as_str().expect("op.path");
        let segs: Vec<String> = path.split('/').skip(1).map(unescape).collect();
        let (last, parents) = segs.split_last().expect("non-root path");
        let mut target = &mut *doc;
        for s in parents {
            target = match target {
                Value::Array(a) => &mut a[s.parse::<usize>().expect("index")],
                Value::Object(o) => o
                    .get_mut(s)
                    .unwrap_or_else(|| panic!("{path}: no parent {s}")),
                _ => panic!("{path}: bad parent at {s}"),
            };
        }
        let value = op["value"].clone();
        match (op["op"].as_str(), target) {
            (Some("add"), Value::Array(a)) if last == "-" => a.push(value),
            (Some("add"), Value::Array(a)) => a.insert(last.parse().expect("index"), value),
            (Some("add"), Value::Object(o)) => {
                o.insert(last.clone(), value);
            }
            (Some("replace"), Value::Array(a)) => {
                let i: usize = last.parse().expect("index");
                assert!(i < a.len(), "{path}: replace past the end");
                a[i] = value;
            }
            (Some("replace"), Value::Object(o)) => {
                assert!(o.contains_key(last), "{path}: replace of a missing member");
                o.insert(last.clone(), value);
            }
            (o, _) => panic!("unexpected op {o:?} at {path}"),
        }
    }
}
