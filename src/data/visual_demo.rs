//! The visual demo task: pictures drawn in code (a few filled squares, circles and triangles in
//! a few colours on a grey canvas), questions with verifiable answers ("Points: red 1, green
//! 2, blue 3. How many points?", the demo's; "How many red shapes?", "How many circles?",
//! "Are there more red shapes than blue shapes?"), a teacher
//! that writes MMR1's `<think>`/`<answer>`/`\boxed{}` solutions with controllable slips, a
//! character-level tokenizer with Qwen2.5-VL's vision tokens, and a tiny Qwen2.5-VL config.
//! No downloads; everything is reproducible from a seed.
//!
//! The canvas is a grid of 28 x 28 px cells, one shape at most per cell. 28 px is
//! `patch_size * merge_size` of Qwen2.5-VL, so each cell is exactly one merged vision token:
//! an 84 x 84 image is 36 patches and 9 image tokens, small enough for a tower trained from
//! scratch on two CPU cores.

use super::demo::{char_tokenizer, SPECIAL, TAGS};
use super::rl_items::RlItem;
use crate::model::Qwen2VlConfig;
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Side of a grid cell in pixels: one merged Qwen2.5-VL token (14 px patches, 2 x 2 merge).
pub const CELL: u32 = 28;
/// Margin kept free inside each cell, so shapes of neighbouring cells never touch.
const MARGIN: u32 = 2;
/// Mid grey, the preprocessor's mean colour (CLIP's mean x 255): an empty patch normalizes to
/// about zero, so a cell's vision features are its shape's colour and form and nothing else.
/// On white, every patch carried a large white component, the colours differed only in a
/// small part of the features, and the decoder learned where the shapes were but not their
/// colours (docs/visual-demo.md).
pub const BACKGROUND: [u8; 3] = [124, 116, 104];

/// Qwen2.5-VL's vision special tokens (one id each), as its tokenizer spells them.
pub const VL_SPECIAL: [&str; 4] =
    ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Colour {
    Red,
    Green,
    Blue,
    Yellow,
}

impl Colour {
    pub const ALL: [Colour; 4] = [Colour::Red, Colour::Green, Colour::Blue, Colour::Yellow];
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Yellow => "yellow",
        }
    }
    /// Saturated and far apart, so a pixel's colour is never in doubt.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [220, 30, 30],
            Colour::Green => [30, 160, 50],
            Colour::Blue => [30, 70, 220],
            Colour::Yellow => [230, 190, 0],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Square,
    Circle,
    Triangle,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Square, Kind::Circle, Kind::Triangle];
    pub fn name(self) -> &'static str {
        match self {
            Kind::Square => "square",
            Kind::Circle => "circle",
            Kind::Triangle => "triangle",
        }
    }
}

/// Words the tokenizer keeps whole (one id each): the colours and kinds the solutions name.
pub const WORDS: [&str; 7] = ["red", "green", "blue", "yellow", "square", "circle", "triangle"];

/// One filled shape: `size` x `size` px bounding box with its top-left corner at (`x`, `y`),
/// inside grid cell `cell` (row-major).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Shape {
    pub colour: Colour,
    pub kind: Kind,
    pub cell: usize,
    pub x: u32,
    pub y: u32,
    pub size: u32,
}

impl Shape {
    /// Whether pixel (`px`, `py`) is painted, sampled at the pixel's centre.
    pub fn covers(&self, px: u32, py: u32) -> bool {
        if px < self.x || py < self.y || px >= self.x + self.size || py >= self.y + self.size {
            return false;
        }
        let s = self.size as f64;
        let (u, v) = (px as f64 + 0.5 - self.x as f64, py as f64 + 0.5 - self.y as f64);
        match self.kind {
            Kind::Square => true,
            Kind::Circle => (u - s / 2.0).powi(2) + (v - s / 2.0).powi(2) <= (s / 2.0).powi(2),
            // Apex at the top centre, base along the bottom edge.
            Kind::Triangle => (u - s / 2.0).abs() <= s / 2.0 * v / s,
        }
    }

    pub fn describe(&self) -> String {
        format!("{} {}", self.colour.name(), self.kind.name())
    }
}

/// A picture: its side in pixels and its shapes in reading order (by cell).
#[derive(Clone, Debug, PartialEq)]
pub struct Scene {
    pub canvas: u32,
    pub shapes: Vec<Shape>,
}

impl Scene {
    pub fn draw(&self) -> RgbImage {
        let mut img = RgbImage::from_pixel(self.canvas, self.canvas, Rgb(BACKGROUND));
        for s in &self.shapes {
            for py in s.y..s.y + s.size {
                for px in s.x..s.x + s.size {
                    if s.covers(px, py) {
                        img.put_pixel(px, py, Rgb(s.colour.rgb()));
                    }
                }
            }
        }
        img
    }

    pub fn save_png(&self, path: &Path) -> Result<()> {
        self.draw()
            .save_with_format(path, image::ImageFormat::Png)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// What an item asks about its picture.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Question {
    /// "How many red shapes?"
    CountColour(Colour),
    /// "How many circles?"
    CountKind(Kind),
    /// "Points: red 1, green 2, blue 3. How many points?": a shape of the i-th of the first
    /// `n` colours of `Colour::ALL` is worth i + 1 points; the answer is their sum. Every
    /// colour's count enters the answer with its own weight, so no count can be skipped and the
    /// total number of shapes (which a model sees without telling colours apart) does not give it.
    Points(usize),
    /// "Are there more red shapes than blue shapes?" with options A. yes, B. no.
    MoreColour(Colour, Colour),
}

impl Question {
    pub fn matches(&self, s: &Shape) -> bool {
        match *self {
            Question::CountColour(c) => s.colour == c,
            Question::CountKind(k) => s.kind == k,
            Question::Points(_) => true,
            Question::MoreColour(..) => false,
        }
    }

    pub fn text(&self) -> String {
        match *self {
            Question::CountColour(c) => format!("How many {} shapes?", c.name()),
            Question::CountKind(k) => format!("How many {}s?", k.name()),
            Question::Points(n) => {
                let worth: Vec<String> =
                    (0..n).map(|i| format!("{} {}", Colour::ALL[i].name(), i + 1)).collect();
                format!("Points: {}. How many points?", worth.join(", "))
            }
            Question::MoreColour(a, b) => format!(
                "Are there more {} shapes than {} shapes?\nA. yes\nB. no",
                a.name(),
                b.name()
            ),
        }
    }

    /// The correct answer for `scene`: a count, or the option letter.
    pub fn answer(&self, scene: &Scene) -> String {
        let count = |c: Colour| scene.shapes.iter().filter(|s| s.colour == c).count();
        match *self {
            Question::MoreColour(a, b) => if count(a) > count(b) { "A" } else { "B" }.into(),
            Question::Points(n) => {
                (0..n).map(|i| (i + 1) * count(Colour::ALL[i])).sum::<usize>().to_string()
            }
            q => scene.shapes.iter().filter(|s| q.matches(s)).count().to_string(),
        }
    }
}

/// One item of the task: the RL item (problem, answer, image path relative to the JSONL
/// files, options) and the picture and question it was made from.
#[derive(Clone, Debug)]
pub struct VisualItem {
    pub item: RlItem,
    pub scene: Scene,
    pub question: Question,
    /// The colours the task draws from (the teacher counts each of them).
    pub palette: &'static [Colour],
    /// Whether the task asks about kinds (then the teacher counts them too).
    pub kinds: bool,
    /// The teacher's counts that can slip are those of at least this many shapes.
    pub slip_from: usize,
}

/// The task's knobs. Difficulty is the number of colours present: the teacher (see
/// [`teacher_solution`]) may slip at every colour it counts a shape of, so after SFT pictures
/// of one colour are often solved and pictures of three rarely, and GRPO groups have reward
/// variance. The demo's task (the default) draws 1 to 4 squares that fill their cells (24 px,
/// no jitter: every cell's features are its colour's), asks only the points question, and
/// its teacher can slip on any count of one or more; the count and comparison mix, kinds and
/// smaller jittered shapes remain for the tests and for trying harder tasks.
#[derive(Clone, Copy, Debug)]
pub struct VisualTask {
    /// Side of the square canvas in pixels; a multiple of `CELL`.
    pub canvas: u32,
    pub max_shapes: usize,
    /// The first `colours` of `Colour::ALL` are used (2 to 4).
    pub colours: usize,
    /// Also ask "How many circles?" (and count kinds in the solutions). Off in the demo: the
    /// tiny model, frozen random vision tower and ~300 SFT steps did not learn kinds, and
    /// learning them cost it the colours (docs/visual-demo.md). The pictures have all kinds
    /// either way.
    pub ask_kinds: bool,
    /// Ask only the points question ([`Question::Points`]) instead of the count and
    /// comparison mix. The demo does: with colour questions, the tiny model read the colours
    /// (97.5% of counts right with a teacher that never slips) but did not learn to pick the
    /// asked colour's count out of its summary (0.725), and that, not the teacher's slips, was
    /// the error; the points need every count, at fixed places (docs/visual-demo.md).
    pub points: bool,
    /// Side of the shapes' bounding boxes in px, drawn uniformly in this range (at most
    /// `CELL - 2 * MARGIN`, jittered in the cell when smaller).
    pub sizes: (u32, u32),
    /// The kinds drawn.
    pub kinds: &'static [Kind],
    /// The teacher's counts that can slip are those of at least this many shapes.
    pub slip_from: usize,
}

impl Default for VisualTask {
    fn default() -> Self {
        VisualTask {
            canvas: 84,
            max_shapes: 4,
            colours: 3,
            ask_kinds: false,
            points: true,
            sizes: (CELL - 2 * MARGIN, CELL - 2 * MARGIN),
            kinds: &Kind::ALL[..1],
            slip_from: 1,
        }
    }
}

impl VisualTask {
    pub fn palette(&self) -> &'static [Colour] {
        &Colour::ALL[..self.colours.clamp(2, Colour::ALL.len())]
    }

    fn cells(&self) -> usize {
        ((self.canvas / CELL) * (self.canvas / CELL)) as usize
    }

    pub fn draw_scene(&self, rng: &mut ChaCha8Rng) -> Scene {
        let side = self.canvas / CELL;
        let n = rng.gen_range(1..=self.max_shapes.min(self.cells()));
        let mut cells: Vec<usize> = (0..self.cells()).collect();
        cells.shuffle(rng);
        cells.truncate(n);
        cells.sort_unstable();
        let shapes = cells
            .into_iter()
            .map(|cell| {
                let size = rng.gen_range(self.sizes.0..=self.sizes.1.min(CELL - 2 * MARGIN));
                let slack = CELL - 2 * MARGIN - size;
                let (cx, cy) = ((cell as u32 % side) * CELL, (cell as u32 / side) * CELL);
                Shape {
                    colour: *self.palette().choose(rng).expect("palette is not empty"),
                    kind: *self.kinds.choose(rng).expect("kinds"),
                    cell,
                    x: cx + MARGIN + rng.gen_range(0..=slack),
                    y: cy + MARGIN + rng.gen_range(0..=slack),
                    size,
                }
            })
            .collect();
        Scene { canvas: self.canvas, shapes }
    }

    fn draw_question(&self, rng: &mut ChaCha8Rng) -> Question {
        let pal = self.palette();
        // Two count questions for each comparison, kinds as often as colours when asked.
        if self.points {
            return Question::Points(pal.len());
        }
        let kinds = if self.ask_kinds { 2 } else { 0 };
        match rng.gen_range(0..3 + kinds) {
            0 | 1 => Question::CountColour(*pal.choose(rng).expect("palette")),
            3 | 4 => Question::CountKind(*Kind::ALL.choose(rng).expect("kinds")),
            _ => {
                let two: Vec<Colour> = pal.choose_multiple(rng, 2).copied().collect();
                Question::MoreColour(two[0], two[1])
            }
        }
    }

    /// `count` items with ids `{prefix}{i}` and images `images/{prefix}{i}.png`, deterministic
    /// in `seed`. The images are not written (see [`write_images`]).
    pub fn items(&self, count: usize, seed: u64, prefix: &str) -> Vec<VisualItem> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|i| {
                let scene = self.draw_scene(&mut rng);
                let question = self.draw_question(&mut rng);
                let id = format!("{prefix}{i}");
                let options = match question {
                    Question::MoreColour(..) => Some(vec!["yes".to_string(), "no".to_string()]),
                    _ => None,
                };
                let item = RlItem {
                    images: vec![format!("images/{id}.png")],
                    id: Some(id),
                    problem: question.text(),
                    answer: Some(question.answer(&scene)),
                    options,
                    system: None,
                };
                VisualItem {
                    item,
                    scene,
                    question,
                    palette: self.palette(),
                    kinds: self.ask_kinds,
                    slip_from: self.slip_from,
                }
            })
            .collect()
    }
}

/// Draws every item's picture to its image path, relative to `dir` (folders created).
pub fn write_images(items: &[VisualItem], dir: &Path) -> Result<()> {
    for it in items {
        let path = dir.join(&it.item.images[0]);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        it.scene.save_png(&path)?;
    }
    Ok(())
}

/// What the teacher writes for a true count `n`: `n`, or `n - 1` with probability `slip` when
/// `n >= from` (it overlooks a shape; with `from` 2, never a lone one).
fn teacher_count(n: usize, from: usize, slip: f64, rng: &mut ChaCha8Rng) -> usize {
    if n >= from.max(1) && rng.gen_bool(slip) {
        n - 1
    } else {
        n
    }
}

/// A worked solution from an imperfect teacher: the picture summarized as a count per colour
/// of the palette (and per kind when the task asks about kinds), in a fixed order (`red 2,
/// green 0, blue 1`), then the count the question asks about repeated (or the two counts it
/// compares), then the boxed answer those counts give; for the points question (the demo's)
/// the summary, each count times its colour's points, and their sum (`<think>red 2, green 0,
/// blue 1. 2+0+3=5</think>`, then `\boxed{5}`). Each count of at least `slip_from` shapes is written one too low with
/// probability `slip` (deterministic in `seed` and the item id). SFT learns
/// to look (every count depends on the picture, so the vision tower gets a signal at every
/// one) and learns the slips with it; only a verifiable reward tells the model that an
/// overlooked shape makes the answer wrong.
///
/// Why counts and not a list of the shapes in reading order: a count is a sum over the image
/// tokens in a slot whose place never moves, which a two-layer decoder learns in a few hundred
/// steps; finding "the next occupied cell" is a positional search it did not learn in 500
/// (docs/visual-demo.md).
pub fn teacher_solution(it: &VisualItem, slip: f64, seed: u64) -> String {
    let id = it.item.id.as_deref().unwrap_or("");
    let mut rng = ChaCha8Rng::seed_from_u64(
        seed ^ crate::rl::rollout::mix_seed(0, id.bytes().fold(7, |h, b| h * 31 + b as u64)),
    );
    let shapes = &it.scene.shapes;
    let mut said = Vec::new();
    let mut colour_counts = Vec::new();
    for &c in it.palette {
        let n = teacher_count(
            shapes.iter().filter(|s| s.colour == c).count(),
            it.slip_from,
            slip,
            &mut rng,
        );
        said.push(format!("{} {n}", c.name()));
        colour_counts.push((c, n));
    }
    let mut kind_counts = Vec::new();
    for k in Kind::ALL.into_iter().filter(|_| it.kinds) {
        let n = teacher_count(
            shapes.iter().filter(|s| s.kind == k).count(),
            it.slip_from,
            slip,
            &mut rng,
        );
        said.push(format!("{} {n}", k.name()));
        kind_counts.push((k, n));
    }
    let of_colour = |c: Colour| colour_counts.iter().find(|x| x.0 == c).map_or(0, |x| x.1);
    let (step, answer) = match it.question {
        Question::CountColour(c) => {
            (format!("{} {}", c.name(), of_colour(c)), of_colour(c).to_string())
        }
        Question::CountKind(k) => {
            let n = kind_counts.iter().find(|x| x.0 == k).map_or(0, |x| x.1);
            (format!("{} {n}", k.name()), n.to_string())
        }
        Question::Points(_) => {
            // The palette is `Colour::ALL[..n]`, so the i-th count is worth i + 1. The terms
            // are written out before their sum: done in one step from the summary, the sum was
            // the main error left after RL (docs/visual-demo.md).
            let terms: Vec<usize> =
                colour_counts.iter().enumerate().map(|(i, x)| (i + 1) * x.1).collect();
            let total: usize = terms.iter().sum();
            let terms: Vec<String> = terms.iter().map(|t| t.to_string()).collect();
            return format!(
                "<think>{}. {}={total}</think><answer>\\boxed{{{total}}}</answer>",
                said.join(", "),
                terms.join("+")
            );
        }
        Question::MoreColour(a, b) => {
            let (na, nb) = (of_colour(a), of_colour(b));
            let letter = if na > nb { "A" } else { "B" };
            (format!("{} {na}, {} {nb}", a.name(), b.name()), letter.to_string())
        }
    };
    format!("<think>{}. {step}</think><answer>\\boxed{{{answer}}}</answer>", said.join(", "))
}

/// The visual demo's tokenizer: the text demo's characters, chat tokens and tags, Qwen2.5-VL's
/// vision tokens, and the colour and shape words whole.
pub fn visual_demo_tokenizer() -> Result<Tokenizer> {
    let special: Vec<&str> = SPECIAL.iter().chain(VL_SPECIAL.iter()).copied().collect();
    let words: Vec<&str> = TAGS.iter().chain(WORDS.iter()).copied().collect();
    char_tokenizer(&special, &words)
}

/// The tiny Qwen2.5-VL the visual demo starts from (and `init-model --arch qwen2.5-vl-tiny`):
/// the text demo's decoder widths, a 2-block vision tower (block 1 full attention, block 0
/// windowed over 2 x 2 cells), its vision token ids taken from `tok`. Flat published layout.
pub fn visual_demo_config(tok: &Tokenizer) -> Result<Qwen2VlConfig> {
    let id = |t: &str| tok.token_id(t).with_context(|| format!("tokenizer has no {t}"));
    let json = serde_json::json!({
        "architectures": ["Qwen2_5_VLForConditionalGeneration"], "model_type": "qwen2_5_vl",
        "hidden_size": 96, "intermediate_size": 256, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": tok.vocab_size(),
        "tie_word_embeddings": true, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 512, "hidden_act": "silu", "initializer_range": 0.02,
        // Qwen's bos is <|endoftext|> (151643); null made transformers warn that its
        // default 151643 lies outside this vocabulary.
        "bos_token_id": id("<|endoftext|>")?, "eos_token_id": id("<|im_end|>")?,
        "image_token_id": id("<|image_pad|>")?, "video_token_id": id("<|video_pad|>")?,
        "vision_start_token_id": id("<|vision_start|>")?,
        "vision_end_token_id": id("<|vision_end|>")?,
        // head_dim 24: 12 rotary pairs over (t, h, w), in the published 16:24:24 spirit.
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 4, 4]},
        "vision_config": {
            "depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
            "in_channels": 3, "patch_size": 14, "spatial_merge_size": 2,
            "temporal_patch_size": 2, "window_size": 56, "fullatt_block_indexes": [1],
            "out_hidden_size": 96, "hidden_act": "silu", "tokens_per_second": 2,
            "initializer_range": 0.02
        }
    });
    Qwen2VlConfig::from_json(&json).context("the visual demo's model config")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rl::reward::{RewardConfig, RewardItem};
    use std::collections::HashMap;

    /// 4-connected components of one colour in a decoded picture, each with its pixel count
    /// and bounding box (x0, y0, x1, y1), found by flood fill.
    fn components(img: &RgbImage, rgb: [u8; 3]) -> Vec<(usize, [u32; 4])> {
        let (w, h) = img.dimensions();
        let mut seen = vec![false; (w * h) as usize];
        let mut out = Vec::new();
        for y0 in 0..h {
            for x0 in 0..w {
                if seen[(y0 * w + x0) as usize] || img.get_pixel(x0, y0).0 != rgb {
                    continue;
                }
                let (mut n, mut bb) = (0, [x0, y0, x0, y0]);
                let mut stack = vec![(x0, y0)];
                seen[(y0 * w + x0) as usize] = true;
                while let Some((x, y)) = stack.pop() {
                    n += 1;
                    bb = [bb[0].min(x), bb[1].min(y), bb[2].max(x), bb[3].max(y)];
                    let nb =
                        [(x.wrapping_sub(1), y), (x + 1, y), (x, y.wrapping_sub(1)), (x, y + 1)];
                    for (nx, ny) in nb {
                        if nx < w
                            && ny < h
                            && !seen[(ny * w + nx) as usize]
                            && img.get_pixel(nx, ny).0 == rgb
                        {
                            seen[(ny * w + nx) as usize] = true;
                            stack.push((nx, ny));
                        }
                    }
                }
                out.push((n, bb));
            }
        }
        out
    }

    /// A shape's kind from its fill of its bounding box: square 1, circle pi/4, triangle 1/2.
    fn kind_of(n: usize, bb: [u32; 4]) -> Kind {
        let fill = n as f64 / ((bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)) as f64;
        if fill > 0.92 {
            Kind::Square
        } else if fill > 0.65 {
            Kind::Circle
        } else {
            Kind::Triangle
        }
    }

    #[test]
    fn the_png_holds_the_stated_shapes_and_answers() {
        let dir = tempfile::tempdir().unwrap();
        let mixed = VisualTask {
            canvas: 84,
            max_shapes: 6,
            colours: 4,
            ask_kinds: true,
            points: false,
            sizes: (14, 24),
            kinds: &Kind::ALL,
            slip_from: 2,
        };
        // The demo's task (points over squares filling their cells) and the harder mix.
        let mut items = VisualTask::default().items(60, 11, "d");
        items.extend(mixed.items(60, 11, "t"));
        assert!(items[..60].iter().all(|i| i.question == Question::Points(3)));
        assert!(items[..60].iter().flat_map(|i| &i.scene.shapes).all(|s| s.size == 24));
        write_images(&items, dir.path()).unwrap();
        for it in &items {
            let img = image::open(dir.path().join(&it.item.images[0])).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), (84, 84));
            // Read the picture back: every non-background pixel is one of the palette's,
            // and the components of each colour are the scene's shapes of that colour.
            let mut found: HashMap<(Colour, Kind), usize> = HashMap::new();
            let mut painted = 0;
            for c in Colour::ALL {
                for (n, bb) in components(&img, c.rgb()) {
                    painted += n;
                    *found.entry((c, kind_of(n, bb))).or_default() += 1;
                }
            }
            let background = img.pixels().filter(|p| p.0 == BACKGROUND).count();
            assert_eq!(painted + background, 84 * 84, "{}: stray colours", it.item.problem);
            let mut stated: HashMap<(Colour, Kind), usize> = HashMap::new();
            for s in &it.scene.shapes {
                *stated.entry((s.colour, s.kind)).or_default() += 1;
            }
            assert_eq!(found, stated, "item {:?}", it.item.id);
            // The answer is the count read back from the pixels.
            let read = |f: &dyn Fn(&(Colour, Kind)) -> bool| -> usize {
                found.iter().filter(|(k, _)| f(k)).map(|(_, n)| n).sum()
            };
            let expect = match it.question {
                Question::CountColour(c) => read(&|k| k.0 == c).to_string(),
                Question::CountKind(k) => read(&|x| x.1 == k).to_string(),
                Question::MoreColour(a, b) => {
                    if read(&|k| k.0 == a) > read(&|k| k.0 == b) { "A" } else { "B" }.to_string()
                }
                Question::Points(n) => {
                    { (0..n).map(|i| (i + 1) * read(&|k| k.0 == Colour::ALL[i])).sum::<usize>() }
                        .to_string()
                }
            };
            assert_eq!(it.item.answer.as_deref(), Some(expect.as_str()), "{}", it.item.problem);
        }
        // The pictures vary: every kind and colour appears, counts are mixed.
        let all: Vec<&Shape> = items[60..].iter().flat_map(|i| &i.scene.shapes).collect();
        for k in Kind::ALL {
            assert!(all.iter().any(|s| s.kind == k), "{k:?}");
        }
        for c in Colour::ALL {
            assert!(all.iter().any(|s| s.colour == c), "{c:?}");
        }
    }

    #[test]
    fn reproducible_from_the_seed() {
        let task = VisualTask::default();
        let (a, b) = (task.items(20, 5, "x"), task.items(20, 5, "x"));
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.scene, y.scene);
            assert_eq!(x.item, y.item);
            assert_eq!(x.scene.draw(), y.scene.draw());
            assert_eq!(teacher_solution(x, 0.5, 3), teacher_solution(y, 0.5, 3));
        }
        let c = task.items(20, 6, "x");
        assert!(a.iter().zip(&c).any(|(x, y)| x.scene != y.scene));
    }

    #[test]
    fn the_perfect_teacher_is_graded_correct_and_the_slips_are_not() {
        let rc = RewardConfig::default();
        let kinds = VisualTask {
            ask_kinds: true,
            points: false,
            sizes: (14, 24),
            kinds: &Kind::ALL,
            slip_from: 2,
            ..VisualTask::default()
        };
        let mut items = VisualTask::default().items(300, 2, "r");
        items.extend(kinds.items(300, 2, "k"));
        assert!(items[..300].iter().all(|i| i.question == Question::Points(3)));
        assert!(items[300..].iter().any(|i| matches!(i.question, Question::CountKind(_))));
        let mut slipped_wrong = 0;
        for it in &items {
            let ri = RewardItem {
                answer: it.item.answer.clone().unwrap(),
                options: it.item.options.clone(),
            };
            let right = teacher_solution(it, 0.0, 9);
            let v = rc.grade(&right, &ri);
            assert_eq!((v.accuracy, v.format), (1.0, 1.0), "{right}");
            // Its summary of the picture is the picture's: one count per colour (and kind).
            let think = &right["<think>".len()..right.find("</think>").unwrap()];
            let summary: Vec<&str> = think.split(". ").next().unwrap().split(", ").collect();
            let mut want: Vec<String> = it
                .palette
                .iter()
                .map(|&c| (c.name(), it.scene.shapes.iter().filter(|s| s.colour == c).count()))
                .map(|(w, n)| format!("{w} {n}"))
                .collect();
            if it.kinds {
                want.extend(Kind::ALL.iter().map(|&k| {
                    format!(
                        "{} {}",
                        k.name(),
                        it.scene.shapes.iter().filter(|s| s.kind == k).count()
                    )
                }));
            }
            assert_eq!(summary, want, "{right}");
            let sloppy = rc.grade(&teacher_solution(it, 1.0, 9), &ri);
            assert_eq!(sloppy.format, 1.0);
            slipped_wrong += usize::from(sloppy.accuracy == 0.0);
            // Fewer matching shapes than a slip needs: the slipping teacher is right.
            if let Question::CountColour(_) | Question::CountKind(_) = it.question {
                let n = it.scene.shapes.iter().filter(|s| it.question.matches(s)).count();
                if n < it.slip_from {
                    assert_eq!(sloppy.accuracy, 1.0);
                }
            }
            // The points: each count times its colour's points, summed to the answer.
            if let Question::Points(_) = it.question {
                let c: Vec<usize> =
                    summary.iter().map(|w| w[w.len() - 1..].parse().unwrap()).collect();
                let sum = format!(
                    "{}+{}+{}={}",
                    c[0],
                    2 * c[1],
                    3 * c[2],
                    it.item.answer.as_ref().unwrap()
                );
                assert_eq!(think.split(". ").nth(1), Some(sum.as_str()), "{right}");
            }
            // The demo's teacher may overlook a lone shape: every points answer can be wrong,
            // and the teacher that always slips counts every colour present one too low.
            if let Question::Points(_) = it.question {
                assert_eq!(sloppy.accuracy, 0.0, "{}", teacher_solution(it, 1.0, 9));
            }
        }
        // All 300 points answers, and in the mix (lone shapes never overlooked) some 60.
        assert!(slipped_wrong > 350, "a teacher that always slips is often wrong: {slipped_wrong}");
    }

    /// The demo's design numbers (docs/visual-demo.md): a reader that sees every picture
    /// right but imitates the teacher is right only when it slips at none of the colours
    /// present (about a third of the time), a picture-blind guess of the most common answer
    /// under a fifth: RL has room above SFT, and a model that ignores the picture cannot fake it.
    #[test]
    fn the_demo_task_leaves_room_for_rl() {
        let items = VisualTask::default().items(2000, 4, "d");
        let mut imitator = 0.0;
        let mut answers: HashMap<String, usize> = HashMap::new();
        for it in &items {
            let present = Colour::ALL[..3]
                .iter()
                .filter(|&&c| it.scene.shapes.iter().any(|s| s.colour == c))
                .count();
            imitator += 0.5f64.powi(present as i32);
            *answers.entry(it.item.answer.clone().unwrap()).or_default() += 1;
        }
        let imitator = imitator / items.len() as f64;
        let blind = *answers.values().max().unwrap() as f64 / items.len() as f64;
        assert!((0.28..0.36).contains(&imitator), "imitator {imitator}");
        assert!(blind < 0.2, "blind best {blind}");
        // The slips' rate as the teacher draws them: right about that often.
        let rc = RewardConfig::default();
        let right = items
            .iter()
            .filter(|it| {
                let ri = RewardItem { answer: it.item.answer.clone().unwrap(), options: None };
                rc.grade(&teacher_solution(it, 0.5, 1), &ri).accuracy == 1.0
            })
            .count() as f64
            / items.len() as f64;
        assert!((right - imitator).abs() < 0.04, "teacher right {right}, expected {imitator}");
    }

    #[test]
    fn tokenizer_keeps_vision_tokens_and_words_whole() {
        let tok = visual_demo_tokenizer().unwrap();
        for t in VL_SPECIAL.iter().chain(WORDS.iter()).chain(TAGS.iter()) {
            assert_eq!(tok.encode(t).unwrap().len(), 1, "{t}");
        }
        let it = &VisualTask::default().items(1, 1, "t")[0];
        let text = format!("{}{}", it.item.problem, teacher_solution(it, 0.0, 0));
        let ids = tok.encode(&text).unwrap();
        assert!(!ids.contains(&0), "no unknown tokens");
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
        let cfg = visual_demo_config(&tok).unwrap();
        assert_eq!(cfg.image_token_id, tok.token_id("<|image_pad|>").unwrap());
        assert_eq!(cfg.text.eos_ids(), vec![tok.token_id("<|im_end|>").unwrap()]);
    }
}
