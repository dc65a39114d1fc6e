"""`tricode eval` (training/evaluate.py): task construction, metrics, prompts, the sandboxed
HumanEval check and a tiny end-to-end run."""
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from training import evaluate as ev

REPO = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])


def _stdlib(rel):
    return (f"stdlib/{rel}", (STDLIB / rel).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- tasks


def test_fim_tasks_from_a_real_file_are_deterministic_and_reconstruct_it():
    key, text = _stdlib("textwrap.py")
    files = [(key, text), _stdlib("json/decoder.py")]
    a = ev.make_fim_tasks(files, 40, seed=3)
    b = ev.make_fim_tasks(list(reversed(files)), 40, seed=3)   # input order does not matter
    assert a == b and len(a) == 40
    assert ev.make_fim_tasks(files, 40, seed=4) != a
    assert len({t.task_id for t in a}) == 40                  # no line twice
    originals = dict(files)
    for t in a:
        k, line_no = t.task_id.rsplit(":", 1)
        assert t.prefix + t.middle + t.suffix == originals[k]
        line = originals[k].splitlines()[int(line_no) - 1]
        # the removed part is the line's content after its indentation; the newline stays in the suffix
        assert t.middle == line.lstrip(" \t") and t.middle.strip()
        assert t.prefix.endswith(line[:len(line) - len(t.middle)])
        assert t.prefix == "" or t.prefix.rsplit("\n", 1)[-1].strip() == ""
        assert t.suffix == "" or t.suffix.startswith(("\n", "\r\n"))


def test_token_limit_skips_long_lines():
    text = "x = 1\n" + "y = " + " + ".join(["a"] * 100) + "\n"
    tasks = ev.make_fim_tasks([("k", text)], 5, count_tokens=len, max_line_tokens=20)
    assert [t.middle for t in tasks] == ["x = 1"]


def test_copy_previous_line_baseline_on_a_hand_made_file():
    text = ("def f(a):\n"
            "    a += 1\n"
            "    a += 1\n"
            "\n"
            "    return a\n")
    tasks = [ev.line_task("k", text, i) for i in (0, 1, 2, 4)]
    assert [t.previous_line for t in tasks] == ["", "def f(a):", "a += 1", "a += 1"]
    assert [t.middle for t in tasks] == ["def f(a):", "a += 1", "a += 1", "return a"]
    base = ev.copy_previous_line_baseline(tasks)
    assert base["exact_match"] == 0.25                       # only the repeated line is right
    expect = (0.0 + ev.edit_similarity("def f(a):", "a += 1") + 1.0
              + ev.edit_similarity("a += 1", "return a")) / 4
    assert base["edit_similarity"] == pytest.approx(expect)
    with pytest.raises(ValueError):
        ev.line_task("k", text, 3)                           # blank


def test_levenshtein_and_edit_similarity():
    assert ev.levenshtein("kitten", "sitting") == 3
    assert ev.levenshtein("", "abc") == 3 and ev.levenshtein("abc", "") == 3
    assert ev.levenshtein("flaw", "lawn") == 2
    assert ev.edit_similarity("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert ev.edit_similarity("", "") == 1.0
    assert ev.edit_similarity("abc", "") == 0.0
    assert ev.edit_similarity("return x  ", "return x") == 1.0  # trailing whitespace ignored
    assert ev.exact_match("return x \r", "return x") and not ev.exact_match(" return x", "return x")


def test_newline_stop_and_cut():
    pieces = {1: "foo", 2: "(x", 3: "):\n    ", 4: "bar"}
    decode = lambda ids: "".join(pieces[i] for i in ids)  # noqa: E731
    stop = ev.newline_stop(decode)
    assert stop([1, 2]) is None
    assert stop([1, 2, 3, 4]) == 3          # keep the token that holds the newline, drop the rest
    assert ev.cut_at_newline(decode([1, 2, 3])) == "foo(x):"
    assert ev.cut_at_newline("no newline") == "no newline"


def test_humaneval_mapping_and_prompt_clipping(tiny_ckpt):
    from textkit.tokenizer import Tokenizer
    from training.humaneval import load_tasks
    tasks = load_tasks()
    assert len(tasks) == 1033
    for t in tasks[:40]:
        f = ev.humaneval_fim_task(t)
        assert f.prefix + f.middle + f.suffix == t.prefix + t.middle + t.suffix
        assert ev.humaneval_completion(t, f.middle) == t.middle
        assert t.program(ev.humaneval_completion(t, f.middle)) == t.program(t.middle)
    tok = Tokenizer(tiny_ckpt)
    key, text = _stdlib("textwrap.py")
    task = ev.make_fim_tasks([(key, text)], 1, seed=0)[0]
    ids = ev.fim_prompt(tok, task.prefix, task.suffix, 256)
    assert len(ids) <= 256
    assert ids[:2] == [tok.bos_id, tok.fim["suffix"]] and ids[-1] == tok.fim["middle"]
    s_end = ids.index(tok.fim["prefix"])
    suffix, prefix = tok.decode(ids[2:s_end]), tok.decode(ids[s_end + 1:-1])
    assert task.prefix.endswith(prefix) and task.suffix.startswith(suffix)
    # clipped at line boundaries: the prefix starts a line, the suffix ends one
    assert prefix and task.prefix[:len(task.prefix) - len(prefix)].endswith("\n")
    assert suffix.endswith("\n")
    count = lambda s: len(tok.encode(s))  # noqa: E731
    assert count(suffix) >= (256 - 4) // 4 - 40 and count(prefix) > count(suffix)
    short = ev.fim_prompt(tok, "def f():\n    ", "\n", 256)
    assert short == ([tok.bos_id, tok.fim["suffix"]] + tok.encode("\n") + [tok.fim["prefix"]]
                     + tok.encode("def f():\n    ") + [tok.fim["middle"]])


# ----------------------------------------------------------------------------- sandbox


def test_humaneval_checks_run_sandboxed(tmp_path, monkeypatch):
    import training.humaneval as he
    tasks = he.load_tasks()
    t = next(t for t in tasks if t.problem_id == "HumanEval/0")
    calls = []
    real = he.run_python
    monkeypatch.setattr(he, "run_python", lambda prog, **kw: calls.append(prog) or real(prog, **kw))
    monkeypatch.chdir(tmp_path)
    right = ev.humaneval_fim_task(t).middle
    evil = "open('pwned.txt', 'w').write('x'); " + right
    res = ev.check_humaneval([t, t], [right, evil], timeout=10)
    assert res[0] is True
    assert len(calls) == 2 and "pwned.txt" in calls[1]      # every program went to the sandbox
    assert not (tmp_path / "pwned.txt").exists()             # ran elsewhere (a temporary folder)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- end to end


def test_eval_command_end_to_end(tiny_ckpt, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for f in tiny_ckpt.iterdir():
        if f.is_file():
            (model / f.name).write_bytes(f.read_bytes())
    (model / "heldout_files.txt").write_text("stdlib/textwrap.py\nstdlib/json/decoder.py\n")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "tricode", "eval", "--model", str(model), "--fim-tasks", "3",
                        "--humaneval-limit", "2", "--loss-rows", "2", "--data-dir", str(tmp_path / "nodata"),
                        "--threads", "1", "--records", str(tmp_path / "records.jsonl"),
                        "--json"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["threads"] == 1
    # --records: one line per completion as it is made, then the tests' verdicts: the same figures
    recs = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert recs[0]["section"] == "start" and recs[0]["threads"] == 1 and recs[-1]["section"] == "end"
    for mode in ("ar", "spec", "spec-quad", "diffusion"):
        fim = [x for x in recs if x["section"] == "fim" and x["mode"] == mode]
        assert len(fim) == 3
        assert sum(x["exact"] for x in fim) / 3 == rep["fim"]["modes"][mode]["exact_match"]
        assert abs(sum(x["edit_sim"] for x in fim) / 3 - rep["fim"]["modes"][mode]["edit_similarity"]) < 1e-9
        tests = [x for x in recs if x["section"] == "humaneval-tests" and x["mode"] == mode]
        assert len(tests) == 2 and sum(x["passed"] for x in tests) == rep["humaneval"]["modes"][mode]["passed"]
    assert rep["spec_vs_ar_mismatches"] == 0
    L = rep["losses"]
    assert L["ar_loss"] > 0 and L["masked_loss"] > 0 and "rebuilt" in L["source"]
    F, H = rep["fim"], rep["humaneval"]
    assert F["tasks"] == 3 and F["spec_vs_ar_mismatches"] == 0
    assert set(F["baseline_copy_previous_line"]) == {"exact_match", "edit_similarity"}
    assert {"diffusion_exact_match_cost", "diffusion_vs_ar_agreement"} <= set(F)
    assert H["tasks"] == 2 and H["of"] == 1033 and H["spec_vs_ar_mismatches"] == 0
    from engine.lookup import LOOKUP_TOKENS
    for sec in (F, H):
        assert sec["spec_quad_vs_ar_mismatches"] == 0
        assert list(sec["modes"]) == ["ar", "spec", "spec-quad", "diffusion"]
        for mode, s in sec["modes"].items():
            for k in ("exact_match", "edit_similarity", "tokens_per_forward", "ms_median", "ms_p95"):
                assert isinstance(s[k], float), (mode, k)
            assert 0 < s["tokens_per_forward"] <= max(rep["block_size"], LOOKUP_TOKENS + 1)
        assert "mean_accept_length" in sec["modes"]["spec"] and "lookup_share" in sec["modes"]["spec-quad"]
        assert "mean_denoise_steps" in sec["modes"]["diffusion"]
    assert all(0.0 <= H["modes"][m]["pass_at_1"] <= 1.0 for m in H["modes"])
    assert list(tmp_path.glob("*.txt")) == []               # nothing generated ran in the cwd
    md = ev.format_model_card_section(rep)
    assert md.startswith("## Evaluation") and "| `spec` |" in md and "copy the previous line" in md
    assert "HumanEval" in ev.format_table(rep)
