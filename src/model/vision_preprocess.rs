//! Image preprocessing exactly as Qwen2.5-VL's image processor does it (transformers'
//! `Qwen2VLImageProcessorPil`, the PIL backend): decode, convert to RGB (transparency
//! composited onto white), "smart resize" to multiples of `patch_size * merge_size` within
//! `[min_pixels, max_pixels]`, PIL bicubic resampling on 8-bit pixels, rescale by 1/255,
//! normalize with the config's mean/std, and cut into patches of
//! `[channel, temporal, patch, patch]` ordered for the 2x2 merger.
//!
//! The resampler reproduces Pillow's fixed-point algorithm (libImaging/Resample.c: separable
//! convolution, the two passes in Pillow 13's order (`resize_bicubic`), a = -0.5 cubic kernel
//! widened by the scale when shrinking, coefficients in 22-bit fixed point, clamped to 8 bits
//! after each pass), so pixel values match transformers' PIL processor bit for bit (checked by
//! tests/suite/vl_preprocess.rs).
//! transformers' torchvision processor (`Qwen2VLImageProcessor`) differs from the PIL one by at
//! most one 8-bit level per pixel (0.015 after normalization) on the fixture images.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::path::Path;

/// The fields of `preprocessor_config.json` the pipeline uses (transformers' defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct PreprocessorConfig {
    pub patch_size: usize,
    pub merge_size: usize,
    pub temporal_patch_size: usize,
    pub min_pixels: usize,
    pub max_pixels: usize,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    pub rescale_factor: f64,
    pub do_resize: bool,
    pub do_rescale: bool,
    pub do_normalize: bool,
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        PreprocessorConfig {
            patch_size: 14,
            merge_size: 2,
            temporal_patch_size: 2,
            min_pixels: 56 * 56,
            max_pixels: 28 * 28 * 1280,
            // OPENAI_CLIP_MEAN / OPENAI_CLIP_STD.
            image_mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            image_std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
            rescale_factor: 1.0 / 255.0,
            do_resize: true,
            do_rescale: true,
            do_normalize: true,
        }
    }
}

impl PreprocessorConfig {
    /// Reads `dir/preprocessor_config.json`. `min_pixels`/`max_pixels` (published checkpoints)
    /// win over `size.shortest_edge`/`size.longest_edge` (transformers 5), as in transformers.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("preprocessor_config.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let v: Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", path.display()))?;
        Self::from_json(&v)
            .with_context(|| format!("{}: invalid image processor config", path.display()))
    }

    pub fn from_json(v: &Value) -> Result<Self> {
        let mut c = PreprocessorConfig::default();
        let uint = |key: &str, v: Option<&Value>| -> Result<Option<usize>> {
            match v {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x.as_u64().map(|n| Some(n as usize)).with_context(|| {
                    format!("field {key} must be a non-negative integer, got {x}")
                }),
            }
        };
        let triple = |key: &str| -> Result<Option<[f32; 3]>> {
            match v.get(key) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) => Ok(Some([n.as_f64().unwrap_or(f64::NAN) as f32; 3])),
                Some(x) => {
                    let list: Vec<f64> = serde_json::from_value(x.clone())
                        .with_context(|| format!("field {key} must be a number or 3 numbers"))?;
                    let a: [f64; 3] = list.as_slice().try_into().map_err(|_| {
                        anyhow::anyhow!("field {key} must have 3 entries, got {}", list.len())
                    })?;
                    Ok(Some(a.map(|x| x as f32)))
                }
            }
        };
        if let Some(x) = uint("patch_size", v.get("patch_size"))? {
            c.patch_size = x;
        }
        if let Some(x) = uint("merge_size", v.get("merge_size"))? {
            c.merge_size = x;
        }
        if let Some(x) = uint("temporal_patch_size", v.get("temporal_patch_size"))? {
            c.temporal_patch_size = x;
        }
        let size = v.get("size");
        if let Some(x) = uint("size.shortest_edge", size.and_then(|s| s.get("shortest_edge")))? {
            c.min_pixels = x;
        }
        if let Some(x) = uint("size.longest_edge", size.and_then(|s| s.get("longest_edge")))? {
            c.max_pixels = x;
        }
        if let Some(x) = uint("min_pixels", v.get("min_pixels"))? {
            c.min_pixels = x;
        }
        if let Some(x) = uint("max_pixels", v.get("max_pixels"))? {
            c.max_pixels = x;
        }
        if let Some(x) = triple("image_mean")? {
            c.image_mean = x;
        }
        if let Some(x) = triple("image_std")? {
            c.image_std = x;
        }
        if let Some(x) = v.get("rescale_factor").filter(|x| !x.is_null()) {
            c.rescale_factor = x.as_f64().context("field rescale_factor must be a number")?;
        }
        for (key, field) in [
            ("do_resize", &mut c.do_resize),
            ("do_rescale", &mut c.do_rescale),
            ("do_normalize", &mut c.do_normalize),
        ] {
            if let Some(x) = v.get(key).filter(|x| !x.is_null()) {
                *field =
                    x.as_bool().with_context(|| format!("field {key} must be true or false"))?;
            }
        }
        if let Some(r) = v.get("resample").and_then(Value::as_u64) {
            if r != 3 {
                bail!("resample is {r}; only 3 (bicubic, Qwen2.5-VL's) is implemented");
            }
        }
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        for (k, x) in [
            ("patch_size", self.patch_size),
            ("merge_size", self.merge_size),
            ("temporal_patch_size", self.temporal_patch_size),
        ] {
            if x == 0 {
                bail!("field {k} must be positive");
            }
        }
        if self.min_pixels > self.max_pixels {
            bail!("min_pixels {} exceeds max_pixels {}", self.min_pixels, self.max_pixels);
        }
        if let Some(s) = self.image_std.iter().find(|s| !(s.is_finite() && **s != 0.0)) {
            bail!("image_std holds {s}; every entry must be a non-zero number");
        }
        Ok(())
    }

    /// Side of the square a merged token covers in resized pixels: `patch_size * merge_size`.
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }
}

/// Python's `round` (half to even), which `smart_resize` uses: `round(2.5) == 2`.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// transformers' `smart_resize`: the (height, width) closest to the input's that are
/// multiples of `factor` with `min_pixels <= h * w <= max_pixels` (up to the rounding).
pub fn smart_resize(
    height: usize,
    width: usize,
    factor: usize,
    min_pixels: usize,
    max_pixels: usize,
) -> Result<(usize, usize)> {
    if height == 0 || width == 0 {
        bail!("image is empty ({width}x{height})");
    }
    let (h, w, f) = (height as f64, width as f64, factor as f64);
    if h.max(w) / h.min(w) > 200.0 {
        bail!("absolute aspect ratio must be smaller than 200, got {}", h.max(w) / h.min(w));
    }
    let mut h_bar = round_half_even(h / f) * f;
    let mut w_bar = round_half_even(w / f) * f;
    if h_bar * w_bar > max_pixels as f64 {
        let beta = ((h * w) / max_pixels as f64).sqrt();
        h_bar = f.max((h / beta / f).floor() * f);
        w_bar = f.max((w / beta / f).floor() * f);
    } else if h_bar * w_bar < min_pixels as f64 {
        let beta = (min_pixels as f64 / (h * w)).sqrt();
        h_bar = (h * beta / f).ceil() * f;
        w_bar = (w * beta / f).ceil() * f;
    }
    Ok((h_bar as usize, w_bar as usize))
}

/// An 8-bit RGB image, rows of `width * 3` bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Rgb8 {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

/// Decodes a PNG, JPEG or WebP file to RGB. Grayscale is replicated; transparency is
/// composited onto white with Pillow's integer formula (what transformers' `convert_to_rgb`
/// does). Errors name the file.
pub fn decode_rgb(path: &Path) -> Result<Rgb8> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_rgb_bytes(&bytes).with_context(|| format!("cannot decode image {}", path.display()))
}

pub fn decode_rgb_bytes(bytes: &[u8]) -> Result<Rgb8> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("cannot read the image header")?;
    if reader.format().is_none() {
        bail!("unknown image format (PNG, JPEG and WebP are supported)");
    }
    let img = eight_bit_as_pillow(reader.decode().context("not a valid PNG/JPEG/WebP image")?);
    let (width, height) = (img.width() as usize, img.height() as usize);
    let data = if img.color().has_alpha() {
        let rgba = img.to_rgba8();
        let mut out = Vec::with_capacity(width * height * 3);
        for p in rgba.pixels() {
            let a = p.0[3] as u32;
            for c in 0..3 {
                out.push(composite_on_white(p.0[c] as u32, a));
            }
        }
        out
    } else {
        img.to_rgb8().into_raw()
    };
    Ok(Rgb8 { width, height, data })
}

/// 16-bit PNG samples as Pillow reads them: the high byte of each (its "LA;16B", "RGB;16B" and
/// "RGBA;16B" rawmodes), except grayscale without alpha, which Pillow holds as "I;16" and clips
/// to 255 when transformers converts it to RGB (most such images turn white). 8-bit images
/// pass through.
fn eight_bit_as_pillow(img: image::DynamicImage) -> image::DynamicImage {
    use image::{DynamicImage as D, ImageBuffer};
    let high = |v: Vec<u16>| v.into_iter().map(|x| (x >> 8) as u8).collect::<Vec<u8>>();
    let (w, h) = (img.width(), img.height());
    // from_raw cannot fail: the same dimensions and channel count as the decoded buffer.
    match img {
        D::ImageLuma16(b) => D::ImageLuma8(
            ImageBuffer::from_raw(
                w,
                h,
                b.into_raw().into_iter().map(|x| x.min(255) as u8).collect(),
            )
            .unwrap(),
        ),
        D::ImageLumaA16(b) => {
            D::ImageLumaA8(ImageBuffer::from_raw(w, h, high(b.into_raw())).unwrap())
        }
        D::ImageRgb16(b) => D::ImageRgb8(ImageBuffer::from_raw(w, h, high(b.into_raw())).unwrap()),
        D::ImageRgba16(b) => {
            D::ImageRgba8(ImageBuffer::from_raw(w, h, high(b.into_raw())).unwrap())
        }
        other => other,
    }
}

/// One channel of Pillow's `alpha_composite(white, src)` (libImaging/AlphaComposite.c with
/// 7-bit precision and its divide-by-255 by shifts). With an opaque white destination the
/// output alpha is 255 and the colour is `(c * a + 255 * (255 - a)) / 255`, rounded as Pillow does.
fn composite_on_white(c: u32, a: u32) -> u8 {
    if a == 0 {
        return 255;
    }
    const PB: u32 = 7;
    let shift_div255 = |x: u32| ((x >> 8) + x) >> 8;
    let outa255 = a * 255 + 255 * (255 - a);
    let coef1 = a * 255 * 255 * (1 << PB) / outa255;
    let coef2 = 255 * (1 << PB) - coef1;
    let t = c * coef1 + 255 * coef2;
    (shift_div255(t + (0x80 << PB)) >> PB) as u8
}

/// Pillow's bicubic kernel (a = -0.5).
fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc`: per output index, the first input
/// index and the fixed-point weights.
fn coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) truncates toward zero; negative values are clamped to 0 anyway.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let w: Vec<f64> =
                (xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) * ss)).collect();
            let total: f64 = w.iter().sum();
            let k = w
                .iter()
                .map(|&v| {
                    let v = if total != 0.0 { v / total } else { v };
                    let s = v * (1u32 << PRECISION_BITS) as f64;
                    (if v < 0.0 { s - 0.5 } else { s + 0.5 }) as i32
                })
                .collect();
            (xmin, k)
        })
        .collect()
}

fn clip8(ss: i32) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `PIL.Image.resize((new_w, new_h), Image.BICUBIC)` on an RGB image, bit for bit. Each pass
/// rounds to 8 bits, so the order of the two passes shows in the pixels: Pillow 13
/// (`ImagingResampleInner`) runs the vertical one first when the height shrinks by more than
/// twice what the width shrinks by (`dh > 0 && dh > 2 dw`, `dw` negative when the width grows),
/// else the horizontal one (always, before 13).
pub fn resize_bicubic(img: &Rgb8, new_w: usize, new_h: usize) -> Rgb8 {
    let (dw, dh) = (img.width as i64 - new_w as i64, img.height as i64 - new_h as i64);
    if dh > 0 && dh > 2 * dw {
        resize_horizontal(&resize_vertical(img, new_h), new_w)
    } else {
        resize_vertical(&resize_horizontal(img, new_w), new_h)
    }
}

/// Pillow's `ImagingResampleHorizontal_8bpc` (bicubic): every row to `new_w` pixels.
fn resize_horizontal(img: &Rgb8, new_w: usize) -> Rgb8 {
    if new_w == img.width {
        return img.clone();
    }
    let k = coeffs(img.width, new_w);
    let mut out = vec![0u8; new_w * img.height * 3];
    for y in 0..img.height {
        let row = &img.data[y * img.width * 3..(y + 1) * img.width * 3];
        for (xx, (xmin, w)) in k.iter().enumerate() {
            for c in 0..3 {
                let mut ss: i32 = 1 << (PRECISION_BITS - 1);
                for (i, &wi) in w.iter().enumerate() {
                    ss = ss.wrapping_add(row[(xmin + i) * 3 + c] as i32 * wi);
                }
                out[(y * new_w + xx) * 3 + c] = clip8(ss);
            }
        }
    }
    Rgb8 { width: new_w, height: img.height, data: out }
}

/// Pillow's `ImagingResampleVertical_8bpc` (bicubic): every column to `new_h` pixels.
fn resize_vertical(img: &Rgb8, new_h: usize) -> Rgb8 {
    if new_h == img.height {
        return img.clone();
    }
    let k = coeffs(img.height, new_h);
    let stride = img.width * 3;
    let mut out = vec![0u8; new_h * stride];
    for (yy, (ymin, w)) in k.iter().enumerate() {
        for x in 0..stride {
            let mut ss: i32 = 1 << (PRECISION_BITS - 1);
            for (i, &wi) in w.iter().enumerate() {
                ss = ss.wrapping_add(img.data[(ymin + i) * stride + x] as i32 * wi);
            }
            out[yy * stride + x] = clip8(ss);
        }
    }
    Rgb8 { width: img.width, height: new_h, data: out }
}

/// One image ready for the vision tower.
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePatches {
    /// `[t * h * w, channels * temporal_patch_size * patch_size^2]`, rows in merger order.
    pub pixel_values: Vec<f32>,
    /// Patch grid `[t, h, w]` (a still image has t = 1).
    pub grid_thw: [usize; 3],
    /// Row width of `pixel_values`.
    pub patch_dim: usize,
}

impl ImagePatches {
    pub fn n_patches(&self) -> usize {
        self.grid_thw.iter().product()
    }
}

/// The whole preprocessing of one decoded image (see the module doc).
pub fn preprocess(img: &Rgb8, cfg: &PreprocessorConfig) -> Result<ImagePatches> {
    let (ps, m, tp) = (cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size);
    let img = if cfg.do_resize {
        let (h, w) =
            smart_resize(img.height, img.width, cfg.factor(), cfg.min_pixels, cfg.max_pixels)?;
        resize_bicubic(img, w, h)
    } else {
        img.clone()
    };
    let (h, w) = (img.height, img.width);
    if !h.is_multiple_of(ps * m) || !w.is_multiple_of(ps * m) {
        bail!("image of {w}x{h} is not a multiple of patch_size * merge_size = {}", ps * m);
    }
    // Rescale then normalize per channel, as numpy does it: x * factor in f64, to f32, then
    // (x - mean) / std in f32.
    let value = |y: usize, x: usize, c: usize| -> f32 {
        let mut v = img.data[(y * w + x) * 3 + c] as f32;
        if cfg.do_rescale {
            v = (img.data[(y * w + x) * 3 + c] as f64 * cfg.rescale_factor) as f32;
        }
        if cfg.do_normalize {
            v = (v - cfg.image_mean[c]) / cfg.image_std[c];
        }
        v
    };
    let (gh, gw) = (h / ps, w / ps);
    let patch_dim = 3 * tp * ps * ps;
    let mut out = Vec::with_capacity(gh * gw * patch_dim);
    // Row order: merge blocks row-major, then the m x m patches inside a block row-major;
    // within a row: channel, temporal copy (a still image repeated), patch row, patch column.
    for bh in 0..gh / m {
        for bw in 0..gw / m {
            for mh in 0..m {
                for mw in 0..m {
                    let (py0, px0) = ((bh * m + mh) * ps, (bw * m + mw) * ps);
                    for c in 0..3 {
                        for _t in 0..tp {
                            for py in 0..ps {
                                for px in 0..ps {
                                    out.push(value(py0 + py, px0 + px, c));
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(ImagePatches { pixel_values: out, grid_thw: [1, gh, gw], patch_dim })
}
