//! Image preprocessing against transformers' Qwen2.5-VL image processor (PIL backend):
//! tests/fixtures/tiny-vl/preprocess.safetensors from scripts/make_golden_vl.py.

use mmr1_fast::model::vision_preprocess::{
    decode_rgb, decode_rgb_bytes, preprocess, resize_bicubic, smart_resize, PreprocessorConfig,
    Rgb8,
};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-vl")
}

const IMAGES: [&str; 5] = ["img0.png", "img1.png", "img2.webp", "img3.jpg", "img4.png"];

#[test]
fn pixel_values_and_grids_match_transformers() {
    let cfg = PreprocessorConfig::load(&fixture()).unwrap();
    assert_eq!((cfg.min_pixels, cfg.max_pixels), (3136, 12544));
    let bytes = std::fs::read(fixture().join("preprocess.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (i, name) in IMAGES.iter().enumerate() {
        let img = decode_rgb(&fixture().join("images").join(name)).unwrap();
        let got = preprocess(&img, &cfg).unwrap();
        let grid = st.tensor(&format!("grid_thw.{i}")).unwrap();
        assert_eq!(grid.dtype(), Dtype::I64);
        let want_grid: Vec<usize> = grid
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as usize)
            .collect();
        assert_eq!(got.grid_thw.to_vec(), want_grid, "{name}: grid_thw");
        let pv = st.tensor(&format!("pixel_values.{i}")).unwrap();
        assert_eq!(pv.shape(), [got.n_patches(), 1176], "{name}");
        let want: Vec<f32> =
            pv.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        let diffs: Vec<f32> =
            got.pixel_values.iter().zip(&want).map(|(a, b)| (a - b).abs()).collect();
        let max_diff = diffs.iter().copied().fold(0f32, f32::max);
        let mean_diff = diffs.iter().sum::<f32>() / diffs.len() as f32;
        eprintln!("{name}: grid {:?}, max |diff| {max_diff:e}, mean {mean_diff:e}", got.grid_thw);
        if name.ends_with(".jpg") {
            // The image crate's JPEG decoder (zune-jpeg) upsamples chroma and rounds its IDCT
            // differently from Pillow's libjpeg-turbo: a few 8-bit levels on some pixels
            // (measured on this fixture: max 0.117, i.e. about 8 levels; mean below 0.01).
            assert!(
                max_diff <= 0.15 && mean_diff <= 0.01,
                "{name}: max {max_diff} mean {mean_diff}"
            );
        } else {
            // PNG and lossless WebP decode to the same 8-bit pixels everywhere and the resampler
            // is Pillow's fixed-point one: bit-identical up to f32 rounding of the normalization.
            assert!(max_diff <= 1e-6, "{name}: max |diff| {max_diff}");
        }
    }
}

#[test]
fn smart_resize_rounds_like_python() {
    // 70 / 28 = 2.5: Python's round() gives 2 (half to even), not 3.
    assert_eq!(smart_resize(50, 70, 28, 3136, 12544).unwrap(), (56, 56));
    assert_eq!(smart_resize(98, 98, 28, 0, 1 << 30).unwrap(), (112, 112)); // 3.5 -> 4
    assert_eq!(smart_resize(200, 160, 28, 3136, 12544).unwrap(), (112, 84)); // shrunk
    assert_eq!(smart_resize(20, 30, 28, 3136, 12544).unwrap(), (56, 84)); // grown
    let e = smart_resize(1, 201, 28, 3136, 12544).unwrap_err().to_string();
    assert!(e.contains("aspect ratio"), "{e}");
}

#[test]
fn bicubic_is_identity_at_the_same_size_and_keeps_flat_images_flat() {
    let img = Rgb8 { width: 5, height: 3, data: (0..45).map(|i| (i * 37 % 256) as u8).collect() };
    assert_eq!(resize_bicubic(&img, 5, 3), img);
    let flat = Rgb8 { width: 9, height: 7, data: vec![200; 9 * 7 * 3] };
    let up = resize_bicubic(&flat, 20, 15);
    assert!(up.data.iter().all(|&v| v == 200));
    let down = resize_bicubic(&flat, 4, 3);
    assert!(down.data.iter().all(|&v| v == 200));
}

#[test]
fn bad_images_and_configs_are_clear_errors() {
    let missing = fixture().join("images/nope.png");
    let e = format!("{:#}", decode_rgb(&missing).unwrap_err());
    assert!(e.contains("nope.png"), "{e}");
    let e = format!("{:#}", decode_rgb_bytes(b"this is not an image").unwrap_err());
    assert!(e.contains("PNG, JPEG and WebP"), "{e}");
    // A truncated PNG.
    let png = std::fs::read(fixture().join("images/img0.png")).unwrap();
    assert!(decode_rgb_bytes(&png[..png.len() / 2]).is_err());
    let e = PreprocessorConfig::from_json(&serde_json::json!({"image_std": [1, 0, 1]}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("image_std"), "{e}");
    let e = PreprocessorConfig::from_json(&serde_json::json!({"min_pixels": 10, "max_pixels": 5}))
        .unwrap_err()
        .to_string();
    assert!(e.contains("min_pixels 10 exceeds max_pixels 5"), "{e}");
    // Published checkpoints write min_pixels/max_pixels at the top level; they win over size.
    let c = PreprocessorConfig::from_json(&serde_json::json!({
        "min_pixels": 100, "max_pixels": 1000, "size": {"shortest_edge": 1, "longest_edge": 2}
    }))
    .unwrap();
    assert_eq!((c.min_pixels, c.max_pixels), (100, 1000));
}

/// PIL's own bicubic resize (tests/fixtures/pil_resize.safetensors, scripts/make_golden_resize.py)
/// on seeded noise, bit for bit: both orders of Pillow 13's two passes (vertical first when the
/// height shrinks by more than twice what the width shrinks by) and the boundary between them.
/// Always horizontal first, as before, was 2e-3 off transformers' log-probs on such images.
#[test]
fn bicubic_resize_matches_pillow_in_both_pass_orders() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pil_resize.safetensors");
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let image = |name: &str| {
        let t = st.tensor(name).unwrap();
        assert_eq!((t.dtype(), t.shape().len(), t.shape()[2]), (Dtype::U8, 3, 3), "{name}");
        Rgb8 { width: t.shape()[1], height: t.shape()[0], data: t.data().to_vec() }
    };
    let mut cases = 0;
    while st.tensor(&format!("in.{cases}")).is_ok() {
        let (src, want) = (image(&format!("in.{cases}")), image(&format!("out.{cases}")));
        let got = resize_bicubic(&src, want.width, want.height);
        let off = got.data.iter().zip(&want.data).filter(|(a, b)| a != b).count();
        assert_eq!(
            off,
            0,
            "case {cases}: {}x{} -> {}x{}: {off} of {} values differ from PIL's",
            src.width,
            src.height,
            want.width,
            want.height,
            want.data.len()
        );
        cases += 1;
    }
    assert_eq!(cases, 10);
}

/// 16-bit PNGs (gray, gray + alpha, RGB, RGBA; tests/fixtures/png16 from
/// scripts/make_golden_png16.py) decode to the 8-bit RGB transformers' processor gets from PIL:
/// the high byte of each sample, grayscale clipped to 255 (scaled to 8 bits before: 0.27
/// relative L2 off transformers' log-probs on a 16-bit grayscale image).
#[test]
fn sixteen_bit_pngs_decode_as_pillow_reads_them() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/png16");
    let bytes = std::fs::read(dir.join("rgb.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for name in ["gray", "gray_alpha", "rgb", "rgba"] {
        let want = st.tensor(name).unwrap();
        let got = decode_rgb(&dir.join(format!("{name}.png"))).unwrap();
        assert_eq!([got.height, got.width, 3], want.shape(), "{name}");
        assert_eq!(got.data, want.data(), "{name}");
    }
}
