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

/// Decodes strict UTF-8. The first invalid sequence gives [`DataError::Encoding`] naming the
/// file, the 1-based line, the byte offsets (in the file and in the line) and the bad byte(s).
pub(crate) fn decode_utf8(path: &Path, bytes: Vec<u8>) -> Result<String, DataError> {
    String::from_utf8(bytes).map_err(|e| {
        let err = e.utf8_error();
        let bytes = e.as_bytes();
        let at = err.valid_up_to();
        // `error_len() == None`: the file ends inside a multi-byte sequence.
        let bad = &bytes[at..at + err.error_len().unwrap_or(bytes.len() - at)];
        let before = &bytes[..at];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        DataError::Encoding {
            path: path.to_path_buf(),
            line: 1 + before.iter().filter(|&&b| b == b'\n').count(),
            byte: at,
            column: at - line_start,
            bytes: bad
                .iter()
                .map(|b| format!("0x{b:02X}"))
                .collect::<Vec<_>>()
                .join(" "),
        }
    })
}

/// Decodes ISO-8859-1 (Latin-1): every byte is the code point of the same value. Only for files
/// whose encoding is declared to be Latin-1 (see `text::load_bbc`); never a fallback.
pub(crate) fn decode_latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Reads a UTF-8 text file ([`decode_utf8`]).
pub(crate) fn read_text(path: &Path) -> Result<String, DataError> {
    decode_utf8(path, read_bytes(path)?)
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
    fn invalid_utf8_names_file_line_offsets_and_bytes() {
        // An rt-sentiment-style file whose line 3 holds a Latin-1 e-acute (0xE9), not UTF-8.
        let bytes = b"id\tsentiment\ttext\n1\t1.5\tgood\n2\t-2\tcaf\xe9 bad\n".to_vec();
        let path = Path::new("rt/movieReviewSnippets_GroundTruth.txt");
        let e = decode_utf8(path, bytes).unwrap_err();
        let DataError::Encoding {
            line,
            byte,
            column,
            bytes,
            ..
        } = &e
        else {
            panic!("expected an encoding error, got {e:?}");
        };
        assert_eq!((*line, *byte, *column, bytes.as_str()), (3, 37, 8, "0xE9"));
        let msg = e.to_string();
        for part in [
            "movieReviewSnippets_GroundTruth.txt:3:",
            "byte 37 of the file",
            "byte 8 of line 3",
            "0xE9",
        ] {
            assert!(msg.contains(part), "{part:?} not in {msg}");
        }
        // A file cut inside a multi-byte sequence reports the bytes left.
        let e = decode_utf8(path, b"ok\n\xe2\x82".to_vec()).unwrap_err();
        assert!(
            matches!(&e, DataError::Encoding { line: 2, byte: 3, column: 0, bytes, .. } if bytes == "0xE2 0x82"),
            "{e:?}"
        );
        assert_eq!(
            decode_utf8(path, "café £".as_bytes().to_vec()).unwrap(),
            "café £"
        );
    }

    #[test]
    fn latin1_keeps_every_byte() {
        assert_eq!(decode_latin1(b"a \xa315.8m caf\xe9"), "a £15.8m café");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(
            decode_latin1(&all)
                .chars()
                .map(u32::from)
                .collect::<Vec<_>>(),
            (0..=255).collect::<Vec<u32>>()
        );
    }
}
