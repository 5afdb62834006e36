//! Text for people at a terminal. Image names, tags, property values and the errors that quote
//! them are chosen by whoever uploads an image, so before they reach a terminal their control and
//! bidirectional-override characters are escaped (`\u{1b}`): an image name must not move the
//! cursor, ring the bell, rewrite the line or reverse the text around it. Tables also shorten
//! long names. JSON output and JSON logs keep the exact text; only human output passes here.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::format::Writer;

/// Names longer than this many characters are shortened in tables.
pub const TABLE_NAME_CHARS: usize = 64;

/// Whether `c` could change how a terminal shows what follows it.
fn is_unsafe(c: char) -> bool {
    c.is_control() // C0 (ESC, BEL, CR, NUL, ...), DEL and C1
        || matches!(
            c,
            '\u{061c}'                 // Arabic letter mark
            | '\u{200e}' | '\u{200f}'  // left-to-right and right-to-left marks
            | '\u{202a}'..='\u{202e}'  // embeddings and overrides (U+202E: right-to-left override)
            | '\u{2066}'..='\u{2069}'  // isolates
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{200b}'..='\u{200d}'  // zero-width space and joiners: invisible text
            | '\u{2060}'..='\u{2064}'  // word joiner and invisible operators
            | '\u{feff}'                // zero-width no-break space (BOM)
            | '\u{e0000}'..='\u{e007f}' // tag characters: invisible text
        )
}

/// `text` with every control and bidi character written as `\u{..}`.
pub fn escape(text: &str) -> String {
    if !text.chars().any(is_unsafe) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_unsafe(c) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escape`] line by line: for multi-line messages whose layout matters (a TOML error points at
/// the column under the line it quotes).
pub fn escape_lines(text: &str) -> String {
    text.split('\n').map(escape).collect::<Vec<_>>().join("\n")
}

/// An image name for a table cell: escaped, and cut to [`TABLE_NAME_CHARS`] with `…`.
pub fn table_name(name: &str) -> String {
    let escaped = escape(name);
    if escaped.chars().count() <= TABLE_NAME_CHARS {
        return escaped;
    }
    let mut short: String = escaped.chars().take(TABLE_NAME_CHARS - 1).collect();
    short.push('…');
    short
}

/// Prints rows under a header, columns aligned; every cell escaped.
pub fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let rows: Vec<[String; N]> = rows.iter().map(|r| r.clone().map(|c| escape(&c))).collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The text log format's fields, as tracing-subscriber's default writes them (the message, then
/// `name=value` pairs), with every value escaped.
pub struct EscapedFields;

impl<'writer> FormatFields<'writer> for EscapedFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut visitor = EscapingVisitor {
            writer,
            result: Ok(()),
            first: true,
        };
        fields.record(&mut visitor);
        visitor.result
    }
}

struct EscapingVisitor<'writer> {
    writer: Writer<'writer>,
    result: fmt::Result,
    first: bool,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = if self.first { "" } else { " " };
        self.first = false;
        self.result = if field.name() == "message" {
            write!(self.writer, "{separator}{}", escape(value))
        } else {
            write!(self.writer, "{separator}{}={}", field.name(), escape(value))
        };
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.write(field, value);
        } else {
            // Quoted, as the default format writes string fields.
            self.write(field, &format!("{value:?}"));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

/// A byte count for people: `512 B`, `1.5 GiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: &[&str] = &["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_bidi_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(
            escape("evil\u{1b}[2J\u{7}\r\0name\u{202e}txt.exe"),
            "evil\\u{1b}[2J\\u{7}\\u{d}\\u{0}name\\u{202e}txt.exe"
        );
        assert_eq!(escape("Ubuntu — 日本語 ✓"), "Ubuntu — 日本語 ✓");
        assert_eq!(escape_lines("a\u{1b}\n  ^ here"), "a\\u{1b}\n  ^ here");
    }

    #[test]
    fn long_names_are_cut_with_an_ellipsis_at_64_characters() {
        let long = "n".repeat(100);
        let cell = table_name(&long);
        assert_eq!(cell.chars().count(), TABLE_NAME_CHARS);
        assert!(cell.ends_with('…'));
        assert_eq!(table_name("short"), "short");
    }
}
