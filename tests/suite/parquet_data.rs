//! Parquet data files (tests/fixtures/parquet/, made by scripts/make_parquet_fixtures.py with
//! pyarrow) read as the records their JSON forms give: verl's RL rows, MMR1's schema, SFT
//! conversations; embedded images written once to the image cache; codecs the engine does not
//! read, and broken files, refused by name.

use crate::cli_reward::accuracies_env;
use crate::common::write_lines;
use mmr1_fast::data::jsonl::BadLines;
use mmr1_fast::data::parquet_rows::parquet_records;
use mmr1_fast::data::rl_items::{load_rl_items_to_grade, RlItem};
use mmr1_fast::data::sft_data::parse_record;
use mmr1_fast::model::vision_preprocess::decode_rgb;
use mmr1_fast::tokenizer::Message;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parquet").join(name)
}

fn png() -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/png16/rgb.png"))
        .unwrap()
}

/// The rows of a fixture as JSON values, embedded images cached in `cache`.
fn rows(name: &str, cache: &Path) -> Vec<serde_json::Value> {
    let recs = parquet_records(&fixture(name), cache).unwrap();
    let numbers: Vec<usize> = recs.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, (1..=recs.len()).collect::<Vec<_>>(), "rows are numbered from 1");
    recs.into_iter().map(|(_, t)| serde_json::from_str(&t.unwrap()).unwrap()).collect()
}

fn item(v: &serde_json::Value) -> RlItem {
    serde_json::from_value(v.clone()).unwrap()
}

/// The image paths of an item: every one in `cache`, holding the fixture's PNG.
fn cached_images(it: &RlItem, cache: &Path) -> Vec<PathBuf> {
    let paths: Vec<PathBuf> = it.images.iter().map(PathBuf::from).collect();
    for p in &paths {
        assert!(p.starts_with(cache), "{} is not in the cache", p.display());
        assert_eq!(std::fs::read(p).unwrap(), png(), "{}", p.display());
    }
    paths
}

#[test]
fn verl_rows_read_as_their_json_form() {
    let cache = tempfile::tempdir().unwrap();
    let rows = rows("rl_verl.parquet", cache.path());
    assert_eq!(rows.len(), 3);
    // Everything but the images, as the JSON a verl row is written as.
    let json = [
        r#"{"data_source": "gsm8k", "prompt": [{"role": "user", "content": "What is 2+2?"}], "ability": "math", "reward_model": {"style": "rule", "ground_truth": "4"}, "extra_info": {"index": 0, "split": "train"}, "images": []}"#,
        r#"{"data_source": "chart", "prompt": [{"role": "user", "content": "<image>How many bars?"}], "ability": "chart", "reward_model": {"style": "rule", "ground_truth": "3"}, "extra_info": {"index": 1, "split": "train"}}"#,
        r#"{"data_source": "geo", "prompt": [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "<image><image>Same picture?"}], "ability": "math", "reward_model": {"style": "rule", "ground_truth": "yes"}, "extra_info": {"index": 2, "split": "test"}}"#,
    ];
    for (row, json) in rows.iter().zip(json) {
        let want: serde_json::Value = serde_json::from_str(json).unwrap();
        for (k, v) in want.as_object().unwrap() {
            assert_eq!(&row[k], v, "column {k}");
        }
        let (mut got, mut want) = (item(row), item(&want));
        got.images.clear();
        want.images.clear();
        assert_eq!(got, want);
    }
    let items: Vec<RlItem> = rows.iter().map(item).collect();
    assert_eq!(items[2].system.as_deref(), Some("Answer briefly."));
    assert_eq!(items[2].problem, "<image><image>Same picture?");
    assert!(cached_images(&items[0], cache.path()).is_empty());
    let one = cached_images(&items[1], cache.path());
    let two = cached_images(&items[2], cache.path());
    // The same bytes are one file of the cache, whatever name they were stored under.
    assert_eq!(one.len(), 1);
    assert_eq!(two, vec![one[0].clone(), one[0].clone()]);
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 1, "one cached file");
    // A second read finds the file and writes nothing.
    let before = std::fs::metadata(&one[0]).unwrap().modified().unwrap();
    let again = self::rows("rl_verl.parquet", cache.path());
    assert_eq!(again, rows);
    assert_eq!(std::fs::metadata(&one[0]).unwrap().modified().unwrap(), before);
}

#[test]
fn mmr1_rows_with_numbers_nulls_and_one_image() {
    let cache = tempfile::tempdir().unwrap();
    let items: Vec<RlItem> = rows("mmr1_gzip.parquet", cache.path()).iter().map(item).collect();
    assert_eq!(items[0].id.as_deref(), Some("10"));
    assert_eq!(items[0].answer.as_deref(), Some("3"));
    assert_eq!(items[1].answer.as_deref(), Some("42"));
    assert_eq!(items[0].options, Some(vec!["2".to_string(), "3".to_string()]));
    assert_eq!(items[1].options, None);
    assert!(items[1].images.is_empty(), "a null image column is no image");
    let path = &cached_images(&items[0], cache.path())[0];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/png16/rgb.png");
    assert_eq!(decode_rgb(path).unwrap(), decode_rgb(&src).unwrap());
}

#[test]
fn sft_rows_with_a_system_column_and_a_map() {
    let cache = tempfile::tempdir().unwrap();
    let rows = rows("sft_lz4.parquet", cache.path());
    let m = |r: &str, c: &str| Message::new(r, c);
    assert_eq!(
        parse_record(&rows[0]).unwrap(),
        vec![m("system", "Be kind."), m("user", "Hi"), m("assistant", "Hello!")]
    );
    // An empty system column is no system turn.
    assert_eq!(parse_record(&rows[1]).unwrap(), vec![m("user", "2+3?"), m("assistant", "5")]);
    assert_eq!(rows[1]["meta"], serde_json::json!({"turns": 1, "len": 3}));
}

#[test]
fn unread_codecs_and_broken_files_are_named() {
    let cache = tempfile::tempdir().unwrap();
    let e =
        format!("{:#}", parquet_records(&fixture("rl_zstd.parquet"), cache.path()).unwrap_err());
    assert!(e.contains("rl_zstd.parquet") && e.contains("zstd") && e.contains("snappy"), "{e}");
    let bytes = std::fs::read(fixture("rl_verl.parquet")).unwrap();
    let cut = cache.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = format!("{:#}", load_rl_items_to_grade(&cut, BadLines::Stop).unwrap_err());
    assert!(e.contains("cut.parquet") && e.contains("not a readable parquet file"), "{e}");
}

/// `reward` grades a parquet file's items; its embedded images go to MMR1_IMAGE_CACHE.
#[test]
fn reward_reads_a_parquet_file() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("images");
    let responses = write_lines(
        tmp.path(),
        "r.jsonl",
        &[
            r#"{"id": 0, "response": "\\boxed{4}"}"#,
            r#"{"id": 1, "response": "\\boxed{5}"}"#,
            r#"{"id": 2, "response": "\\boxed{yes}"}"#,
        ],
    );
    let out = tmp.path().join("v.jsonl");
    let data = fixture("rl_verl.parquet");
    let env = [("MMR1_IMAGE_CACHE", cache.as_path())];
    let acc = accuracies_env(data.to_str().unwrap(), &responses, &out, &[], &env);
    assert_eq!(acc, vec![1.0, 0.0, 1.0]);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1, "the embedded image, cached once");
    // Parquet is told by its first bytes, not the name: JSONL named .parquet reads as JSONL.
    let named =
        write_lines(tmp.path(), "items.parquet", &[r#"{"problem": "2+2?", "answer": "4"}"#]);
    let one = write_lines(tmp.path(), "one.jsonl", &[r#"{"id": 0, "response": "\\boxed{4}"}"#]);
    assert_eq!(accuracies_env(&named, &one, &out, &[], &env), vec![1.0]);
}
