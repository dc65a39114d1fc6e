"""training/refactor_checks.py: the checker on hand-written refactors (right ones pass; a broken
behaviour or a missing change fails), and one short run through a real daemon on the embedded model."""
from __future__ import annotations

import pytest

from training.refactor_checks import TASKS, check, request, apply, run_checks

T = {t.name: t for t in TASKS}

RIGHT = {
    "docstring_average": 'def average(numbers):\n    """The mean of numbers; 0.0 when empty."""\n'
                         '    if not numbers:\n        return 0.0\n    return sum(numbers) / len(numbers)\n',
    "hints_scale": "def scale(values: list[float], factor: float) -> list[float]:\n    return [v * factor for v in values]\n",
    "rename_total": "def order_total(prices, qty):\n    total = 0\n    for p, q in zip(prices, qty):\n"
                    "        total += p * q\n    return total\n",
    "comp_squares": "def even_squares(n):\n    return [i * i for i in range(n) if i % 2 == 0]\n",
    "constant_tax": "TAX_RATE = 0.2\n\n\ndef price_with_tax(net):\n    return round(net * (1 + TAX_RATE), 2)\n",
    "fstring_greeting": "def greeting(name, count):\n    return f'Hello {name}, you have {count} new messages'\n",
    "validate_sqrt": "def int_sqrt(n):\n    if n < 0:\n        raise ValueError('n must be >= 0')\n    r = 0\n"
                     "    while (r + 1) * (r + 1) <= n:\n        r += 1\n    return r\n",
    "simplify_adult": "def is_adult(age):\n    return age >= 18\n",
    "enumerate_find": "def first_negative(values):\n    for i, v in enumerate(values):\n        if v < 0:\n"
                      "            return i\n    return -1\n",
}

BROKEN = {      # the change is made, the behaviour is not kept
    "hints_scale": "def scale(values: list[float], factor: float) -> list[float]:\n    return [v + factor for v in values]\n",
    "comp_squares": "def even_squares(n):\n    return [i * i for i in range(n)]\n",
    "simplify_adult": "def is_adult(age):\n    return age > 18\n",
    "validate_sqrt": "def int_sqrt(n):\n    if n <= 0:\n        raise ValueError('n must be > 0')\n    r = 0\n"
                     "    while (r + 1) * (r + 1) <= n:\n        r += 1\n    return r\n",
}

ABSENT = {      # the behaviour is kept, the change is not (or only half) made
    "rename_total": "def order_total(prices, qty):\n    total = 0\n    for p, q in zip(prices, qty):\n"
                    "        t = p * q\n        total += t\n    return total\n",
    "hints_scale": "def scale(values: list[float], factor):\n    return [v * factor for v in values]\n",
    "constant_tax": "TAX_RATE = 0.2\n\n\ndef price_with_tax(net):\n    return round(net * (1 + 0.2), 2)\n",
    "fstring_greeting": "def greeting(name, count):\n    return 'Hello {}, you have {} new messages'.format(name, count)\n",
    "enumerate_find": "def first_negative(values):\n    for i, v in enumerate(values):\n        if values[i] < 0:\n"
                      "            return i\n    for i in range(len(values)):\n        pass\n    return -1\n",
}


def test_twelve_tasks_of_several_kinds():
    assert len(TASKS) == 12 and len({t.name for t in TASKS}) == 12
    assert len({t.kind for t in TASKS}) >= 8


@pytest.mark.parametrize("name", sorted(RIGHT))
def test_right_refactor_passes(name):
    r = check(T[name], RIGHT[name])
    assert r["success"], r


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_behaviour_fails(name):
    r = check(T[name], BROKEN[name])
    assert not r["success"] and not r["behaviour"], r


@pytest.mark.parametrize("name", sorted(ABSENT))
def test_absent_change_fails(name):
    r = check(T[name], ABSENT[name])
    assert not r["success"] and r["behaviour"] and not r["change"], r


def test_unchanged_source_never_succeeds():
    for t in TASKS:
        assert not check(t, t.source)["success"], t.name


def test_unusable_or_unparsable_answer_fails():
    t = T["simplify_adult"]
    assert check(t, None)["detail"] == "answer not usable"
    assert "syntax error" in check(t, "def is_adult(age):\n    return age >=\n")["detail"]


def test_answer_goes_through_the_editors_finish():
    # the type-hints job replaces the parameter list up to the ':'; its finish rejects changed names
    t = T["hints_scale"]
    job, msg = request(t)
    assert msg.type == "generate" and msg.mode == "ar" and msg.temperature == 0.0
    new = apply(t, job, "values: list[int], factor: int) -> list[int]\n")
    assert check(t, new)["success"], new
    assert apply(t, job, "xs: list[int], k: int) -> list[int]\n") is None


@pytest.mark.slow
def test_embedded_model_end_to_end(tmp_path):
    out = tmp_path / "r.jsonl"
    s = run_checks("embedded", [T["docstring_clamp"], T["simplify_adult"]], out, threads=1, log=lambda m: None)
    assert s["total"] == 2 and len(out.read_text().splitlines()) == 2
    for r in s["records"]:
        assert r["model"] == "embedded" and isinstance(r["success"], bool)
        assert r["generated"] is not None, r          # the daemon answered the refactor


def test_docstring_with_wrong_examples_or_invented_parameters_fails():
    t = T["docstring_clamp"]
    good = ('def clamp(value, low, high):\n    """Limit value to low..high.\n\n    Args:\n        value: the number.\n'
            '        low (int): the least.\n        high: the most.\n\n    >>> clamp(9, 0, 3)\n    3\n    """\n'
            '    return max(low, min(value, high))\n')
    assert check(t, good)["success"], check(t, good)
    wrong_example = good.replace("    3\n    \"\"\"", "    9\n    \"\"\"")
    r = check(t, wrong_example)
    assert not r["success"] and not r["behaviour"] and "examples" in r["detail"], r
    invented = ('def clamp(value, low, high):\n    """Clamp.\n\n    Parameters\n    ==========\n\n    n : Number\n'
                '        The number.\n    """\n    return max(low, min(value, high))\n')
    r = check(t, invented)
    assert not r["success"] and r["behaviour"] and "n" in r["detail"], r


def test_scaffold_or_commented_original_left_in_the_file_fails():
    # what the rewrite path on an instruct model gave: right code under the echoed prompt scaffold
    t = T["validate_sqrt"]
    echoed = ("# def int_sqrt(n):\n#     r = 0\n# Rewritten version (raise ValueError if n is negative):\n" + RIGHT["validate_sqrt"])
    r = check(t, echoed)
    assert not r["success"] and r["behaviour"] and not r["change"] and "scaffold" in r["detail"], r
    commented = "# def int_sqrt(n):\n#     r = 0\n" + RIGHT["validate_sqrt"]
    r = check(t, commented)
    assert not r["success"] and "commented out" in r["detail"], r


@pytest.mark.slow
def test_tricode_eval_refactor_checks_cli(tmp_path):
    import subprocess, sys
    from pathlib import Path
    repo = Path(__file__).resolve().parent.parent
    # an unknown model: a clear error, no daemon started
    bad = subprocess.run([sys.executable, "-m", "tricode", "eval", "--refactor-checks", "--model", "no-such-model"],
                         cwd=repo, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no-such-model" in bad.stderr, bad.stderr
