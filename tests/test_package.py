"""Tests of the package as a whole: light import, the command line, README and CI agreeing."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# TensorFlow's C++ start-up messages, printed on import whatever TF_CPP_MIN_LOG_LEVEL says.
def run_python(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # what a user sees
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout
    )


def test_import_does_not_load_heavy_optional_modules():
    # Keras 3 itself imports matplotlib and huggingface_hub when they are installed,
    # so the check is that vitkeras adds none of the heavy modules to what keras loads.
    code = (
        "import sys, keras\n"
        "before = set(sys.modules)\n"
        "import vitkeras\n"
        "added = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "heavy = ('matplotlib', 'tensorflow_datasets', 'huggingface_hub', 'transformers', 'safetensors')\n"
        "print('ADDED', sorted(added & set(heavy)))\n"
        "print('TFDS', 'tensorflow_datasets' in sys.modules)\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert "ADDED []" in result.stdout
    assert "TFDS False" in result.stdout


def test_layers_and_models_do_not_import_tensorflow_or_plotting():
    for module in ("layers.py", "models.py"):
        source = (ROOT / "vitkeras" / module).read_text()
        assert not re.search(r"^\s*(import|from)\s+(tensorflow|matplotlib|tensorflow_datasets)\b", source, re.M)
        assert "tf.keras" not in source and "keras.src" not in source


def test_cli_presets_prints_counts_next_to_the_paper():
    result = run_python("-m", "vitkeras", "presets", "--only", "B/16", "Ti/16")
    assert result.returncode == 0, result.stderr
    assert re.search(r"B/16 .* 86,567,656 +86M", result.stdout)
    assert re.search(r"Ti/16 .* 5,717,416 +-", result.stdout)


def test_cli_bad_arguments_give_one_line_and_exit_code_2():
    result = run_python("-m", "vitkeras", "presets", "--only", "Q/7")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()  # TensorFlow's start-up lines are filtered (vitkeras.quiet)
    assert len(lines) == 1 and "Unknown ViT preset 'Q/7'" in lines[0], result.stderr
    result = run_python("-m", "vitkeras", "presets", "--image-size", "-3")
    assert result.returncode == 2 and "expected a positive integer, got -3" in result.stderr


def readme_quick_start():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md needs a '## Quick start' section with a bash block"
    commands = [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]
    return commands


def test_readme_quick_start_is_two_commands_and_ci_runs_the_test_one_verbatim():
    commands = readme_quick_start()
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert "python -m vitkeras" in main_job
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


@pytest.mark.parametrize("path", ["requirements.txt", "pyproject.toml"])
def test_pinned_keras_is_keras_3(path):
    text = (ROOT / path).read_text()
    assert re.search(r"keras(==|>=)3", text)
    assert "tensorflow-addons" not in text and "tf-keras" not in text


def test_colab_badges_use_the_one_repository_constant():
    import vitkeras

    text = (ROOT / "README.md").read_text()
    links = re.findall(r"https://colab\.research\.google\.com/github/[^)\s]+", text)
    assert links, "README needs Open in Colab badges"
    for link in links:
        name = link.rsplit("/", 1)[1]
        assert link == vitkeras.colab_url(f"notebooks/{name}"), link
