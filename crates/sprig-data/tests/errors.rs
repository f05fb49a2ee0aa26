//! Bad input gives the right error, naming the file, line or value (on temp dirs).

use std::io::Write;
use std::path::{Path, PathBuf};

use sprig_data::{
    is_image_task, is_text_task, load_image_task, load_text_task, DataError, IMAGE_TASKS,
    TEXT_TASKS,
};

fn write(home: &Path, rel: &str, bytes: &[u8]) -> PathBuf {
    let p = home.join("data").join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn text_err(name: &str, home: &Path) -> DataError {
    load_text_task(name, home, 0).expect_err("loading must fail")
}

#[test]
fn missing_files_name_the_file_and_the_fix() {
    let home = tempfile::tempdir().unwrap();
    for task in TEXT_TASKS {
        let e = text_err(task, home.path());
        assert!(matches!(e, DataError::MissingFile { .. }), "{task}: {e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("run scripts/fetch-assets") && msg.contains(home.path().to_str().unwrap()),
            "{msg}"
        );
    }
    for task in IMAGE_TASKS {
        let e = load_image_task(task, home.path(), 0).expect_err("missing");
        assert!(matches!(e, DataError::MissingFile { .. }), "{task}: {e:?}");
    }
    let e = text_err("rt-sentiment", home.path());
    assert!(
        e.to_string()
            .contains("movieReviewSnippets_GroundTruth.txt"),
        "{e}"
    );
}

#[test]
fn unknown_task_lists_the_known_ones() {
    let home = tempfile::tempdir().unwrap();
    let e = text_err("sst2", home.path());
    assert!(
        matches!(&e, DataError::UnknownTask { name, .. } if name == "sst2"),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .contains("rt-sentiment, sms-spam, trec6, r8, 20ng, bbc"),
        "{e}"
    );
    let e = load_image_task("cifar10", home.path(), 0).expect_err("unknown");
    assert!(e.to_string().contains("fashion-mnist, mnist10k"), "{e}");
    assert!(text_err("fashion-mnist", home.path())
        .to_string()
        .contains("unknown task"));
    assert!(
        is_text_task("trec6")
            && !is_text_task("mnist10k")
            && is_image_task("mnist10k")
            && !is_image_task("r8")
    );
}

#[test]
fn malformed_rt_line_reports_path_and_line() {
    let home = tempfile::tempdir().unwrap();
    let p = write(
        home.path(),
        "rt-sentiment/movieReviewSnippets_GroundTruth.txt",
        b"id\tsentiment\ttext\r\n1\t2.0\tgood\r\n2\tabc\tbad\r\n",
    );
    match text_err("rt-sentiment", home.path()) {
        DataError::Malformed { path, line, what } => {
            assert_eq!((path, line), (p, 3));
            assert!(what.contains("abc"), "{what}");
        }
        e => panic!("{e:?}"),
    }
    write(
        home.path(),
        "rt-sentiment/movieReviewSnippets_GroundTruth.txt",
        b"id\tsentiment\ttext\n1\t2.0\n",
    );
    assert!(matches!(
        text_err("rt-sentiment", home.path()),
        DataError::Malformed { line: 2, .. }
    ));
}

#[test]
fn empty_files_give_empty_dataset() {
    let home = tempfile::tempdir().unwrap();
    // only zero scores: nothing left after dropping neutral snippets
    let p = write(
        home.path(),
        "rt-sentiment/movieReviewSnippets_GroundTruth.txt",
        b"id\tsentiment\ttext\n1\t0\tmeh\n",
    );
    assert!(
        matches!(text_err("rt-sentiment", home.path()), DataError::Empty { path } if path == p)
    );
    let p = write(home.path(), "trec/question_labels.txt", b"\n\n");
    assert!(matches!(text_err("trec6", home.path()), DataError::Empty { path } if path == p));
    let p = write(
        home.path(),
        "r8/reuters-r8-train.tab",
        b"Category\tText\nd\tstring\nclass\t\n\n",
    );
    write(
        home.path(),
        "r8/reuters-r8-test.tab",
        b"Category\tText\nd\tstring\nclass\t\nacq\tsome text\n",
    );
    assert!(matches!(text_err("r8", home.path()), DataError::Empty { path } if path == p));
    std::fs::create_dir_all(home.path().join("data/bbc/tech")).unwrap();
    assert!(matches!(
        text_err("bbc", home.path()),
        DataError::Empty { .. }
    ));
}

#[test]
fn malformed_tab_sms_and_trec() {
    let home = tempfile::tempdir().unwrap();
    write(
        home.path(),
        "20ng/20newsgroups-train.tab",
        b"Category\tText\nd\tstring\nclass\t\n\nsci.space\tok\nno tab here\n",
    );
    write(
        home.path(),
        "20ng/20newsgroups-test.tab",
        b"Category\tText\nd\tstring\nclass\t\nsci.space\tok\n",
    );
    assert!(matches!(
        text_err("20ng", home.path()),
        DataError::Malformed { line: 6, .. }
    ));
    write(
        home.path(),
        "20ng/20newsgroups-train.tab",
        b"Category\tText\n",
    );
    assert!(
        matches!(text_err("20ng", home.path()), DataError::Malformed { .. }),
        "truncated header"
    );

    write(
        home.path(),
        "sms-spam/sms-spam.csv",
        b",spam,text\n0,0,hi\n1,2,\"x\ny\"\n",
    );
    match text_err("sms-spam", home.path()) {
        DataError::Malformed { line, what, .. } => {
            assert!(line == 3 && what.contains("'2'"), "{line} {what}")
        }
        e => panic!("{e:?}"),
    }
    write(home.path(), "sms-spam/sms-spam.csv", b",spam,text\n0,0\n");
    assert!(matches!(
        text_err("sms-spam", home.path()),
        DataError::Malformed { line: 2, .. }
    ));

    write(
        home.path(),
        "trec/question_labels.txt",
        b"DESC:manner How ?\nNUM What is it ?\n",
    );
    assert!(matches!(
        text_err("trec6", home.path()),
        DataError::Malformed { line: 2, .. }
    ));
}

#[test]
fn small_valid_files_load_and_split() {
    let home = tempfile::tempdir().unwrap();
    let mut rt = b"id\tsentiment\ttext\r\n".to_vec();
    for i in 0..100 {
        rt.extend_from_slice(
            format!(
                "{i}\t{}\tsnippet {i} caf",
                if i % 2 == 0 { 1.5 } else { -2.0 }
            )
            .as_bytes(),
        );
        rt.extend_from_slice("é\r\n".as_bytes());
    }
    write(
        home.path(),
        "rt-sentiment/movieReviewSnippets_GroundTruth.txt",
        &rt,
    );
    let d = load_text_task("rt-sentiment", home.path(), 1).unwrap();
    assert_eq!((d.train.len(), d.dev.len(), d.test.len()), (80, 10, 10));
    assert!(
        d.train.iter().all(|e| e.text.ends_with("café")),
        "UTF-8 text kept"
    );
    // duplicates in TREC are dropped
    write(
        home.path(),
        "trec/question_labels.txt",
        b"NUM:date When ?\nNUM:date When ?\nLOC:city Where ?\n",
    );
    assert_eq!(load_text_task("trec6", home.path(), 0).unwrap().len(), 2);
}

#[test]
fn bad_image_files() {
    let home = tempfile::tempdir().unwrap();
    let dir = "fashion-mnist";
    let mut img = vec![0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 28, 0, 0, 0, 28];
    img.extend(vec![255u8; 2 * 784]);
    let mut lab = vec![0u8, 0, 8, 1, 0, 0, 0, 2, 3, 9];
    for prefix in ["train", "t10k"] {
        write(
            home.path(),
            &format!("{dir}/{prefix}-images-idx3-ubyte.gz"),
            &gz(&img),
        );
        write(
            home.path(),
            &format!("{dir}/{prefix}-labels-idx1-ubyte.gz"),
            &gz(&lab),
        );
    }
    let d = load_image_task(dir, home.path(), 0).unwrap();
    assert_eq!(d.train.len() + d.dev.len() + d.test.len(), 4);
    assert!(d.test.images.iter().all(|&v| v == 1.0));
    lab[9] = 10; // label out of range
    let p = write(
        home.path(),
        &format!("{dir}/train-labels-idx1-ubyte.gz"),
        &gz(&lab),
    );
    match load_image_task(dir, home.path(), 0).unwrap_err() {
        DataError::BadFile { path, what } => assert!(path == p && what.contains("10"), "{what}"),
        e => panic!("{e:?}"),
    }
    write(
        home.path(),
        &format!("{dir}/train-images-idx3-ubyte.gz"),
        &gz(&img[..100]),
    );
    assert!(matches!(
        load_image_task(dir, home.path(), 0).unwrap_err(),
        DataError::BadFile { .. }
    ));
    write(
        home.path(),
        &format!("{dir}/train-images-idx3-ubyte.gz"),
        b"not gzip",
    );
    assert!(load_image_task(dir, home.path(), 0)
        .unwrap_err()
        .to_string()
        .contains("gzip"));

    for d in 0..10 {
        write(
            home.path(),
            &format!("mnist10k/{d}.json"),
            b"{\"data\": [0.5, 0.25]}",
        );
    }
    let e = load_image_task("mnist10k", home.path(), 0).unwrap_err();
    assert!(
        matches!(&e, DataError::BadFile { .. }) && e.to_string().contains("0.json"),
        "{e}"
    );
    write(home.path(), "mnist10k/0.json", b"[1, 2");
    assert!(matches!(
        load_image_task("mnist10k", home.path(), 0).unwrap_err(),
        DataError::BadFile { .. }
    ));
}

#[test]
fn invalid_utf8_is_an_error_naming_file_line_and_byte() {
    let home = tempfile::tempdir().unwrap();
    // Line 3 holds a Latin-1 e-acute (0xE9): not UTF-8, so no silent re-decoding as Latin-1.
    let p = write(
        home.path(),
        "rt-sentiment/movieReviewSnippets_GroundTruth.txt",
        b"id\tsentiment\ttext\n1\t1.5\tgood\n2\t-2\tcaf\xe9 bad\n",
    );
    let e = text_err("rt-sentiment", home.path());
    assert!(
        matches!(&e, DataError::Encoding { path, line: 3, byte: 37, column: 8, bytes, .. }
            if path == &p && bytes == "0xE9"),
        "{e:?}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("movieReviewSnippets_GroundTruth.txt:3:") && msg.contains("0xE9"),
        "{msg}"
    );
    // The same for a CSV (sms-spam) and an Orange .tab file.
    write(
        home.path(),
        "sms-spam/sms-spam.csv",
        b",spam,text\n0,0,ok\n1,1,\xff\n",
    );
    let e = text_err("sms-spam", home.path());
    assert!(matches!(&e, DataError::Encoding { line: 3, .. }), "{e:?}");
    let tab = b"Category\tText\nd\ts\nclass\tmeta\na\tx\xc3(\n";
    write(home.path(), "r8/reuters-r8-train.tab", tab);
    write(
        home.path(),
        "r8/reuters-r8-test.tab",
        b"Category\tText\nd\ts\nclass\tmeta\na\tx\n",
    );
    let e = text_err("r8", home.path());
    assert!(
        matches!(&e, DataError::Encoding { line: 4, bytes, .. } if bytes == "0xC3"),
        "{e:?}"
    );
}

#[test]
fn bbc_decodes_in_the_declared_encoding() {
    let home = tempfile::tempdir().unwrap();
    // sports/199.txt is declared ISO-8859-1: 0xA3 is '£'.
    write(
        home.path(),
        "bbc/sports/199.txt",
        b"Mutu, a \xa315.8m signing\n",
    );
    // Every other file is UTF-8, with '£' as 0xC2 0xA3.
    write(
        home.path(),
        "bbc/business/001.txt",
        "a £2bn deal\n".as_bytes(),
    );
    let d = load_text_task("bbc", home.path(), 0).unwrap();
    let texts: Vec<&str> = d
        .train
        .iter()
        .chain(&d.dev)
        .chain(&d.test)
        .map(|e| e.text.as_str())
        .collect();
    assert!(texts.contains(&"Mutu, a £15.8m signing"), "{texts:?}");
    assert!(texts.contains(&"a £2bn deal"), "{texts:?}");
    // A Latin-1 byte in any other BBC file is an error, not a guess.
    let p = write(home.path(), "bbc/business/002.txt", b"a \xa33bn deal\n");
    let e = text_err("bbc", home.path());
    assert!(
        matches!(&e, DataError::Encoding { path, line: 1, byte: 2, bytes, .. } if path == &p && bytes == "0xA3"),
        "{e:?}"
    );
}
