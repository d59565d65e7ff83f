//! Saving a Qwen2.5-VL model (`VlModel::save_pretrained`, src/model/vl_save.rs): what is
//! written reloads bit-identically (every decoder and `visual.*` tensor, the config), the
//! config.json is the one transformers 5 writes for the fixture model (so transformers loads
//! it: scripts/check_vl_save.py runs that check, see docs/vl-cli.md), bf16 saves round to
//! bf16, and the processor/tokenizer files go with the weights.
//! Fixture: tests/fixtures/tiny-vl (scripts/make_golden_vl.py).

use crate::common;

use common::fixture;
use mmr1_fast::backend::cpu::Cpu;
use mmr1_fast::backend::Backend;
use mmr1_fast::model::safetensors_io::SaveDtype;
use mmr1_fast::model::vl::VlHost;
use mmr1_fast::model::vl_forward::VlModel;
use mmr1_fast::model::Qwen2VlConfig;
use serde_json::Value;
use std::path::Path;

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Every tensor of `a` and `b` bit-identical (or, for bf16, `b` is `a` rounded to bf16).
fn assert_same_weights(a: &VlHost, b: &VlHost, bf16: bool) {
    let specs = a.text_layout.specs.iter().chain(&a.vision_layout.specs);
    let (va, vb) = (a.text.iter().chain(&a.vision), b.text.iter().chain(&b.vision));
    let mut n = 0;
    for ((spec, x), y) in specs.zip(va).zip(vb) {
        let want: Vec<u32> = if bf16 {
            x.iter().map(|v| half::bf16::from_f32(*v).to_f32().to_bits()).collect()
        } else {
            x.iter().map(|v| v.to_bits()).collect()
        };
        let got: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
        assert!(got == want, "{}: reloaded tensor differs", spec.name);
        n += 1;
    }
    assert_eq!(n, a.text.len() + a.vision.len());
    assert_eq!((a.text.len(), a.vision.len()), (b.text.len(), b.vision.len()));
}

#[test]
fn saved_model_reloads_bit_identically_with_its_assets() {
    let src = fixture("tiny-vl");
    let m = VlModel::load(&Cpu, &src).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("saved");
    m.save_pretrained(&Cpu, &dir, SaveDtype::F32, Some(&src)).unwrap();
    let (a, b) = (VlHost::load(&src).unwrap(), VlHost::load(&dir).unwrap());
    assert_eq!(a.cfg, b.cfg, "the config reads back differently");
    assert_same_weights(&a, &b, false);
    for f in ["preprocessor_config.json", "tokenizer.json", "generation_config.json"] {
        assert_eq!(
            std::fs::read(src.join(f)).unwrap(),
            std::fs::read(dir.join(f)).unwrap(),
            "{f} was not copied"
        );
    }
    // The reloaded model computes what the original does (here: on the golden sequence).
    let g = common::Golden::open(&fixture("tiny-vl/vl_logits.safetensors"));
    let ids = g.ids("input_ids");
    let gt = g.ids("grid_thw");
    let grids: Vec<[usize; 3]> =
        gt.chunks(3).map(|c| [c[0] as usize, c[1] as usize, c[2] as usize]).collect();
    let v = common::Golden::open(&fixture("tiny-vl/vision.safetensors"));
    let pixels = Cpu.upload(&v.f32("pixel_values"));
    let lp = |m: &VlModel<Cpu>| {
        let batch = m.pack(&[(&ids, &grids)]).unwrap();
        let mut acts = None;
        m.forward(&Cpu, &batch, Some(&pixels), &mut acts).unwrap();
        let (targets, _) = batch.packed.next_token_targets();
        m.text.token_logprobs(&Cpu, acts.as_ref().unwrap(), &targets, 1.0).0
    };
    let back = VlModel::load(&Cpu, &dir).unwrap();
    assert_eq!(lp(&m), lp(&back));
}

/// The written config.json is the fixture's (transformers 5's own `save_pretrained` output)
/// key for key, value for value, but `transformers_version`, which we do not write.
#[test]
fn config_json_is_the_one_transformers_writes() {
    let src = fixture("tiny-vl");
    let m = VlModel::load(&Cpu, &src).unwrap();
    let out = tempfile::tempdir().unwrap();
    m.save_pretrained(&Cpu, out.path(), SaveDtype::F32, None).unwrap();
    let mut want = read_json(&src.join("config.json"));
    want.as_object_mut().unwrap().remove("transformers_version");
    let got = read_json(&out.path().join("config.json"));
    assert_eq!(got, want, "\nwritten:\n{got:#}\ntransformers wrote:\n{want:#}");
    // Without assets, only the model's own files are written.
    assert!(!out.path().join("preprocessor_config.json").exists());
}

/// A model loaded from the flat (published) layout is written nested and reads back as the
/// same config; bf16 saves hold the weights rounded to bf16 and say so in config.json.
#[test]
fn flat_layout_and_bf16_round_trip() {
    let src = fixture("tiny-vl");
    let flat = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("model.safetensors"), flat.path().join("model.safetensors")).unwrap();
    std::fs::copy(src.join("config_flat.json"), flat.path().join("config.json")).unwrap();
    let m = VlModel::load(&Cpu, flat.path()).unwrap();
    let out = tempfile::tempdir().unwrap();
    m.save_pretrained(&Cpu, out.path(), SaveDtype::Bf16, None).unwrap();
    let (a, b) = (VlHost::load(flat.path()).unwrap(), VlHost::load(out.path()).unwrap());
    assert_eq!(a.cfg, b.cfg);
    assert_same_weights(&a, &b, true);
    let cfg = read_json(&out.path().join("config.json"));
    assert_eq!(cfg["dtype"], "bfloat16");
    assert!(cfg["text_config"].get("torch_dtype").is_none());
    assert!(cfg["text_config"].get("image_token_id").is_none());
    // The flat and the nested fixture configs describe the same model.
    let nested = Qwen2VlConfig::load(&src).unwrap();
    assert_eq!((nested.mrope_section, &nested.vision), (b.cfg.mrope_section, &b.cfg.vision));
}
