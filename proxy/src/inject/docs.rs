//! Splitting a YAML stream at its `---` lines, keeping each document's text, so that the
//! documents injection does not change are written back exactly as they came.

/// The documents of `text`, in order, separators dropped. A separator is a line that is
/// `---`, alone or followed by a comment; text after `--- ` on the line (an inline
/// document) starts the next document. Empty and comment-only pieces are kept (they
/// parse as null), so the comments around documents survive.
pub fn split(text: &str) -> Vec<&str> {
    let mut docs = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let next = offset + line.len();
        if let Some(rest) = line.strip_prefix("---") {
            let rest_trimmed = rest.trim_start();
            let separator = rest_trimmed.is_empty() || rest_trimmed.starts_with('#');
            let inline = rest.starts_with([' ', '\t']) && !separator;
            if separator || inline {
                docs.push(&text[start..offset]);
                start = if inline { offset + 3 } else { next };
            }
        }
        offset = next;
    }
    docs.push(&text[start..]);
    // A stream that starts with `---` has nothing before it, and one that ends with `---`
    // nothing after: neither is a document.
    if docs.first().is_some_and(|d| d.trim().is_empty()) && docs.len() > 1 {
        docs.remove(0);
    }
    if docs.last().is_some_and(|d| d.trim().is_empty()) && docs.len() > 1 {
        docs.pop();
    }
    docs
}

/// Whether a piece holds no YAML at all (blank lines and comments only).
pub fn is_blank(doc: &str) -> bool {
    doc.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_keep_their_text() {
        let text = "# header\n---\na: 1\n--- # second\nb: 2\n---\n---   \n--- {c: 3}\n---\n";
        assert_eq!(split(text), ["# header\n", "a: 1\n", "b: 2\n", "", "", " {c: 3}\n"]);
        assert_eq!(split("a: 1"), ["a: 1"]);
        assert_eq!(split("---\na: 1\n"), ["a: 1\n"]);
        // Not separators: a longer dash run, and `---` inside an indented block scalar.
        assert_eq!(split("a: ----\nb: |\n  ---\n"), ["a: ----\nb: |\n  ---\n"]);
        assert!(is_blank("# x\n\n  # y\n") && !is_blank("# x\na: 1\n"));
    }
}
