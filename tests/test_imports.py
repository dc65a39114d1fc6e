"""The import graph the layout promises (docs/architecture.md): the entry point (`tricode/`) is imported
by nothing; the torch-free packages (`protocol/`, `textkit/`, the daemon's prompt module) stay
torch-free; `lsp/` does not import the daemon."""
import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUBSYSTEMS = ("daemon", "lsp", "engine", "training", "bench", "protocol", "textkit", "triton_kernels")


def _imports(path: Path) -> set[str]:
    mods = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            mods.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
    return mods


def test_nothing_imports_the_entry_point():
    offenders = [str(p.relative_to(REPO)) for pkg in SUBSYSTEMS for p in sorted((REPO / pkg).rglob("*.py"))
                 if "tricode" in _imports(p)]
    assert offenders == []


def test_lsp_and_protocol_import_neither_torch_nor_the_daemon():
    code = ("import sys; import lsp.server, lsp.command, protocol, protocol.client, textkit.tokenizer, "
            "textkit.loops, textkit.gitignore; "
            "print(sorted(m for m in ('torch', 'daemon', 'engine', 'tricode') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_dash_m_tricode_is_the_command():
    out = subprocess.run([sys.executable, "-m", "tricode", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "daemon" in out.stdout and "lsp" in out.stdout


def test_the_prompt_module_that_training_shares_imports_no_torch():
    code = ("import sys; import daemon.prompt, daemon.finish, daemon.workspace, daemon.next_edit_prompt; "
            "print(sorted(m for m in ('torch', 'engine', 'training', 'tricode') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_next_edit_samples_of_training_import_no_torch():
    code = ("import sys; import training.next_edit; "
            "print(sorted(m for m in ('torch', 'engine', 'tricode') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
