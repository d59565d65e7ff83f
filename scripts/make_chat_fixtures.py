#!/usr/bin/env python3
"""Golden chat-template renderings from transformers' own `apply_chat_template`, for
src/chat_template.rs (tests/suite/transformers_parity/chat_template.rs, run in the golden_forward
test binary, reads them; no Python needed there).

Writes tests/fixtures/chat_templates.json: {"versions", "specials", "templates": {name: source},
"cases": [{"template", "messages", "add_generation_prompt", "text"} or {..., "error": true}]}.

The templates are written here to exercise what real checkpoints' templates use (none is
copied from a model repository):
  chatml_default_system  Qwen2.5's shape: `-` whitespace control, a default system turn when
                         the conversation has none, loop.first
  blocks_and_specials    no whitespace control (so trim_blocks/lstrip_blocks decide every
                         newline and indent), bos_token/eos_token, namespace(), loop.index,
                         filters upper/trim, raise_exception on an unknown role
  python_methods         Python string methods (split, lstrip, strip, startswith), `in`,
                         a conditional expression, messages[::-1], length, tojson (of a
                         message, and with indent)
  undefined_and_neighbours  Qwen2.5's tool-era idioms: `if tools` and a loop over
                         `message.tool_calls` when neither is given, `is defined`, loop.last,
                         loop.index0 and the neighbouring messages (runs of one role merged)
Every template is rendered for several conversations (unicode, inner newlines, surrounding
spaces, reasoning blocks), with and without the generation prompt.

Rerun (from the repository root; the environment of scripts/make_golden.py):
  .venv/bin/python scripts/make_chat_fixtures.py
"""

import json
import os

import transformers
from transformers import PreTrainedTokenizerFast

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")

TEMPLATES = {
    "chatml_default_system": (
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "{%- else %}\n"
        "    {{- '<|im_start|>system\\nYou are a careful solver.<|im_end|>\\n' }}\n"
        "{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if not (message.role == 'system' and loop.first) %}\n"
        "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n"
    ),
    "blocks_and_specials": (
        "{{ bos_token }}{% set ns = namespace(turns=0) %}\n"
        "{% for m in messages %}\n"
        "    {% if m['role'] not in ['system', 'user', 'assistant'] %}\n"
        "        {{ raise_exception('unknown role ' + m['role']) }}\n"
        "    {% endif %}\n"
        "    {% set ns.turns = ns.turns + 1 %}\n"
        "[{{ loop.index }}:{{ m['role'] | upper }}] {{ m['content'] | trim }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n"
        "\n"
        "{% endfor %}\n"
        "{% if add_generation_prompt %}\n"
        "[{{ ns.turns + 1 }}:ASSISTANT] {% endif %}\n"
    ),
    "python_methods": (
        "{%- for m in messages %}\n"
        "{%- if m.role == 'assistant' %}\n"
        "{%- set content = m.content %}\n"
        "{%- if '</think>' in content %}"
        "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}\n"
        "{{- '<|im_start|>assistant\\n' + content.strip() + '<|im_end|>\\n' }}\n"
        "{%- else %}\n"
        "{{- '<|im_start|>' + m.role + '\\n' + m.content"
        " + (' (heading)' if m.content.startswith('#') else '') + '<|im_end|>\\n' }}\n"
        "{%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
        "{%- if messages | length > 2 %}{{- '<!-- ' + (messages[::-1][0] | tojson) + ' -->' }}{%- endif %}\n"
        "{%- if messages | length > 3 %}{{- messages[0] | tojson(indent=2) }}{%- endif %}\n"
    ),
    "undefined_and_neighbours": (
        "{%- if tools %}{{- 'TOOLS ' + (tools | length | string) }}{%- endif %}\n"
        "{%- for message in messages %}\n"
        "    {%- if message.role == 'assistant' and not message.tool_calls %}\n"
        "        {{- '<|im_start|>assistant\\n' + message.content }}\n"
        "        {%- for call in message.tool_calls %}{{- call.name }}{%- endfor %}\n"
        "        {{- '<|im_end|>\\n' }}\n"
        "    {%- else %}\n"
        "        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != message.role) %}\n"
        "            {{- '<|im_start|>' + message.role + '\\n' }}\n"
        "        {%- endif %}\n"
        "        {{- message.content }}\n"
        "        {%- if message.name is defined %}{{- ' @' + message.name }}{%- endif %}\n"
        "        {%- if loop.last or (messages[loop.index0 + 1].role != message.role) %}\n"
        "            {{- '<|im_end|>\\n' }}\n"
        "        {%- else %}\n"
        "            {{- '\\n' }}\n"
        "        {%- endif %}\n"
        "    {%- endif %}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
    ),
}

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2+3?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "  Hi there \n"}],
    [{"role": "user", "content": "Solve x^2=4."},
     {"role": "assistant", "content": "<think>x = ±2\nso two roots</think>\n\nThe roots are \\boxed{\\pm 2}."}],
    [{"role": "system", "content": "Be exact."},
     {"role": "user", "content": "# Heading\nSum 1..4?"},
     {"role": "assistant", "content": "  10  "},
     {"role": "user", "content": "And \"1..5\" — ünïcode?"},
     {"role": "assistant", "content": "15"}],
    [{"role": "user", "content": "first"}, {"role": "user", "content": "second"},
     {"role": "assistant", "content": "ok"}],
]


def main():
    tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(FIX, "tokenizer.json"),
                                  bos_token="<|endoftext|>", eos_token="<|im_end|>")
    cases = []
    for name, src in TEMPLATES.items():
        for conv in CONVERSATIONS:
            for agp in (False, True):
                text = tok.apply_chat_template(conv, chat_template=src, tokenize=False,
                                               add_generation_prompt=agp)
                cases.append({"template": name, "messages": conv, "add_generation_prompt": agp,
                              "text": text})
        bad = [{"role": "tool", "content": "42"}]
        try:
            tok.apply_chat_template(bad, chat_template=src, tokenize=False)
            cases.append({"template": name, "messages": bad, "add_generation_prompt": False,
                          "text": tok.apply_chat_template(bad, chat_template=src, tokenize=False)})
        except Exception as e:  # raise_exception in the template
            cases.append({"template": name, "messages": bad, "add_generation_prompt": False,
                          "error": True, "message": str(e)})
    out = {"versions": {"transformers": transformers.__version__},
           "specials": {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"},
           "templates": TEMPLATES, "cases": cases}
    path = os.path.join(FIX, "chat_templates.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"{path}: {len(cases)} cases")
    for c in cases[:3] + [c for c in cases if c.get("error")]:
        print(repr(c.get("text", c.get("message")))[:300])


if __name__ == "__main__":
    main()
