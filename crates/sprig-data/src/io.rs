//! File reading with errors that name the file.

use std::path::Path;

use crate::{DataError, FETCH_HINT};

/// Reads a whole file; a missing file becomes [`DataError::MissingFile`] with the fetch hint.
pub(crate) fn read_bytes(path: &Path) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| io_err(path, e))
}

/// Maps an I/O error on `path` to a [`DataError`].
pub(crate) fn io_err(path: &Path, e: std::io::Error) -> DataError {
    if e.kind() == std::io::ErrorKind::NotFound {
        DataError::MissingFile {
            path: path.to_path_buf(),
            hint: FETCH_HINT,
        }
    } else {
        DataError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Decodes UTF-8, falling back to Latin-1 (every byte is a code point) for legacy files, so
/// decoding never fails and never loses a byte.
pub(crate) fn decode_text(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => e.into_bytes().iter().map(|&b| b as char).collect(),
    }
}

/// Reads a text file (UTF-8 or Latin-1).
pub(crate) fn read_text(path: &Path) -> Result<String, DataError> {
    read_bytes(path).map(decode_text)
}

/// Lines with 1-based line numbers, without the trailing `\r` of CRLF files.
pub(crate) fn numbered_lines(s: &str) -> impl Iterator<Item = (usize, &str)> {
    s.split('\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
}

/// One record of an RFC 4180 CSV file: its first line number and its fields.
#[derive(Debug)]
pub(crate) struct CsvRecord {
    pub line: usize,
    pub fields: Vec<String>,
}

/// Parses RFC 4180 CSV (quoted fields may hold commas, `""` and newlines). Blank lines are
/// skipped; an unterminated quote is reported at the line where the record started.
pub(crate) fn parse_csv(path: &Path, s: &str) -> Result<Vec<CsvRecord>, DataError> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    let mut line = 1;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut at_field_start = true;
        loop {
            let Some(c) = chars.next() else {
                if quoted {
                    return Err(DataError::Malformed {
                        path: path.to_path_buf(),
                        line: start,
                        what: "unterminated quoted field".into(),
                    });
                }
                break;
            };
            if c == '\n' {
                line += 1;
            }
            if quoted {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        field.push('"');
                    } else {
                        quoted = false;
                    }
                } else {
                    field.push(c);
                }
                continue;
            }
            match c {
                '"' if at_field_start => {
                    quoted = true;
                    at_field_start = false;
                }
                ',' => {
                    fields.push(std::mem::take(&mut field));
                    at_field_start = true;
                }
                '\n' => break,
                '\r' if chars.peek() == Some(&'\n') => {}
                _ => {
                    field.push(c);
                    at_field_start = false;
                }
            }
        }
        fields.push(field);
        if !(fields.len() == 1 && fields[0].is_empty()) {
            out.push(CsvRecord {
                line: start,
                fields,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_handles_quotes_commas_and_newlines() {
        let s = ",spam,text\n0,0,\"a, \"\"b\"\"\nc\"\r\n\n1,1,plain\n";
        let r = parse_csv(Path::new("x.csv"), s).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].fields, vec!["0", "0", "a, \"b\"\nc"]);
        assert_eq!(r[1].line, 2);
        assert_eq!(r[2].fields, vec!["1", "1", "plain"]);
        assert_eq!(r[2].line, 5);
        let e = parse_csv(Path::new("y.csv"), "a,b\n1,\"oops\n").unwrap_err();
        assert!(matches!(e, DataError::Malformed { line: 2, .. }), "{e}");
    }

    #[test]
    fn latin1_fallback_keeps_every_byte() {
        assert_eq!(decode_text(b"caf\xe9".to_vec()), "café");
        assert_eq!(decode_text("café".as_bytes().to_vec()), "café");
    }
}
