//! Adding to a `pgdr.toml` by hand-written text, keeping everything a
//! person wrote (comments, order): a new cluster at the end, a new node at
//! the end of its cluster's block, a region. Every edit is checked by
//! parsing the result ([`write_checked`]) before the file is replaced, so a
//! command never leaves a config that does not load.

use std::path::Path;

use crate::{Config, ConfigError};

/// A TOML basic string.
pub fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `text` with `block` appended after a blank line.
pub fn append(text: &str, block: &str) -> String {
    let mut out = text.trim_end().to_owned();
    if !out.is_empty() {
        out.push_str("\n\n");
    }
    out.push_str(block.trim_end());
    out.push('\n');
    out
}

fn header(line: &str) -> Option<&str> {
    let t = line.trim();
    if t.starts_with('[') { Some(t.split('#').next().unwrap_or(t).trim()) } else { None }
}

/// `text` with `block` (a `[[clusters.nodes]]` table) inserted at the end
/// of cluster `cluster`'s block: before the first header after its
/// `[[clusters]]` that is not one of its sub-tables. `None` when the file
/// has no such cluster written as `name = "..."` under its header.
pub fn insert_node(text: &str, cluster: &str, block: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let want = format!("name = {}", q(cluster));
    let mut start = None;
    for (i, l) in lines.iter().enumerate() {
        if header(l) == Some("[[clusters]]") {
            // Its keys run until the next header.
            let named = lines[i + 1..]
                .iter()
                .take_while(|l| header(l).is_none())
                .any(|l| l.trim().replace(['\'', ' '], "").replace('"', "") == want.replace(['"', ' '], ""));
            if named {
                start = Some(i);
                break;
            }
        }
    }
    let start = start?;
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate().skip(start + 1) {
        if let Some(h) = header(l) {
            let inner = h.trim_start_matches('[').trim_end_matches(']');
            if !inner.starts_with("clusters.") {
                end = i;
                break;
            }
        }
    }
    // Comments and blank lines just above the next header belong to it.
    while end > start + 1 && (lines[end - 1].trim().is_empty() || lines[end - 1].trim_start().starts_with('#')) {
        end -= 1;
    }
    let mut out: Vec<String> = lines[..end].iter().map(|s| (*s).to_owned()).collect();
    out.push(String::new());
    out.extend(block.trim_end().lines().map(str::to_owned));
    if end < lines.len() {
        out.push(String::new());
        out.extend(lines[end..].iter().map(|s| (*s).to_owned()));
    }
    let mut s = out.join("\n");
    s.push('\n');
    Some(s)
}

/// Parses `text` as the config at `path`, runs `check` on it, then replaces
/// the file atomically (same folder, same mode). Returns the new config.
pub fn write_checked(
    path: &Path,
    text: &str,
    check: impl FnOnce(&Config) -> Result<(), String>,
) -> Result<Config, EditError> {
    let cfg = Config::parse(path, text).map_err(EditError::Invalid)?;
    check(&cfg).map_err(EditError::Check)?;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "pgdr.toml".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |e: std::io::Error| EditError::Io(format!("{}: {e}", path.display()));
    let mode = std::fs::metadata(path).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions())).ok();
    std::fs::write(&tmp, text).map_err(io)?;
    if let Some(m) = mode {
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(m)).map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(cfg)
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("the edited config would not load (nothing written): {0}")]
    Invalid(ConfigError),
    #[error("the edited config is not what was meant (nothing written): {0}")]
    Check(String),
    #[error("{0}")]
    Io(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[[clusters]]\nname = \"a\"\ntier = \"t\"\n\n[[clusters.nodes]]\nname = \"a1\"\n\n[clusters.secrets]\nx = 1\n\n# the b cluster\n[[clusters]]\nname = \"b\"\n\n[[proxies]]\ncluster = \"a\"\n";

    #[test]
    fn a_node_goes_to_the_end_of_its_cluster() {
        let out = insert_node(TEXT, "a", "[[clusters.nodes]]\nname = \"a2\"").expect("cluster a");
        let a2 = out.find("a2").expect("inserted");
        assert!(a2 > out.find("x = 1").expect("secrets") && a2 < out.find("# the b cluster").expect("comment"));
        let out = insert_node(TEXT, "b", "[[clusters.nodes]]\nname = \"b1\"").expect("cluster b");
        let b1 = out.find("b1").expect("inserted");
        assert!(b1 > out.find("name = \"b\"").expect("b") && b1 < out.find("[[proxies]]").expect("proxies"));
        assert!(insert_node(TEXT, "c", "x").is_none());
    }

    #[test]
    fn quoting() {
        assert_eq!(q("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
