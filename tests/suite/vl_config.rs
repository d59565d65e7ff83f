//! Qwen2.5-VL checkpoints load in both config layouts (flat as published, nested as
//! transformers 5 writes), with every `visual.*` tensor shape-checked; bad configs and
//! mis-shaped tensors are clear errors. Fixture: tests/fixtures/tiny-vl (scripts/make_golden_vl.py).

use mmr1_fast::model::vl::VlHost;
use mmr1_fast::model::Qwen2VlConfig;
use std::path::{Path, PathBuf};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-vl")
}

/// A copy of the fixture's weights with `config` as its config.json.
fn dir_with_config(config: &serde_json::Value) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(fixture().join("model.safetensors"), d.path().join("model.safetensors")).unwrap();
    std::fs::write(d.path().join("config.json"), serde_json::to_string(config).unwrap()).unwrap();
    d
}

fn read_json(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture().join(name)).unwrap()).unwrap()
}

fn err_of(config: &serde_json::Value) -> String {
    let d = dir_with_config(config);
    match VlHost::load(d.path()) {
        Ok(_) => panic!("expected an error"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn nested_and_flat_layouts_load_the_same_model() {
    let nested = VlHost::load(&fixture()).unwrap();
    let flat_dir = dir_with_config(&read_json("config_flat.json"));
    let flat = VlHost::load(flat_dir.path()).unwrap();
    for h in [&nested, &flat] {
        let c = &h.cfg;
        assert_eq!(c.mrope_section, [2, 3, 3]);
        assert_eq!((c.text.hidden_size, c.text.num_hidden_layers, c.text.n_kv_heads()), (64, 2, 2));
        assert_eq!(c.text.rope_theta(), 10000.0);
        assert!(!c.text.tie_word_embeddings);
        assert_eq!((c.vision.depth, c.vision.hidden_size, c.vision.num_heads), (3, 32, 2));
        assert_eq!((c.vision.window_size, c.vision.out_hidden_size), (56, 64));
        assert_eq!(c.vision.fullatt_block_indexes, vec![1]);
        assert_eq!(
            (c.image_token_id, c.vision_start_token_id, c.vision_end_token_id),
            (410, 408, 409)
        );
        // 1 patch embed + 12 per block + 5 merger tensors.
        assert_eq!(h.vision.len(), 1 + 12 * 3 + 5);
        assert_eq!(h.vision[h.vision_layout.patch_embed].len(), 32 * 3 * 2 * 14 * 14);
    }
    assert_eq!(nested.vision, flat.vision);
    assert_eq!(nested.text, flat.text);
    assert_eq!(nested.cfg.vision, flat.cfg.vision);
}

#[test]
fn mis_shaped_or_missing_visual_tensors_are_named() {
    let mut c = read_json("config.json");
    c["vision_config"]["intermediate_size"] = 50.into();
    let e = err_of(&c);
    assert!(e.contains("visual.blocks.0.mlp.gate_proj.weight") && e.contains("[50, 32]"), "{e}");

    let mut c = read_json("config.json");
    c["vision_config"]["depth"] = 4.into();
    let e = err_of(&c);
    assert!(e.contains("visual.blocks.3.norm1.weight is missing"), "{e}");
}

#[test]
fn bad_configs_are_clear_errors() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "nested mrope sum",
            Box::new(|c| {
                c["text_config"]["rope_parameters"]["mrope_section"] = serde_json::json!([2, 3, 4])
            }),
            "sums to 9, but head_dim / 2 is 8",
        ),
        (
            "flat mrope length",
            Box::new(|c| c["rope_scaling"]["mrope_section"] = serde_json::json!([4, 4])),
            "must have 3 entries",
        ),
        ("window", Box::new(|c| c["vision_config"]["window_size"] = 50.into()), "window_size 50"),
        (
            "full attention block",
            Box::new(|c| c["vision_config"]["fullatt_block_indexes"] = serde_json::json!([7])),
            "names block 7, but depth is 3",
        ),
        (
            "out width",
            Box::new(|c| c["vision_config"]["out_hidden_size"] = 48.into()),
            "out_hidden_size 48 must equal",
        ),
        ("image token", Box::new(|c| c["image_token_id"] = 420.into()), "image_token_id 420"),
    ];
    for (what, edit, want) in cases {
        let mut c = if what.starts_with("flat") {
            read_json("config_flat.json")
        } else {
            read_json("config.json")
        };
        edit(&mut c);
        let e = err_of(&c);
        assert!(e.contains(want) && e.contains("config.json"), "{what}: {e}");
    }
    // A text-only config is not taken for a VL one.
    let e = Qwen2VlConfig::from_json(&serde_json::json!({"model_type": "qwen2"})).unwrap_err();
    assert!(format!("{e:#}").contains("qwen2_5_vl"), "{e:#}");
}
