"""What the three probes (probe_logprobs.py, probe_vl.py, probe_generate.py) share.

Only pieces that behave the same in every probe that uses them live here; where the probes
differ, the difference is a parameter of the shared function (a help text, a directory prefix,
an environment variable's value, a list of choices, a scale, the log's rendering of a command).
torch and transformers are imported inside the functions that need them, so that importing this
module, and every probe's --help and (text and VL) --list, work without them.
"""
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

DT = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}
EMU_MISSING = "needs a build with `--features emu`"  # the engine's error line without --features emu


# ------------------------------------------------------------------------------------------ arguments
def add_filter_arg(ap):
    """The positional FILTERs of the text and generate probes (the VL probe takes exact names)."""
    ap.add_argument("filters", nargs="*", metavar="FILTER",
                    help="run only the cases whose name contains one of these substrings (default: all)")


def select_cases(cases, filters):
    """The cases whose name contains one of the filters (all of them without filters)."""
    return [c for c in cases if not filters or any(f in c["name"] for f in filters)]


def add_engine_work_args(ap, work_holds):
    """--engine and --work; work_holds: what --work holds besides the cases, for its help."""
    ap.add_argument("--engine", type=Path, default=None,
                    help="the mmr1-fast binary (default: the newer of REPO/target/release/mmr1-fast and "
                         "REPO/target/debug/mmr1-fast)")
    ap.add_argument("--work", type=Path, default=None,
                    help=f"directory for the generated cases and {work_holds} (default: a new temporary directory, printed)")


def add_emu_args(ap, env_emu, emu_help):
    """--emu / --no-emu; the default from env_emu (the probe's environment variable): "0" off, else auto."""
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--emu", dest="emu", action="store_const", const="on", help=emu_help)
    g.add_argument("--no-emu", dest="emu", action="store_const", const="off", help="CPU only")
    ap.set_defaults(emu={"1": "auto", "0": "off"}.get(env_emu, "auto"))


# ------------------------------------------------------------------------------------------ setup
def import_error(err, also=""):
    """The usage error for a missing package (err: the ImportError); returns the exit status 2."""
    print(f"error: missing Python package: {err} (see scripts/requirements-golden.txt{also})", file=sys.stderr)
    return 2


def default_engine():
    """The most recently built of target/release/mmr1-fast and target/debug/mmr1-fast (a stale
    release binary would otherwise judge old code); the release path when neither exists."""
    built = [p for p in (REPO / "target" / d / "mmr1-fast" for d in ("release", "debug")) if p.exists()]
    if not built:
        return REPO / "target" / "release" / "mmr1-fast"
    return max(built, key=lambda p: p.stat().st_mtime)


def resolve_engine(arg):
    """The engine binary (--engine or the default), resolved; None, after the error line, when it is
    not an executable file."""
    engine = (arg or default_engine()).resolve()
    if not (engine.is_file() and os.access(engine, os.X_OK)):
        print(f"error: engine binary {engine} not found (build it, or pass --engine)", file=sys.stderr)
        return None
    return engine


def work_dir(arg, prefix):
    """--work, created if needed, or a new temporary directory named prefix...; resolved."""
    if arg is None:
        return Path(tempfile.mkdtemp(prefix=prefix))
    work = arg.resolve()
    work.mkdir(parents=True, exist_ok=True)
    return work


def emu_required_error(engine):
    """--emu given with an engine built without --features emu; returns the exit status 2."""
    print(f"error: --emu given but {engine} was built without --features emu", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------ checkpoints
def fresh_case_dir(cases_dir, name):
    """CASES_DIR/NAME emptied and created; returns it and its model/ path (not created)."""
    d = os.path.join(cases_dir, name)
    if os.path.isdir(d):
        shutil.rmtree(d)
    md = os.path.join(d, "model")
    os.makedirs(d)
    return d, md


def init_sensitive(model, seed, scale=0.2):
    """Large random weights (scale * N(0, 1); norm weights 1 + 0.1 * N(0, 1)) from a generator seeded
    with seed, so that differences between implementations show."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(scale * torch.randn(p.shape, generator=g))


def random_qwen2(kw, seed, scale=0.2):
    """An f32 Qwen2ForCausalLM of config kw, weights from init_sensitive(seed, scale)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(**kw)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    init_sensitive(model, seed, scale)
    return model


def to_dtype(model, name):
    """The model cast to f32, bf16 or f16 (a key of DT)."""
    import torch
    return model.to(getattr(torch, DT[name]))


def random_rope_factors(rng, rp, yarn_orig_max):
    """Draw the factors of rope type rp["rope_type"] into rp (none for default; linear, yarn and llama3
    in this order of draws); yarn_orig_max: the choices of yarn's original_max_position_embeddings."""
    rope = rp["rope_type"]
    if rope == "linear":
        rp["factor"] = rng.choice([0.5, 2.0, 3.7])
    elif rope == "yarn":
        rp["factor"] = rng.choice([2.0, 4.0, 16.0])
        rp["original_max_position_embeddings"] = rng.choice(yarn_orig_max)
    elif rope == "llama3":
        rp.update(factor=rng.choice([2.0, 8.0]), low_freq_factor=1.0, high_freq_factor=rng.choice([2.0, 4.0]),
                  original_max_position_embeddings=rng.choice([8, 16, 64]))
    return rp


def config_from(base, over):
    """A deep copy of the config dict base with the keys of over replaced."""
    c = json.loads(json.dumps(base))
    c.update(over)
    return c


def edit_config_json(md, edit):
    """Set the keys of edit in MD/config.json; the value "__DELETE__" removes a key."""
    p = os.path.join(md, "config.json")
    c = json.load(open(p))
    for k, v in edit.items():
        if v == "__DELETE__":
            c.pop(k, None)
        else:
            c[k] = v
    json.dump(c, open(p, "w"), indent=2)


def hf_qwen2(md):
    """transformers' Qwen2ForCausalLM from md: f32, eager attention, eval mode."""
    import torch
    from transformers import Qwen2ForCausalLM
    m = Qwen2ForCausalLM.from_pretrained(md, dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


# ------------------------------------------------------------------------------------------ engine runs
def write_engine_log(path, cmd_text, rc, out, err):
    """An engine run's log: the command line, then its exit status, stdout and stderr."""
    with open(path, "w") as f:
        f.write(f"{cmd_text}\n--- rc {rc}\n--- stdout\n{out}\n--- stderr\n{err}\n")


# ------------------------------------------------------------------------------------------ comparison
def rel_l2(a, b):
    """|a - b| / |b| in f64 (0 when b is empty); a and b of the same shape."""
    a, b = a.double(), b.double()
    n = b.norm().item()
    if b.numel() == 0:
        return 0.0
    return (a - b).norm().item() / max(n, 1e-30)
