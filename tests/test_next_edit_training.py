"""The next-edit objective of the embedded model's training recipe (training/next_edit.py, mixed into the
FIM stream by training/fim.py): samples from real corpus files are well-formed (each history diff
applies to the text before it, the target differs from the region exactly by the next site's change,
no-edit targets equal the region), rendered in exactly the daemon's prompt, tokenized to fit a row; none
comes from an evaluated package; and the GPU stage (scripts/gpu_next_edit.sh) fine-tunes the shipped
checkpoint on the CPU at toy size and writes a checkpoint that loads."""
from __future__ import annotations

import importlib.util
import json
import os
import random
import re
from collections import Counter
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

from daemon import next_edit_prompt as nep
from textkit.edits import diff_sides, region_lines, smallest_edit
from training import next_edit as ne

ROOT = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
# real files that hold each kind: super() in classes, strings, print(...), except ... as ..., defs, calls
FILES = ["argparse.py", "configparser.py", "pydoc.py", "smtplib.py", "tarfile.py", "json/decoder.py",
         "logging/__init__.py", "ftplib.py", "shlex.py", "textwrap.py", "difflib.py", "cmd.py"]


def _corpus() -> list[tuple[str, str]]:
    out = []
    for f in FILES:
        p = STDLIB / f
        if p.is_file():
            out.append((f"stdlib/{f}", p.read_text(encoding="utf-8")))
    assert len(out) >= 8, "the stdlib files this test reads are missing"
    return out


def _apply_diff(text: str, diff: str, reverse: bool = False) -> str:
    """Apply a one-hunk diff (as lsp/edit_history.py writes it) at its line numbers; fails if its side
    is not there. `reverse`: take it back."""
    m = re.search(r"^@@ -(\d+),(\d+) \+(\d+),(\d+) @@$", diff, re.M)
    assert m, diff
    _, old, new = diff_sides(diff)
    if reverse:
        old, new = new, old
    start = int(m.group(3 if reverse else 1))
    n = int(m.group(4 if reverse else 2))
    lines = text.splitlines(keepends=True)
    first = start - 1 if n else start
    assert "".join(lines[first:first + n]) == old, f"the diff does not apply:\n{diff}"
    return "".join(lines[:first]) + new + "".join(lines[first + n:])


@pytest.fixture(scope="module")
def samples() -> list[ne.NextEditSample]:
    out = []
    for key, text in _corpus():
        out += ne.file_samples(key, text, 12, random.Random(key))
    return out


def test_every_kind_and_no_edit_places_are_made(samples):
    kinds = {s.kind for s in samples}
    assert set(ne.KINDS) <= kinds, kinds
    assert any(k.startswith("none:") for k in kinds)


def test_samples_are_well_formed(samples):
    for s in samples:
        # the history applies: taken back newest first from the request's text, then made again in order
        text = s.text
        for d in reversed(s.history):
            text = _apply_diff(text, d, reverse=True)
        assert text != s.text
        for d in s.history:
            text = _apply_diff(text, d)
        assert text == s.text
        assert (s.region_start, s.region_end) == region_lines(s.text, s.cursor)
        line_start = s.text.rfind("\n", 0, s.cursor) + 1
        assert s.text[line_start:s.cursor].strip() == "" and s.text[s.cursor] not in " \t\n"  # first non-blank
        if s.kind.startswith("none:"):
            assert s.target == s.region
            continue
        # the target differs from the region on one line only: the cursor's, by the edit of its kind
        a, b, t = smallest_edit(s.region, s.target)
        assert s.target != s.region
        assert a >= line_start - s.region_start and "\n" not in s.region[a:b] + t, (s.kind, s.region, s.target)
        cur_line = s.text[line_start:s.text.index("\n", s.cursor)]
        new_line = s.target.split("\n")[s.text.count("\n", s.region_start, s.cursor)]
        assert s.target == s.region[:line_start - s.region_start] + new_line + s.region[len(cur_line) + line_start - s.region_start:]
        assert new_line == _expected(s.kind, cur_line, new_line), (s.kind, cur_line, new_line)


def _expected(kind: str, cur: str, new: str) -> str:
    """What the line must become, computed independently of training/next_edit.py for each kind (for a
    rename and an added argument, whose new names the sample chooses: the names read from `new`)."""
    if kind == "super":
        return re.sub(r"super\(\w+, \w+\)", "super()", cur)
    if kind == "u_prefix":
        return re.sub(r"(?<![\w'\"])u(['\"])", r"\1", cur)
    if kind == "except":
        return re.sub(r"^(\s*except\s+)(.+), (\w+):", r"\1\2 as \3:", cur)
    if kind == "print":
        m = re.match(r"^(\s*)print (.*?)(\s*(?:#.*)?)$", cur)
        return f"{m.group(1)}print({m.group(2)}){m.group(3)}"
    if kind == "add_arg":
        kws = re.findall(r"(\w+)=\1\)", new)
        return _add(cur, new, kws[-1]) if kws else "<no kw=kw) in the new line>"
    if kind == "rename":
        gone = set(Counter(re.findall(r"\w+", cur)) - Counter(re.findall(r"\w+", new)))
        came = set(Counter(re.findall(r"\w+", new)) - Counter(re.findall(r"\w+", cur)))
        assert len(gone) == 1 and len(came) == 1, (cur, new)
        return re.sub(rf"(?<![\w.]){gone.pop()}(?!\w)", came.pop(), cur)
    raise AssertionError(kind)


def _add(cur: str, new: str, kw: str) -> str:
    # the line with `kw=kw` (after ", " when the call had arguments) inserted before one closing paren
    for i, ch in enumerate(cur):
        if ch == ")":
            for sep in (", ", ""):
                cand = cur[:i] + f"{sep}{kw}={kw}" + cur[i:]
                if cand == new:
                    return cand
    return "<no closing paren gives it>"


def test_the_history_edits_are_the_same_change(samples):
    """The history's edits and the target's change are one pattern: the pattern tool (which the prompt's
    `suggested:` block is made with) makes the target from the history for most edit samples."""
    from textkit.edits import draft
    due = [s for s in samples if not s.kind.startswith("none:") and s.kind != "rename"]
    hit = sum(draft(s.region, s.history, first_line_only=True,
                    cursor_line=s.text.count("\n", s.region_start, s.cursor)) == s.target for s in due)
    assert due and hit / len(due) > 0.5, (hit, len(due))


def test_the_prompt_is_the_daemons(samples):
    """The prompt is what daemon/next_edit_run.py gives the model for the same request."""
    import protocol
    from daemon import next_edit_run
    s = samples[0]
    msg = protocol.NextEdit(id=1, doc=s.path, path=s.path, text=s.text, cursor=s.cursor, region_start=s.region_start,
                            region_end=s.region_end, history=tuple(s.history))

    class Tok:          # the daemon's call is tok.encode(prompt text): capture the text
        bos_id = 0

        def encode(self, text):
            self.text = text
            return [1]
    tok = Tok()
    next_edit_run._prompt_ids(tok, msg, "")
    assert tok.text == s.prompt == nep.model_prompt(path=s.path, text=s.text, cursor=s.cursor,
                                                  region_start=s.region_start, region_end=s.region_end,
                                                  history=s.history).text
    assert s.prompt.endswith("updated:\n") and next_edit_run.FORMAT == nep.MODEL_FORMAT


def test_no_sample_from_an_evaluated_package():
    spec = importlib.util.spec_from_file_location("next_edit_eval", ROOT / "scripts" / "next_edit_eval.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert {name for name, _, _ in mod.RELEASES} == set(ne.EVAL_PACKAGES)
    text = (STDLIB / "argparse.py").read_text()
    assert ne.file_samples("stdlib/argparse.py", text, 4, random.Random(0))
    for key in ("site/jinja2/compiler.py", "site/click/core.py", "site/pip/_vendor/idna/core.py",
                "site/markupsafe/__init__.py", "site/jsonschema/validators.py"):
        assert ne.is_eval_file(key) and ne.file_samples(key, text, 4, random.Random(0)) == []


def test_mixed_into_the_fim_stream_and_fit_a_row():
    from tokenizers import Tokenizer
    from training import fim
    from training.tokenizer import EOS_ID, encode
    tok = Tokenizer.from_file(str(ROOT / "engine" / "embedded" / "tokenizer.json"))
    files = _corpus()
    seq = 1024
    plain = fim.build_samples(files, tok, seq, seed=3)
    st = fim.PackStats()
    mixed = fim.build_samples(files, tok, seq, seed=3, next_edit_share=0.3, stats=st)
    # the FIM and plain samples are the same with the share on; the next-edit ones come on top
    assert [x.tolist() for x, _ in mixed[:len(plain)]] != [] and st.next_edit > 0
    base = [x.tolist() for x, _ in plain]
    extra = [x.tolist() for x, _ in mixed]
    assert all(b in extra for b in base)
    assert 0.15 < st.next_edit / len(mixed) < 0.35, (st.next_edit, len(mixed))
    assert st.next_edit_none > 0 and st.next_edit_too_long < st.next_edit / 4, vars(st)
    assert all(len(x) <= seq - 1 for x, _ in mixed)
    # a next-edit sample is enc(prompt) enc(target) EOS, each tokenized on its own as the daemon does, the
    # prompt ending with the format's `updated:` line
    from training.tokenizer import decode
    added = [x for x in extra if x not in base]
    assert len(added) == st.next_edit
    for ids in added:
        text = decode(tok, ids[:-1])
        prompt, target = text.rsplit("updated:\n", 1)
        prompt += "updated:\n"
        assert prompt.startswith("<|file_sep|>") and "original:\n" in prompt, prompt[:200]
        assert encode(tok, prompt) + encode(tok, target) + [EOS_ID] == ids
        assert target.count("\n") == prompt.rsplit("original:\n", 1)[1].split("suggested:\n")[0].count("\n")
    rows = fim.pack_samples(mixed, seq, seed=3)
    assert rows.shape[1] == seq and rows[:, 0].tolist() == [EOS_ID] * len(rows)
    with pytest.raises(ValueError, match="next_edit_share"):
        fim.build_samples(files, tok, seq, next_edit_share=1.0)


@pytest.mark.slow
def test_the_gpu_stage_fine_tunes_on_the_cpu(tmp_path):
    """scripts/gpu_next_edit.sh --cpu-smoke: data from a few real files (next-edit share 0.3), two
    fine-tune steps of the shipped checkpoint, the checkpoint written to --out and loadable."""
    roots = tmp_path / "corpus"
    for f in FILES:
        if (STDLIB / f).is_file():
            (roots / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(STDLIB / f, roots / f)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_next_edit.sh"), "--cpu-smoke", "--out", str(out),
                        "--roots", str(roots), "--total-s", "400"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    back = sorted(p.name for p in (out / "next_edit").iterdir())   # what comes back: shards + meta
    assert back == ["meta.tar.gz"] + [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)], back
    assert all(p.stat().st_size <= 16 * 2**20 for p in (out / "next_edit").iterdir())
    model = tmp_path / "model"
    model.mkdir()
    with tarfile.open(out / "next_edit" / "meta.tar.gz") as tar:
        tar.extractall(model)
    for p in (out / "next_edit").glob("model-*.safetensors"):
        shutil.copy(p, model / p.name)
    info = json.loads((model / "training.json").read_text())
    assert info["steps"] == 2 and info["train_config"]["init"].endswith("engine/embedded"), info
    rep = json.loads((model / "next_edit_data_report.json").read_text())
    assert rep["next_edit_share"] == 0.3 and rep["train"]["next_edit"] > 0, rep
    from engine.checkpoint import load_checkpoint
    ck = load_checkpoint(model, device="cpu", dtype="float32")
    assert ck.model.cfg.hidden_size == 384 and not ck.model.has_lora
    assert (out / "session.tar.gz").is_file()


@pytest.mark.slow
def test_the_second_gpu_script_runs_the_stage_instead_of_training(tmp_path):
    """scripts/gpu_session2.sh --next-edit-s: the stage runs (CPU smoke, the whole corpus's 40 files),
    cumulative training does not, and what comes back fits the lease's 8 files of <= 16 MiB."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, TMPDIR=str(tmp_path))
    env.pop("GPU_CHECK_FAIL", None)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session2.sh"), "--cpu-smoke", "--out", str(out),
                        "--check-s", "0", "--next-edit-s", "380", "--data", str(tmp_path / "no_pack"),
                        "--carry-in", str(tmp_path / "none")], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-4000:]
    assert "(e) next-edit fine-tune" in log and "(c) training until" not in log, log[-3000:]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert sorted(p.name for p in (out / "ne" / "next_edit").iterdir()) == \
        ["meta.tar.gz"] + [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files), files
    assert not (out / "carry").exists()


def test_an_argument_is_added_to_the_files_own_function_not_a_builtin():
    text = "".join(f"a{i} = len(f(x{i}))\nb{i} = len(y{i})\n" for i in range(3))
    for seed in range(5):
        (pair,) = [p for p in ne.edit_pairs(text, random.Random(seed)) if p.kind == "add_arg"]
        for i in pair.sites:
            kw = re.search(r"(\w+)=\1", pair.after[i]).group(1)
            assert pair.after[i] == pair.before[i].replace(")", f", {kw}={kw})", 1), pair.after[i]
