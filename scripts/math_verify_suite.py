#!/usr/bin/env python3
"""Math-Verify's own test cases, graded by `mmr1-fast reward` and by Math-Verify itself.

Two steps:

  extract  Reads Math-Verify's `tests/*.py` (a checkout, or the git directory the search tool's
           `fetch` makes) and writes every (gold, prediction, expected verdict) triple of its
           `pytest.mark.parametrize` tables, with the options each test passes to Math-Verify,
           to a JSONL (default tests/fixtures/math_verify_cases.jsonl). Only the tables are read
           (by `ast`); no Math-Verify code runs. Math-Verify is Apache-2.0 (its tests say MIT);
           the fixture notes its origin and commit.

  run      Grades every triple with `mmr1-fast reward` and with Math-Verify (`pip install
           math-verify`), prints the agreement of each with the expected verdicts, the false
           positives (expected 0, graded 1) and the graded answers per second.

Protocol (what a prompted model would answer):
  - the gold string is the item's reference answer, as it is;
  - a prediction that holds no `\\boxed` and is no prose (see `is_prose`) is a bare answer:
    it is sent as `\\boxed{<pred>}` with its outer `$`/`\\(..\\)`/`\\[..\\]` math delimiters
    removed; a prediction with a box, or prose (a model that did not box its answer), is a
    whole response and is sent as it is;
  - Math-Verify grades the same (gold, sent prediction) pairs with the options the test passes
    (`match_types`, `precision`, `strict`, `allow_set_relation_comp`), and also the original
    pairs, which is its own test suite ("own").

Usage:
  python3 scripts/math_verify_suite.py extract --tests /path/to/Math-Verify  [--git-dir DIR]
  python3 scripts/math_verify_suite.py run [--bin target/debug/mmr1-fast] [--repeat 20]
"""

import argparse
import ast
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_CASES = os.path.join(ROOT, "tests", "fixtures", "math_verify_cases.jsonl")

# The options of Math-Verify's `compare_strings` helper (tests/test_all.py) and their defaults.
DEFAULT_OPTS = {
    "match_types": ["latex", "expr"],
    "precision": 6,
    "strict": True,
    "allow_set_relation_comp": False,
}


def _read_test_sources(args):
    """{file name: source} for Math-Verify's tests/*.py."""
    out = {}
    if args.git_dir:
        names = subprocess.run(
            ["git", "--git-dir", args.git_dir, "ls-tree", "--name-only", "HEAD", "tests/"],
            check=True, capture_output=True, text=True,
        ).stdout.split()
        for name in names:
            if name.endswith(".py"):
                out[os.path.basename(name)] = subprocess.run(
                    ["git", "--git-dir", args.git_dir, "show", f"HEAD:{name}"],
                    check=True, capture_output=True, text=True,
                ).stdout
    else:
        tdir = os.path.join(args.tests, "tests")
        for name in sorted(os.listdir(tdir)):
            if name.endswith(".py"):
                with open(os.path.join(tdir, name)) as f:
                    out[name] = f.read()
    return out


def _call_options(fn, argnames):
    """How the test calls Math-Verify: `compare_strings(..., kw=..)` or `verify(parse(..))`."""
    for node in ast.walk(fn):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "compare_strings":
            opts = {}
            for kw in node.keywords:
                if isinstance(kw.value, ast.Name) and kw.value.id in argnames:
                    opts[kw.arg] = ("param", kw.value.id)
                else:
                    opts[kw.arg] = ast.literal_eval(kw.value)
            return "compare_strings", opts
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "verify":
            return "verify_default", {}
    return None, None


def extract(args):
    rows = []
    for fname, src in sorted(_read_test_sources(args).items()):
        tree = ast.parse(src)
        for fn in tree.body:
            if not isinstance(fn, ast.FunctionDef):
                continue
            for dec in fn.decorator_list:
                if not (isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize"):
                    continue
                argnames = [a.strip() for a in ast.literal_eval(dec.args[0]).split(",")]
                if "gold" not in argnames or "pred" not in argnames:
                    continue  # extraction-only tests (no verdict)
                how, opts = _call_options(fn, argnames)
                if how is None:
                    continue
                # The tables are literals, except f-strings over `math` (evaluated here).
                table = eval(compile(ast.Expression(dec.args[1]), fname, "eval"), {"math": math})
                verdict = "expected" if "expected" in argnames else "result"
                for k, values in enumerate(table):
                    p = dict(zip(argnames, values))
                    o = dict(DEFAULT_OPTS)
                    for key, v in (opts or {}).items():
                        o[key] = p[v[1]] if isinstance(v, tuple) else v
                    if how == "verify_default":
                        o = {"default": True}
                    rows.append({
                        "id": f"{fname[:-3]}::{fn.name}[{k}]",
                        "gold": p["gold"],
                        "pred": p["pred"],
                        "expected": int(p[verdict]),
                        "options": o,
                    })
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} cases to {args.out}")


def strip_delims(s):
    t = s.strip()
    for o, c in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
        if len(t) >= len(o) + len(c) and t.startswith(o) and t.endswith(c):
            return t[len(o):-len(c)].strip()
    return t


def is_prose(text):
    """A sentence rather than an answer: a line break, a math delimiter inside, or three or
    more words (runs of two or more letters that are not LaTeX command names)."""
    # One `$` is a currency sign; two or more delimit math.
    if "\n" in text or text.count("$") >= 2 or "\\(" in text or "\\[" in text:
        return True
    return len(re.findall(r"(?<![\\A-Za-z])[A-Za-z]{2,}", text)) >= 3


def sent_prediction(pred):
    """What the prompted model would answer: a bare answer goes in a box; a prediction with a
    box, or prose (a model that did not box), is sent as it is."""
    if "\\boxed" in pred or "\\fbox" in pred:
        return pred
    bare = strip_delims(pred)
    if is_prose(bare):
        return pred
    return "\\boxed{" + bare + "}"


def math_verify_grade(gold, pred, o, timeout):
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    if o.get("default"):
        return int(verify(parse(gold, parsing_timeout=timeout), parse(pred, parsing_timeout=timeout),
                          timeout_seconds=timeout))
    targets = []
    for m in o["match_types"]:
        targets.append(LatexExtractionConfig(boxed_match_priority=0) if m == "latex" else ExprExtractionConfig())
    g = parse(gold, targets, parsing_timeout=timeout)
    p = parse(pred, targets, parsing_timeout=timeout)
    return int(verify(g, p, float_rounding=o["precision"], strict=o["strict"],
                      allow_set_relation_comp=o["allow_set_relation_comp"], timeout_seconds=timeout))


def run_mmr1(binary, cases, preds, repeat):
    """Verdicts of `mmr1-fast reward` on (gold, pred) pairs, and its answers per second over
    `repeat` copies of the input in one process (so start-up is amortized)."""
    with tempfile.TemporaryDirectory() as tmp:
        items = os.path.join(tmp, "items.jsonl")
        resp = os.path.join(tmp, "responses.jsonl")
        out = os.path.join(tmp, "verdicts.jsonl")
        with open(items, "w") as f:
            for i, c in enumerate(cases):
                f.write(json.dumps({"id": str(i), "problem": "?", "answer": c["gold"]}) + "\n")
        with open(resp, "w") as f:
            for _ in range(repeat):
                for i, p in enumerate(preds):
                    f.write(json.dumps({"id": str(i), "response": p}) + "\n")
        t0 = time.perf_counter()
        subprocess.run([binary, "reward", "--data", items, "--responses", resp, "--out", out],
                       check=True, capture_output=True, text=True)
        dt = time.perf_counter() - t0
        verdicts = [json.loads(l) for l in open(out)][: len(cases)]
    return [int(v["accuracy"] >= 1.0) for v in verdicts], [v["extracted"] for v in verdicts], \
        repeat * len(cases) / dt


def run(args):
    cases = [json.loads(l) for l in open(args.cases)]
    if args.filter:
        cases = [c for c in cases if args.filter in c["id"]]
    sent = [sent_prediction(c["pred"]) for c in cases]
    ours, extracted, ours_rate = run_mmr1(args.bin, cases, sent, args.repeat)

    mv_sent, mv_own = [], []
    t0 = time.perf_counter()
    if not args.no_math_verify:
        for c, s in zip(cases, sent):
            mv_sent.append(math_verify_grade(c["gold"], s, c["options"], args.timeout))
        mv_rate = len(cases) / (time.perf_counter() - t0)
        for c in cases:
            mv_own.append(math_verify_grade(c["gold"], c["pred"], c["options"], args.timeout))

    def report(name, got):
        n = len(cases)
        agree = sum(g == c["expected"] for g, c in zip(got, cases))
        fp = [c["id"] for g, c in zip(got, cases) if g == 1 and c["expected"] == 0]
        fn = sum(1 for g, c in zip(got, cases) if g == 0 and c["expected"] == 1)
        print(f"{name:<34} agree {agree}/{n} ({100 * agree / n:.1f}%)  false positives {len(fp)}"
              f"  false negatives {fn}")
        for i in fp:
            print(f"    false positive: {i}")
        return agree

    pos = sum(c["expected"] for c in cases)
    print(f"{len(cases)} cases ({pos} expected correct, {len(cases) - pos} expected wrong)")
    report("mmr1-fast reward (boxed)", ours)
    if mv_sent:
        report("Math-Verify (same boxed inputs)", mv_sent)
        report("Math-Verify (own test inputs)", mv_own)
    load = os.getloadavg()
    print(f"speed: mmr1-fast {ours_rate:.0f} answers/s ({args.bin}, {args.repeat}x input, one process)"
          + (f"; Math-Verify {mv_rate:.1f} answers/s" if mv_sent else "")
          + f"; load average {load[0]:.2f} on {os.cpu_count()} cores")
    if args.cross:
        cross_check(args, cases, sent)
    if args.show_misses:
        for c, s, g, x, m in zip(cases, sent, ours, extracted, mv_sent or [None] * len(cases)):
            if g != c["expected"]:
                print(json.dumps({"id": c["id"], "gold": c["gold"], "sent": s, "extracted": x,
                                  "expected": c["expected"], "mv": m}, ensure_ascii=False))


def cross_check(args, cases, sent):
    """False-positive stress: each prediction graded against the gold of another, random case
    (seeded). Such pairs are wrong unless the two golds happen to agree, so every acceptance
    is printed with Math-Verify's verdict on the same pair for a judgement."""
    import random

    rng = random.Random(1234)
    pairs = []
    while len(pairs) < args.cross:
        i, j = rng.randrange(len(cases)), rng.randrange(len(cases))
        if cases[i]["gold"] != cases[j]["gold"]:
            pairs.append((i, j))
    cross = [dict(cases[i], pred=sent[j]) for i, j in pairs]
    got, _, _ = run_mmr1(args.bin, cross, [c["pred"] for c in cross], 1)
    accepted = [(c, (i, j)) for c, g, (i, j) in zip(cross, got, pairs) if g == 1]
    print(f"cross pairs: {len(cross)} (gold of one case, prediction of another); "
          f"mmr1-fast accepts {len(accepted)}")
    for c, (i, j) in accepted:
        mv = None if args.no_math_verify else math_verify_grade(c["gold"], c["pred"], cases[i]["options"], args.timeout)
        print("    " + json.dumps({"gold": c["gold"][:80], "pred": c["pred"][:80], "gold_of_pred": cases[j]["gold"][:80],
                                   "math_verify": mv}, ensure_ascii=False))


_RUST_LIT = re.compile(r'r(#*)"(.*?)"\1|"((?:[^"\\]|\\.)*)"', re.S)


def _rust_string(m):
    if m.group(2) is not None and m.group(0).startswith("r"):
        return m.group(2)
    body = m.group(3)
    body = re.sub(r"\\u\{([0-9A-Fa-f]+)\}", lambda u: chr(int(u.group(1), 16)), body)
    return re.sub(r"\\(.)", lambda e: {"n": "\n", "t": "\t", "0": "\0"}.get(e.group(1), e.group(1)), body)


def project_cases(path):
    """The project's own (prediction, reference, verdict) cases: `EQUIV` of
    tests/suite/reward_cases.rs (the prediction, an extracted answer, sent boxed) and the `GRADE`
    cases without options (whole responses, sent as they are)."""
    src = open(path).read()
    out = []
    for table, boxed in (("EQUIV", True), ("GRADE", False)):
        body = src[src.index(f"const {table}"):]
        body = body[body.index("= &[") : body.index("\n];")]
        for line in body.splitlines():
            line = line.strip()
            if not line.startswith('("'):
                continue
            lits = [_rust_string(m) for m in _RUST_LIT.finditer(line)]
            if table == "EQUIV":
                name, pred, ref = lits[:3]
                verdict = int(line.rstrip("),").rstrip().endswith("true"))
            else:
                if "Some(&[" in line or "very_long_garbage" in line:
                    continue  # options are the project's extension; garbage is built in Rust
                name, pred, ref = lits[:3]
                verdict = int(re.findall(r"(\d\.\d)", line)[-2] == "1.0")
            out.append({"id": f"{table}::{name}", "gold": ref,
                        "pred": pred, "sent": ("\\boxed{" + pred + "}") if boxed else pred,
                        "expected": verdict, "options": {"default": True}})
    return out


def project(args):
    cases = [c for c in project_cases(args.cases_rs) if c["gold"].strip()]
    # References in `$..$`, as Math-Verify's own tests write them (its default extraction reads
    # LaTeX only between delimiters); both graders get the same strings.
    for c in cases:
        if "$" not in c["gold"] and "\\boxed" not in c["gold"]:
            c["gold"] = "$" + c["gold"] + "$"
    sent = [c["sent"] for c in cases]
    ours, _, rate = run_mmr1(args.bin, cases, sent, args.repeat)
    t0 = time.perf_counter()
    mv = [math_verify_grade(c["gold"], s, c["options"], args.timeout) for c, s in zip(cases, sent)]
    mv_rate = len(cases) / (time.perf_counter() - t0)
    pos = sum(c["expected"] for c in cases)
    print(f"{len(cases)} project cases ({pos} expected correct, {len(cases) - pos} expected wrong)")
    for name, got in (("mmr1-fast reward", ours), ("Math-Verify (default parse/verify)", mv)):
        agree = sum(g == c["expected"] for g, c in zip(got, cases))
        fp = [c for g, c in zip(got, cases) if g == 1 and c["expected"] == 0]
        print(f"{name:<34} agree {agree}/{len(cases)} ({100 * agree / len(cases):.1f}%)  "
              f"false positives {len(fp)}  false negatives {sum(1 for g, c in zip(got, cases) if g == 0 and c['expected'] == 1)}")
        if args.show_misses:
            for g, c in zip(got, cases):
                if g != c["expected"]:
                    print("    " + json.dumps({"id": c["id"], "gold": c["gold"][:60], "sent": c["sent"][:60],
                                               "expected": c["expected"]}, ensure_ascii=False))
    load = os.getloadavg()
    print(f"speed: mmr1-fast {rate:.0f} answers/s ({args.repeat}x input); Math-Verify {mv_rate:.1f} answers/s;"
          f" load average {load[0]:.2f} on {os.cpu_count()} cores")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="write the JSONL of Math-Verify's test triples")
    e.add_argument("--tests", help="a Math-Verify checkout (holding tests/)")
    e.add_argument("--git-dir", help="or a Math-Verify git directory (reads HEAD:tests/)")
    e.add_argument("--out", default=DEFAULT_CASES)
    r = sub.add_parser("run", help="grade the triples with mmr1-fast and Math-Verify")
    r.add_argument("--cases", default=DEFAULT_CASES)
    r.add_argument("--bin", default=os.path.join(ROOT, "target", "debug", "mmr1-fast"))
    r.add_argument("--repeat", type=int, default=20, help="copies of the input for the speed figure")
    r.add_argument("--timeout", type=int, default=5, help="Math-Verify's per-call timeout (s)")
    r.add_argument("--filter", help="only cases whose id contains this")
    r.add_argument("--no-math-verify", action="store_true", help="grade with mmr1-fast only")
    r.add_argument("--cross", type=int, default=0, help="also grade this many mismatched pairs (false-positive stress)")
    r.add_argument("--show-misses", action="store_true", help="print every case mmr1-fast gets wrong")
    q = sub.add_parser("project", help="grade the project's own reward cases with both graders")
    q.add_argument("--cases-rs", default=os.path.join(ROOT, "tests", "suite", "reward_cases.rs"))
    q.add_argument("--bin", default=os.path.join(ROOT, "target", "debug", "mmr1-fast"))
    q.add_argument("--repeat", type=int, default=20)
    q.add_argument("--timeout", type=int, default=5)
    q.add_argument("--show-misses", action="store_true")
    a = ap.parse_args()
    if a.cmd == "extract":
        if not (a.tests or a.git_dir):
            sys.exit("extract: give --tests or --git-dir")
        extract(a)
    elif a.cmd == "project":
        project(a)
    else:
        run(a)


if __name__ == "__main__":
    main()
