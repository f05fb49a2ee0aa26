//! The example from README.md (kept in sync by hand).

use sprig_data::{batch, load_text_task, metrics, sprig_home};

fn main() -> Result<(), sprig_data::DataError> {
    let d = load_text_task("trec6", &sprig_home(), 0)?.subsample(2000, 500, 500, 0);
    println!("{} {:?} split: {:?}", d.task, d.classes, d.split);

    // batches of similar length (pretend whitespace tokens are the tokenizer)
    let lens: Vec<usize> = d
        .train
        .iter()
        .map(|e| e.text.split_whitespace().count())
        .collect();
    let batches = batch::bucketed_batch_indices(&lens, 32, 0, 0);
    let ids: Vec<Vec<u32>> = batches[0].iter().map(|&i| vec![1; lens[i]]).collect();
    let padded = batch::pad(&ids.iter().map(Vec::as_slice).collect::<Vec<_>>(), 0);
    println!("first batch: {} x {}", padded.batch, padded.seq_len);

    // uniform probabilities: accuracy = share of class 0 under argmax ties, ECE = |acc - 1/6|
    let k = d.classes.len();
    let probs = vec![1.0 / k as f32; d.test.len() * k];
    let gold: Vec<usize> = d.test.iter().map(|e| e.label).collect();
    println!("{:?}", metrics::report(&probs, k, &gold));
    Ok(())
}
