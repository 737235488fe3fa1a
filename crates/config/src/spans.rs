//! Maps key paths (`clusters[0].nodes[1].region`) to where they are in the
//! file, so validation errors can name a line.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

/// Every key of a TOML document with the byte range from its key to the end
/// of its value.
pub struct SpanIndex {
    text_line_starts: Vec<usize>,
    keys: Vec<(String, Range<usize>)>,
}

impl SpanIndex {
    pub fn new(text: &str) -> SpanIndex {
        let mut keys = Vec::new();
        if let Ok(doc) = DeTable::parse(text) {
            walk_table("", doc.get_ref(), &mut keys);
        }
        let mut text_line_starts = vec![0];
        text_line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        SpanIndex { text_line_starts, keys }
    }

    /// The 1-based line where `offset` is.
    pub fn line_of(&self, offset: usize) -> usize {
        match self.text_line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// The line of a key path, or of its nearest parent that is in the file.
    pub fn line_of_key(&self, key: &str) -> Option<usize> {
        let mut k = key;
        loop {
            if let Some((_, r)) = self.keys.iter().find(|(p, _)| p == k) {
                return Some(self.line_of(r.start));
            }
            let cut = k.rfind(['.', '['])?;
            k = &k[..cut];
        }
    }

    /// The innermost key whose span contains `offset`.
    pub fn key_at(&self, offset: usize) -> Option<&str> {
        self.keys
            .iter()
            .filter(|(_, r)| r.contains(&offset))
            .min_by_key(|(_, r)| r.end - r.start)
            .map(|(p, _)| p.as_str())
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() { key.to_owned() } else { format!("{prefix}.{key}") }
}

fn walk_table(prefix: &str, table: &DeTable<'_>, out: &mut Vec<(String, Range<usize>)>) {
    for (k, v) in table.iter() {
        let path = join(prefix, k.get_ref());
        let start = k.span().start.min(v.span().start);
        let end = k.span().end.max(v.span().end);
        out.push((path.clone(), start..end));
        walk_value(&path, v.get_ref(), out);
    }
}

fn walk_value(path: &str, v: &DeValue<'_>, out: &mut Vec<(String, Range<usize>)>) {
    match v {
        DeValue::Table(t) => walk_table(path, t, out),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                let p = format!("{path}[{i}]");
                out.push((p.clone(), item.span()));
                walk_value(&p, item.get_ref(), out);
            }
        }
        _ => {}
    }
}
