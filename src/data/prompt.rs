//! How an RL item becomes a prompt: one place, shared by training, scoring and evaluation.

use crate::tokenizer::{apply_chat_template, Message, Tokenizer};
use anyhow::Result;
use serde::{Deserialize, Serialize};

/// MMR1's training instruction, prepended to the user's text (not a system turn). Our
/// wording of the instruction described in the MMR1 report (../shared/MMR1.md, "Data and
/// prompts"): reason step by step with reflection, answer in the think/answer/boxed format.
pub const MMR1_INSTRUCTION: &str = "You FIRST think about the reasoning process step by step, checking and reflecting on \
your work, and THEN give the final answer. The reasoning process MUST be enclosed within <think> </think> tags, and the \
final answer MUST be enclosed within <answer> </answer> tags, with the answer itself in \\boxed{}.";

/// MMR1's evaluation instruction.
pub const MMR1_EVAL_INSTRUCTION: &str =
    "Solve the problem step by step and put your final answer in one \\boxed{}. \
For a multiple-choice question, put only the letter of the choice inside the \\boxed{}.";

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PromptStyle {
    /// The MMR1 training instruction, then the problem, as one user turn.
    #[default]
    Mmr1,
    /// The MMR1 evaluation instruction, then the problem.
    Mmr1Eval,
    /// The problem alone as the user turn (the built-in demo).
    Plain,
}

/// The chat-templated prompt text for `problem`, ending with the assistant's turn opening:
/// the item's `system` turn if it has one, then one user turn, rendered by the checkpoint's
/// chat template when `tok` has one (as verl's `apply_chat_template(..., add_generation_prompt=
/// True)`; without a system turn of the item's the template decides it), else by the built-in
/// ChatML.
pub fn render_prompt(
    tok: &Tokenizer,
    problem: &str,
    system: Option<&str>,
    style: PromptStyle,
) -> Result<String> {
    tok.render_chat(&turns(problem, system, style), None, true)
}

/// [`render_prompt`] with the built-in ChatML whatever the tokenizer (the demos' models,
/// made in code, have no template of their own).
pub fn render_prompt_chatml(problem: &str, style: PromptStyle) -> String {
    apply_chat_template(&turns(problem, None, style), None, true)
}

/// The optional system turn, then the user turn: the style's instruction and the problem.
fn turns(problem: &str, system: Option<&str>, style: PromptStyle) -> Vec<Message> {
    let user = match style {
        PromptStyle::Mmr1 => format!("{MMR1_INSTRUCTION}\n\n{problem}"),
        PromptStyle::Mmr1Eval => format!("{MMR1_EVAL_INSTRUCTION}\n\n{problem}"),
        PromptStyle::Plain => problem.to_string(),
    };
    system
        .map(|s| Message::new("system", s))
        .into_iter()
        .chain([Message::new("user", &user)])
        .collect()
}

/// [`render_prompt`] for an item with `n_images` images (Qwen2.5-VL): each `<image>` marker of
/// the problem (verl's and MMR1's data convention) becomes one
/// `<|vision_start|><|image_pad|><|vision_end|>` block; without markers the blocks go before
/// the problem, in image order. Markers and images must be as many.
pub fn render_prompt_with_images(
    tok: &Tokenizer,
    problem: &str,
    system: Option<&str>,
    style: PromptStyle,
    n_images: usize,
) -> anyhow::Result<String> {
    use crate::model::vl_prompt::IMAGE_PLACEHOLDER;
    let markers = problem.matches("<image>").count();
    let problem = if markers == 0 {
        format!("{}{problem}", IMAGE_PLACEHOLDER.repeat(n_images))
    } else if markers == n_images {
        problem.replace("<image>", IMAGE_PLACEHOLDER)
    } else {
        anyhow::bail!(
            "the problem has {markers} <image> marker(s) but the item has {n_images} image(s)"
        );
    };
    render_prompt(tok, &problem, system, style)
}
