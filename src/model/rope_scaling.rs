//! Rotary-embedding scaling of a Qwen2 config: the `rope_scaling` object of older checkpoints
//! (Qwen2.5's long-context instructions add `{"type": "yarn", "factor": 4.0,
//! "original_max_position_embeddings": 32768}`), or `rope_parameters` as transformers 5 writes
//! it. Read and computed as transformers 5.24 does (`configuration_utils`,
//! `modeling_rope_utils.convert_rope_params_to_dict`, `standardize_rope_params` and the
//! `_compute_{linear_scaling,yarn,llama3}_parameters` functions): a non-empty `rope_scaling`
//! replaces `rope_parameters` whole; `type` is the old name of `rope_type`; the inverse
//! frequencies of each rotation pair are computed in f32 as torch computes them, and
//! `attention_factor` multiplies cos and sin, i.e. the rotated q and k.
//!
//! Types supported: `default`, `linear`, `yarn`, `llama3`. The others are refused by name:
//! `dynamic` and `longrope` change the frequencies with each batch's length, which packed
//! batches and a KV cache would make differ from transformers.

use super::config::Qwen2Config;
use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use std::f64::consts::PI;

/// A scaled rotary embedding: per-pair inverse frequencies and the factor on cos and sin.
#[derive(Clone, Debug, PartialEq)]
pub struct RopeScaling {
    pub rope_type: String,
    /// `[head_dim / 2]`, the angle of pair `i` at position `p` being `p * inv_freq[i]` (f32).
    pub inv_freq: Vec<f32>,
    pub attention_factor: f32,
}

/// The rope settings transformers uses: `rope_scaling` when it is a non-empty object (it
/// replaces `rope_parameters`), else `rope_parameters`; `None` when neither is an object.
pub(crate) fn rope_dict(cfg: &Qwen2Config) -> Option<&Map<String, Value>> {
    let scaling =
        cfg.extra.get("rope_scaling").and_then(Value::as_object).filter(|m| !m.is_empty());
    scaling.or_else(|| cfg.rope_parameters.as_ref()?.as_object())
}

fn num(d: &Map<String, Value>, key: &str) -> Result<Option<f64>> {
    match d.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let x = v.as_f64().with_context(|| format!("rope {key} is {v}, not a number"))?;
            if !x.is_finite() {
                bail!("rope {key} is {x}, not a finite number");
            }
            Ok(Some(x))
        }
    }
}

fn required(d: &Map<String, Value>, key: &str, rope_type: &str) -> Result<f64> {
    num(d, key)?.with_context(|| format!("rope_type {rope_type:?} needs the field {key}"))
}

/// The scaling the config asks for; `None` for plain RoPE (`default`, or no rope settings),
/// which the backends' `rope` kernels compute from `rope_theta` alone.
pub fn from_config(cfg: &Qwen2Config) -> Result<Option<RopeScaling>> {
    let Some(d) = rope_dict(cfg) else { return Ok(None) };
    // transformers 5 nests rope settings by layer type for models whose layers differ
    // (`{"full_attention": {...}, "sliding_attention": {...}}`); Qwen2's layers share one.
    if let Some((key, _)) = d.iter().find(|(_, v)| v.is_object()) {
        bail!(
            "rope settings nested by layer type ({key:?}) are not supported: a Qwen2 model has \
             one rotary embedding for every layer (write its fields directly in rope_parameters)"
        );
    }
    let rope_type = match d.get("rope_type").or_else(|| d.get("type")) {
        None | Some(Value::Null) => "default",
        Some(v) => v.as_str().with_context(|| format!("rope_type is {v}, not a string"))?,
    };
    if let Some(p) = num(d, "partial_rotary_factor")? {
        if p != 1.0 {
            bail!("partial_rotary_factor {p} is not supported (Qwen2 rotates the whole head)");
        }
    }
    if rope_type == "default" {
        return Ok(None); // before any frequency is computed: `rotate` asks at every rotation
    }
    let hd = cfg.head_dim();
    let theta = cfg.rope_theta();
    // transformers: 1 / base ** (arange(0, dim, 2).float() / dim), in f32.
    let plain = crate::backend::cpu::rope_inv_freq(hd, theta as f32);
    let orig_max = || -> Result<f64> {
        // standardize_rope_params (llama3, yarn, longrope): a top-level
        // original_max_position_embeddings (Phi3's place for it) wins over the rope dict's;
        // without either, max_position_embeddings.
        let top = num(&cfg.extra, "original_max_position_embeddings")?;
        Ok(top
            .or(num(d, "original_max_position_embeddings")?)
            .unwrap_or(cfg.max_position_embeddings as f64))
    };
    let positive = |name: &str, x: f64| -> Result<f64> {
        if x > 0.0 {
            Ok(x)
        } else {
            bail!("rope {name} {x} must be positive")
        }
    };
    let (inv_freq, attention_factor) = match rope_type {
        "linear" => {
            // _compute_linear_scaling_rope_parameters: inv_freq /= factor.
            let f = positive("factor", required(d, "factor", rope_type)?)? as f32;
            (plain.iter().map(|&x| x / f).collect(), 1.0)
        }
        "yarn" => yarn(d, hd, theta, cfg.max_position_embeddings, orig_max()?)?,
        "llama3" => {
            // _compute_llama3_parameters (all tensor arithmetic in f32).
            let f = positive("factor", required(d, "factor", rope_type)?)? as f32;
            let lo = required(d, "low_freq_factor", rope_type)? as f32;
            let hi = required(d, "high_freq_factor", rope_type)? as f32;
            if hi == lo {
                bail!("rope low_freq_factor and high_freq_factor are both {lo}");
            }
            let old = positive("original_max_position_embeddings", orig_max()?)? as f32;
            let (lo_wave, hi_wave) = (old / lo, old / hi);
            let inv = plain
                .iter()
                .map(|&x| {
                    let wave = (2.0 * PI) as f32 / x;
                    let scaled = if wave > lo_wave { x / f } else { x };
                    if wave >= hi_wave && wave <= lo_wave {
                        let smooth = (old / wave - lo) / (hi - lo);
                        (1.0 - smooth) * scaled / f + smooth * scaled
                    } else {
                        scaled
                    }
                })
                .collect();
            (inv, 1.0)
        }
        "dynamic" | "longrope" => bail!(
            "rope_type {rope_type:?} is not supported: its frequencies change with each batch's \
             length (supported: default, linear, yarn, llama3)"
        ),
        other => {
            bail!("rope_type {other:?} is not supported (supported: default, linear, yarn, llama3)")
        }
    };
    Ok(Some(RopeScaling { rope_type: rope_type.to_string(), inv_freq, attention_factor }))
}

/// `_compute_yarn_parameters` of transformers 5.24 (YaRN, arXiv 2309.00071): frequencies
/// blended between extrapolation (fast pairs) and interpolation by `factor` (slow pairs) over
/// a linear ramp between the correction dimensions of `beta_fast` and `beta_slow` rotations.
fn yarn(
    d: &Map<String, Value>,
    hd: usize,
    theta: f64,
    max_pos: usize,
    orig_max: f64,
) -> Result<(Vec<f32>, f32)> {
    let orig_max = if orig_max > 0.0 {
        orig_max
    } else {
        bail!("rope original_max_position_embeddings {orig_max} must be positive")
    };
    // transformers infers the factor from the two lengths only when it is missing.
    let factor = num(d, "factor")?.unwrap_or(max_pos as f64 / orig_max);
    if factor <= 0.0 {
        bail!("rope factor {factor} must be positive");
    }
    let get_mscale =
        |scale: f64, m: f64| if scale <= 1.0 { 1.0 } else { 0.1 * m * scale.ln() + 1.0 };
    let attention_factor = match num(d, "attention_factor")? {
        Some(a) => a,
        None => match (num(d, "mscale")?, num(d, "mscale_all_dim")?) {
            // Python truthiness: a zero is "not given".
            (Some(m), Some(ma)) if m != 0.0 && ma != 0.0 => {
                get_mscale(factor, m) / get_mscale(factor, ma)
            }
            _ => get_mscale(factor, 1.0),
        },
    };
    let or_default = |x: Option<f64>, dflt: f64| x.filter(|&v| v != 0.0).unwrap_or(dflt);
    let beta_fast = or_default(num(d, "beta_fast")?, 32.0);
    let beta_slow = or_default(num(d, "beta_slow")?, 1.0);
    let truncate = match d.get("truncate") {
        None | Some(Value::Null) => true,
        Some(v) => v.as_bool().with_context(|| format!("rope truncate is {v}, not a boolean"))?,
    };
    let dim = hd as f64;
    let correction_dim = |rot: f64| dim * (orig_max / (rot * 2.0 * PI)).ln() / (2.0 * theta.ln());
    let (mut low, mut high) = (correction_dim(beta_fast), correction_dim(beta_slow));
    if truncate {
        low = low.floor();
        high = high.ceil();
    }
    let low = low.max(0.0);
    let mut high = high.min(dim - 1.0);
    if low == high {
        high += 0.001; // transformers: "Prevent singularity"
    }
    let (low32, span32) = (low as f32, (high - low) as f32);
    let inv = (0..hd / 2)
        .map(|i| {
            // pos_freqs = base ** (arange(0, dim, 2).float() / dim), in f32.
            let pos_freq = (theta as f32).powf((2 * i) as f32 / hd as f32);
            let extrap = 1.0 / pos_freq;
            let interp = 1.0 / (factor as f32 * pos_freq);
            let ramp = ((i as f32 - low32) / span32).clamp(0.0, 1.0);
            let e = 1.0 - ramp;
            interp * (1.0 - e) + extrap * e
        })
        .collect();
    Ok((inv, attention_factor as f32))
}
